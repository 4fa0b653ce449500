#!/bin/sh
# One-shot start-up job of the stack (service minio-init, image minio/mc): create the buckets for
# MLflow artifacts and the DVC remote if they are missing. Safe to rerun.
set -eu

[ -r "${MINIO_ROOT_PASSWORD_FILE:-}" ] || { echo "create-buckets: MINIO_ROOT_PASSWORD_FILE is not a readable file" >&2; exit 2; }
password=$(cat "$MINIO_ROOT_PASSWORD_FILE")
mc alias set dkdm "${MINIO_URL:-http://minio:9000}" "$MINIO_ROOT_USER" "$password" >/dev/null
for bucket in ${DKDM_BUCKETS:-mlflow dvc}; do
    mc mb --ignore-existing "dkdm/$bucket"
done
