#!/bin/sh
# Build-time helper of the images: create a venv (if missing) and pip-install into it, within one RUN
# step. The Dockerfiles call it twice: for the dependencies (a layer reused while only the sources
# change), then for the project itself.
#
# Usage: install-venv.sh VENV PIP_INSTALL_ARGS...
# Env (the Dockerfiles' build args):
#   TORCH_PACKAGES, TORCH_INDEX_URL  installed first, from that index (torch's CUDA or CPU build);
#   PROJECT_DEPS                     a pyproject.toml whose [project] dependencies are installed too
#                                    (the project itself is not);
#   PIP_EXTRA_INDEX_URL              more indexes, e.g. a local wheel mirror (empty: none);
#   PIP_CERT_URL                     a CA bundle for pip to trust (a TLS-intercepting proxy). It is
#                                    fetched to a temp file, used and deleted before the step ends,
#                                    so no layer holds it and `docker history` shows only the URL.
set -eu

[ "$#" -ge 2 ] || { echo "usage: install-venv.sh VENV PIP_INSTALL_ARGS..." >&2; exit 2; }
venv=$1
shift
# pip reads PIP_* from the environment; an empty build arg must mean "not set", not "".
[ -n "${PIP_EXTRA_INDEX_URL:-}" ] || unset PIP_EXTRA_INDEX_URL
if [ -n "${PIP_CERT_URL:-}" ]; then
    PIP_CERT=$(mktemp)
    export PIP_CERT
    trap 'rm -f "$PIP_CERT"' EXIT
    python3 -c 'import sys, urllib.request; sys.stdout.buffer.write(urllib.request.urlopen(sys.argv[1], timeout=60).read())' \
        "$PIP_CERT_URL" >"$PIP_CERT"
fi
[ -x "$venv/bin/pip" ] || python3 -m venv "$venv"
if [ -n "${TORCH_PACKAGES:-}" ]; then
    # TORCH_PACKAGES is a list of requirement strings (no spaces inside one): split on purpose.
    # shellcheck disable=SC2086
    "$venv/bin/pip" install --index-url "${TORCH_INDEX_URL:?TORCH_INDEX_URL must name the index of TORCH_PACKAGES}" \
        $TORCH_PACKAGES
fi
if [ -n "${PROJECT_DEPS:-}" ]; then
    # One requirement per line into a file pip reads (`-r`): the strings may hold spaces and markers.
    deps=$(mktemp)
    "$venv/bin/python" -c 'import sys, tomllib; print("\n".join(tomllib.load(open(sys.argv[1], "rb"))["project"]["dependencies"]))' \
        "$PROJECT_DEPS" >"$deps"
    set -- "$@" -r "$deps"
fi
"$venv/bin/pip" install "$@"
[ -z "${deps:-}" ] || rm -f "$deps"
