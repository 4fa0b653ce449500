#!/bin/sh
# Entry point of docker/Dockerfile.postgres: the official postgres image's start-up, reduced to
# what the compose stack uses. On an empty $PGDATA: initdb with POSTGRES_USER and the password
# from POSTGRES_PASSWORD_FILE (the file, never the environment), password (scram) logins over
# the network, POSTGRES_DB created, /docker-entrypoint-initdb.d/*.sh run against a server that
# listens on its socket only. Then `postgres` on every interface (the stack's network).
set -eu

die() {
    echo "dkdm-postgres: $*" >&2
    exit 2
}

[ "${1:-}" = postgres ] || exec "$@"
shift
: "${POSTGRES_USER:=postgres}"
: "${POSTGRES_DB:=$POSTGRES_USER}"

if [ ! -s "$PGDATA/PG_VERSION" ]; then
    [ -r "${POSTGRES_PASSWORD_FILE:-}" ] || die "POSTGRES_PASSWORD_FILE is not a readable file (is the secret mounted?)"
    [ -s "$POSTGRES_PASSWORD_FILE" ] || die "POSTGRES_PASSWORD_FILE=$POSTGRES_PASSWORD_FILE is empty"
    initdb --pgdata="$PGDATA" --username="$POSTGRES_USER" --pwfile="$POSTGRES_PASSWORD_FILE" \
        --auth-local=trust --auth-host=scram-sha-256 --encoding=UTF8 >/dev/null
    echo "host all all all scram-sha-256" >>"$PGDATA/pg_hba.conf"
    pg_ctl --pgdata="$PGDATA" --options="-c listen_addresses=''" --wait --silent start
    if [ "$POSTGRES_DB" != postgres ]; then
        psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname postgres --quiet \
            -c "CREATE DATABASE \"$POSTGRES_DB\""
    fi
    for script in /docker-entrypoint-initdb.d/*.sh; do
        [ -e "$script" ] || continue
        echo "dkdm-postgres: running $script"
        sh "$script"
    done
    pg_ctl --pgdata="$PGDATA" --mode=fast --wait --silent stop
fi
exec postgres -D "$PGDATA" -c listen_addresses='*' "$@"
