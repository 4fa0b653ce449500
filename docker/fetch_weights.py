"""Fetch a torch-hub style weights file at image build time and check it.

Evaluation in the container must work offline, so the FID Inception weights are baked into the
image. The file name carries the first hex digits of the file's sha256 (torch hub's
`<name>-<sha256 prefix>.<ext>` convention, which torch-fidelity's file follows); the download is
accepted only if its digest starts with them, exactly the check torch hub itself would make.

Usage: python fetch_weights.py URL DEST_DIR
Exit 0 with DEST_DIR/<file name> in place, or 1 with one line on stderr and nothing written.
An empty URL (a build with no route to GitHub, like CI's) creates DEST_DIR empty and says so:
evaluation in Inception space then needs the file mounted at $DKDM_INCEPTION_WEIGHTS.
"""

from __future__ import annotations

import hashlib
import os
import re
import sys
import tempfile
import urllib.parse
import urllib.request
from pathlib import Path

_HASH_PREFIX = re.compile(r"-([0-9a-f]{8,64})\.[A-Za-z0-9]+$")
_CHUNK = 1 << 20


class FetchError(Exception):
    """A download that must not end up in the image."""


def expected_prefix(file_name: str) -> str:
    match = _HASH_PREFIX.search(file_name)
    if match is None:
        raise FetchError(f"file name {file_name!r} carries no sha256 prefix (<name>-<hex>.<ext>)")
    return match.group(1)


def fetch(url: str, dest_dir: Path, *, timeout_s: float = 60.0) -> Path:
    file_name = Path(urllib.parse.urlparse(url).path).name
    prefix = expected_prefix(file_name)
    dest_dir.mkdir(parents=True, exist_ok=True)
    target = dest_dir / file_name
    digest = hashlib.sha256()
    # Temp file in the destination directory so the final rename is atomic on the same filesystem.
    fd, tmp_name = tempfile.mkstemp(dir=dest_dir, prefix=f".{file_name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout_s) as response:
            while chunk := response.read(_CHUNK):
                digest.update(chunk)
                out.write(chunk)
        actual = digest.hexdigest()
        if not actual.startswith(prefix):
            raise FetchError(f"{file_name}: sha256 {actual[:len(prefix)]}... does not match {prefix} from its name")
        os.chmod(tmp_name, 0o644)
        os.replace(tmp_name, target)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    return target


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        print("usage: fetch_weights.py URL DEST_DIR", file=sys.stderr)
        return 1
    if not argv[1]:
        Path(argv[2]).mkdir(parents=True, exist_ok=True)
        print(f"fetch_weights: no URL given, {argv[2]} left empty (no Inception weights in this image)")
        return 0
    try:
        path = fetch(argv[1], Path(argv[2]))
    except (FetchError, OSError) as err:
        print(f"fetch_weights: {err}", file=sys.stderr)
        return 1
    print(f"fetch_weights: {path} ({path.stat().st_size} bytes, sha256 prefix verified)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
