#!/bin/sh
# Entry point of the dkdm images (GPU, CPU, MLflow server).
#
# Compose mounts passwords as secret files, but the clients we run read them from the
# environment (libpq: PGPASSWORD, the MLflow client: MLFLOW_TRACKING_PASSWORD, boto3/DVC:
# AWS_SECRET_ACCESS_KEY, the MLflow auth app: MLFLOW_AUTH_ADMIN_PASSWORD and
# MLFLOW_FLASK_SERVER_SECRET_KEY). So for each of those,
# VAR_FILE=/run/secrets/x becomes VAR=<contents> here, in this process only, and never appears
# in the compose file, the image or `docker inspect`.
#
# Then, optionally:
#   DKDM_OPTUNA_STORAGE_INIT set  -> create Optuna's tables in that database (for optuna-dashboard);
#   MLFLOW_AUTH_DATABASE_URI set  -> write the basic-auth app's config, point MLflow at it, and
#                                    make sure the app has a CSRF secret key;
#   DKDM_DVC_CACHE_DIR / DKDM_DVC_REMOTE_URL set and a DVC project in the working directory
#                                 -> use the shared cache volume and the S3 (MinIO) remote.
# Finally exec the command, so it receives the container's signals directly.
set -eu

die() {
    echo "dkdm-entrypoint: $*" >&2
    exit 2
}

for var in PGPASSWORD MLFLOW_TRACKING_PASSWORD MLFLOW_AUTH_ADMIN_PASSWORD MLFLOW_FLASK_SERVER_SECRET_KEY \
    AWS_SECRET_ACCESS_KEY; do
    eval "file=\${${var}_FILE:-}"
    if [ -n "$file" ]; then
        [ -r "$file" ] || die "${var}_FILE=$file is not a readable file (is the secret mounted?)"
        value=$(cat "$file")
        [ -n "$value" ] || die "${var}_FILE=$file is empty"
        export "$var=$value"
        unset "${var}_FILE"
    fi
done

if [ -n "${MLFLOW_AUTH_DATABASE_URI:-}" ]; then
    config_dir="${MLFLOW_AUTH_CONFIG_DIR:-${HOME:-/tmp}/.mlflow-auth}"
    mkdir -p "$config_dir"
    # configparser interpolates '%', so a URL-escaped character must be written as '%%'.
    database_uri=$(printf '%s' "$MLFLOW_AUTH_DATABASE_URI" | sed 's/%/%%/g')
    umask 077
    cat >"$config_dir/basic_auth.ini" <<EOF
[mlflow]
default_permission = ${MLFLOW_AUTH_DEFAULT_PERMISSION:-READ}
database_uri = ${database_uri}
authorization_function = mlflow.server.auth:authenticate_request_basic_auth
EOF
    umask 022
    # The admin user's name and password come from MLFLOW_AUTH_ADMIN_USERNAME/_PASSWORD, which
    # MLflow reads itself when it first creates the user, so the file holds no secret.
    export MLFLOW_AUTH_CONFIG_PATH="$config_dir/basic_auth.ini"
    # The auth app's CSRF protection signs with this key; every worker of this server inherits
    # it. Without a key of its own (MLFLOW_FLASK_SERVER_SECRET_KEY[_FILE]) a fresh one per start
    # only costs open UI forms at a restart, never the basic-auth logins.
    if [ -z "${MLFLOW_FLASK_SERVER_SECRET_KEY:-}" ]; then
        MLFLOW_FLASK_SERVER_SECRET_KEY=$(python3 -c 'import secrets; print(secrets.token_hex(32))')
        export MLFLOW_FLASK_SERVER_SECRET_KEY
    fi
fi

if [ -n "${DKDM_OPTUNA_STORAGE_INIT:-}" ]; then
    # optuna-dashboard opens its storage without creating Optuna's tables, so on a new database it
    # would fail until the first worker ran: create them (idempotent; racing workers are fine).
    python3 -m dkdm.tuning.storage "$DKDM_OPTUNA_STORAGE_INIT" || die "cannot prepare the Optuna storage"
fi

if [ -f dvc.yaml ] && command -v dvc >/dev/null 2>&1 \
    && { [ -n "${DKDM_DVC_CACHE_DIR:-}" ] || [ -n "${DKDM_DVC_REMOTE_URL:-}" ]; }; then
    # The image holds the project without its .git; DVC then has to be told not to look for one.
    if [ ! -d .dvc ]; then
        dvc init --no-scm --quiet
    elif ! git rev-parse --is-inside-work-tree >/dev/null 2>&1; then
        dvc config --quiet --local core.no_scm true
    fi
    if [ -n "${DKDM_DVC_CACHE_DIR:-}" ]; then
        dvc cache dir --quiet --local "$DKDM_DVC_CACHE_DIR"
    fi
    if [ -n "${DKDM_DVC_REMOTE_URL:-}" ]; then
        dvc remote add --quiet --local --force --default minio "$DKDM_DVC_REMOTE_URL"
        if [ -n "${DKDM_DVC_REMOTE_ENDPOINT:-}" ]; then
            dvc remote modify --quiet --local minio endpointurl "$DKDM_DVC_REMOTE_ENDPOINT"
        fi
    fi
fi

[ "$#" -gt 0 ] || die "no command given"
exec "$@"
