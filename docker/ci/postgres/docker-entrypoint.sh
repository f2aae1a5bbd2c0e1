#!/usr/bin/env bash
# Entrypoint of the CI stand-in for postgres:16.4 (Debian's PostgreSQL 15). It keeps the official
# image's contract as far as docker/compose-tracking.yaml uses it: POSTGRES_USER (default postgres),
# POSTGRES_PASSWORD (required), POSTGRES_DB (default: the user), PGDATA (/var/lib/postgresql/data).
# An empty PGDATA gets initdb, the user's password, the database, and /docker-entrypoint-initdb.d/
# (*.sh run or sourced, *.sql and *.sql.gz fed to psql as POSTGRES_USER in POSTGRES_DB), once.
# A PGDATA that has PG_VERSION is just started. postgres ends up PID 1, as the postgres user.
# -e and no -u, as the official entrypoint: sourced init scripts run under these settings.
set -Eeo pipefail

export PGDATA="${PGDATA:-/var/lib/postgresql/data}"
export POSTGRES_USER="${POSTGRES_USER:-postgres}"
export POSTGRES_DB="${POSTGRES_DB:-$POSTGRES_USER}"

log() { printf '%s [entrypoint] %s\n' "$(date -u '+%Y-%m-%d %H:%M:%S UTC')" "$*" >&2; }

# `docker run IMAGE -c key=value` means `postgres -c key=value`, as in the official image.
if [ "${1:0:1}" = '-' ]; then
    set -- postgres "$@"
fi
if [ "$1" != postgres ]; then
    exec "$@"
fi

# Normally the image runs as postgres (USER). Started as root (--user root, or a data dir from
# elsewhere), fix the ownership and drop to postgres; the base image has no gosu/setpriv, but python.
if [ "$(id -u)" = 0 ]; then
    mkdir -p "$PGDATA" /var/run/postgresql
    find "$PGDATA" \! -user postgres -exec chown postgres:postgres '{}' +
    chmod 700 "$PGDATA"
    chown postgres:postgres /var/run/postgresql
    chmod 3777 /var/run/postgresql
    exec python3 -c '
import os, pwd, sys
pw = pwd.getpwnam("postgres")
os.initgroups(pw.pw_name, pw.pw_gid)
os.setgid(pw.pw_gid)
os.setuid(pw.pw_uid)
os.environ.update(HOME=pw.pw_dir, USER=pw.pw_name, LOGNAME=pw.pw_name)
os.execv(sys.argv[1], sys.argv[1:])
' "${BASH_SOURCE[0]}" "$@"
fi

if [ ! -s "$PGDATA/PG_VERSION" ]; then
    if [ -z "${POSTGRES_PASSWORD:-}" ]; then
        log "ERROR: the database is uninitialized and POSTGRES_PASSWORD is not set"
        exit 1
    fi
    mkdir -p "$PGDATA"
    chmod 700 "$PGDATA" || true
    log "initializing $PGDATA for user $POSTGRES_USER"
    # The password is set by initdb itself (scram-sha-256, PostgreSQL 15's default password_encryption).
    initdb --username="$POSTGRES_USER" --pwfile=<(printf '%s\n' "$POSTGRES_PASSWORD") \
        --encoding=UTF8 --locale=C.UTF-8 --auth-local=trust --auth-host=scram-sha-256
    # Socket connections inside the container are trusted (the healthcheck's pg_isready, psql in
    # init scripts); every TCP connection, from anywhere, needs the password. The official image
    # also trusts TCP from 127.0.0.1 inside the container; nothing in the Compose file uses that.
    cat > "$PGDATA/pg_hba.conf" <<'EOF'
# Written by the CI stand-in's entrypoint.
# TYPE  DATABASE     USER  ADDRESS  METHOD
local   all          all            trust
local   replication  all            trust
host    all          all   all      scram-sha-256
host    replication  all   all      scram-sha-256
EOF

    # Temporary server for the setup: no TCP, and its socket in a private directory so that the
    # healthcheck (pg_isready on the default socket) only passes once the real server is up.
    init_socket_dir="$(mktemp -d)"
    export PGHOST="$init_socket_dir" PGPASSWORD="${PGPASSWORD:-$POSTGRES_PASSWORD}"
    pg_ctl -D "$PGDATA" -w -t 60 -o "-c listen_addresses='' -c unix_socket_directories=$init_socket_dir" start
    psql=(psql -v ON_ERROR_STOP=1 --no-psqlrc --no-password --username "$POSTGRES_USER")
    if [ "$POSTGRES_DB" != postgres ]; then
        log "creating database $POSTGRES_DB"
        "${psql[@]}" --dbname postgres --set db="$POSTGRES_DB" <<<'CREATE DATABASE :"db";'
    fi
    shopt -s nullglob
    for f in /docker-entrypoint-initdb.d/*; do
        case "$f" in
            *.sh)
                if [ -x "$f" ]; then
                    log "running $f"
                    "$f"
                else
                    log "sourcing $f"
                    . "$f"
                fi
                ;;
            *.sql) log "running $f"; "${psql[@]}" --dbname "$POSTGRES_DB" -f "$f" ;;
            *.sql.gz) log "running $f"; gunzip -c "$f" | "${psql[@]}" --dbname "$POSTGRES_DB" ;;
            *) log "ignoring $f" ;;
        esac
    done
    shopt -u nullglob
    pg_ctl -D "$PGDATA" -m fast -w stop
    unset PGHOST PGPASSWORD
    rmdir "$init_socket_dir"
    log "PostgreSQL init process complete; ready for start up."
else
    log "$PGDATA already holds a database (PostgreSQL $(cat "$PGDATA/PG_VERSION")); skipping initialization"
fi

# PID 1 from here on: docker stop sends SIGINT (the image's STOPSIGNAL), a fast shutdown.
exec "$@"
