#!/usr/bin/env python3
"""One-shot job of CI's stack (minio-init on the S3 stand-in): create the MLflow and DVC buckets.

The same contract as docker/minio/create-buckets.sh: DKDM_BUCKETS (space-separated), MINIO_URL,
MINIO_ROOT_USER and MINIO_ROOT_PASSWORD_FILE. Safe to rerun.
"""

from __future__ import annotations

import os
import sys

import boto3


def main() -> int:
    password_file = os.environ.get("MINIO_ROOT_PASSWORD_FILE", "")
    if not os.access(password_file, os.R_OK):
        print("create-buckets: MINIO_ROOT_PASSWORD_FILE is not a readable file", file=sys.stderr)
        return 2
    with open(password_file) as f:
        secret = f.read().strip()
    s3 = boto3.client(
        "s3", endpoint_url=os.environ.get("MINIO_URL", "http://minio:9000"), region_name="us-east-1",
        aws_access_key_id=os.environ.get("MINIO_ROOT_USER", "dkdm"), aws_secret_access_key=secret,
    )
    existing = {bucket["Name"] for bucket in s3.list_buckets().get("Buckets", [])}
    for bucket in os.environ.get("DKDM_BUCKETS", "mlflow dvc").split():
        if bucket not in existing:
            s3.create_bucket(Bucket=bucket)
        print(f"create-buckets: {bucket} ready")
    return 0


if __name__ == "__main__":
    sys.exit(main())
