#!/bin/sh
# Run once by the postgres image on an empty data directory (docker-entrypoint-initdb.d):
# POSTGRES_DB (mlflow, the tracking store) exists already; create the other databases the stack
# uses, owned by POSTGRES_USER: mlflow_auth (the MLflow basic-auth user store, kept apart because
# it runs its own migrations) and optuna (the shared Optuna storage of every tune worker).
set -eu

for db in ${DKDM_EXTRA_DATABASES:-mlflow_auth optuna}; do
    case "$db" in
        *[!a-z0-9_]*) echo "create-databases: database name '$db' must be lower-case letters, digits and _" >&2; exit 2 ;;
    esac
    echo "create-databases: creating database $db"
    psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname postgres \
        -c "CREATE DATABASE \"$db\" OWNER \"$POSTGRES_USER\""
done
