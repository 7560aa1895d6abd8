#!/usr/bin/env bash
# Starts a throwaway PostgreSQL cluster for the PostgreSQL tests: its own data directory under
# target/, its own port, trust authentication on loopback only. Installs PostgreSQL from
# Debian's packages when it is absent. Source it: it exports TCC_TEST_POSTGRES (the URL the
# tests use), TCC_TEST_POSTGRES_CA and TCC_TEST_POSTGRES_TLS_ROLE (for the TLS test),
# TCC_TEST_POSTGRES_DIR and TCC_TEST_POSTGRES_BIN (for the chaos soak), and sets
# a trap that stops the cluster when the calling shell exits.
set -euo pipefail

# A free port unless PG_PORT names one.
PG_PORT="${PG_PORT:-$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}"
PG_DIR="$(pwd)/target/postgres-ci"

pg_bin() {
    local found
    found="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)"
    [ -n "$found" ] && echo "$found"
}

if [ -z "$(pg_bin)" ]; then
    echo "PostgreSQL is not installed: installing it from Debian's packages"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends postgresql >/dev/null
fi
PG_BIN="$(pg_bin)"

# initdb and postgres refuse to run as root: run them as the `postgres` user when we are root.
as_owner() {
    if [ "$(id -u)" = 0 ]; then
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}

if [ -f "$PG_DIR/postmaster.pid" ]; then
    as_owner "$PG_BIN/pg_ctl" -D "$PG_DIR" -m immediate stop >/dev/null 2>&1 || true
fi
rm -rf "$PG_DIR"
mkdir -p "$PG_DIR"
[ "$(id -u)" = 0 ] && chown postgres "$PG_DIR"
as_owner "$PG_BIN/initdb" -D "$PG_DIR" -U postgres --auth=trust --no-sync >/dev/null

# TLS for the TLS test: a CA of our own and a certificate for 127.0.0.1 signed by it. The role
# `tls_only` may connect over TLS only (pg_hba rules match first to last).
TLS_DIR="$PG_DIR/tls"
mkdir -p "$TLS_DIR"
openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=tcc test CA" \
    -keyout "$TLS_DIR/ca.key" -out "$TLS_DIR/ca.crt" 2>/dev/null
openssl req -newkey rsa:2048 -nodes -subj "/CN=127.0.0.1" \
    -keyout "$TLS_DIR/server.key" -out "$TLS_DIR/server.csr" 2>/dev/null
printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n' > "$TLS_DIR/server.ext"
openssl x509 -req -in "$TLS_DIR/server.csr" -CA "$TLS_DIR/ca.crt" -CAkey "$TLS_DIR/ca.key" \
    -CAcreateserial -days 2 -extfile "$TLS_DIR/server.ext" -out "$TLS_DIR/server.crt" 2>/dev/null
chmod 600 "$TLS_DIR/server.key"
[ "$(id -u)" = 0 ] && chown -R postgres "$TLS_DIR"
{
    echo "hostnossl all tls_only 0.0.0.0/0 reject"
    cat "$PG_DIR/pg_hba.conf"
} > "$PG_DIR/pg_hba.conf.new"
mv "$PG_DIR/pg_hba.conf.new" "$PG_DIR/pg_hba.conf"
[ "$(id -u)" = 0 ] && chown postgres "$PG_DIR/pg_hba.conf"

# The settings live in the cluster's configuration, so that a plain `pg_ctl start` (the chaos
# soak stops and starts the database) serves the same way.
cat >> "$PG_DIR/postgresql.conf" <<CONF
listen_addresses = '127.0.0.1'
port = $PG_PORT
unix_socket_directories = '$PG_DIR'
max_connections = 300
# Statements per transaction, for benches/postgres-cost.sh.
shared_preload_libraries = 'pg_stat_statements'
ssl = on
ssl_cert_file = '$TLS_DIR/server.crt'
ssl_key_file = '$TLS_DIR/server.key'
CONF
as_owner "$PG_BIN/pg_ctl" -D "$PG_DIR" -l "$PG_DIR/server.log" -w start >/dev/null
psql -q "postgres://postgres@127.0.0.1:$PG_PORT/postgres" -c "CREATE ROLE tls_only LOGIN SUPERUSER" >/dev/null

stop_postgres() {
    as_owner "$PG_BIN/pg_ctl" -D "$PG_DIR" -m fast stop >/dev/null 2>&1 || true
}
# After whatever the calling shell already stops at exit (`.ci/patroni.sh` sourced before).
previous_exit_trap="$(trap -p EXIT | sed -E "s/^trap -- '(.*)' EXIT$/\1/")"
trap "stop_postgres; ${previous_exit_trap}" EXIT

export TCC_TEST_POSTGRES="postgres://postgres@127.0.0.1:$PG_PORT/postgres"
# The CA of the cluster's certificate, and a role that may only connect over TLS.
export TCC_TEST_POSTGRES_CA="$TLS_DIR/ca.crt"
export TCC_TEST_POSTGRES_TLS_ROLE=tls_only
# Where the cluster lives and its binaries: the chaos soak stops and starts it.
export TCC_TEST_POSTGRES_DIR="$PG_DIR"
export TCC_TEST_POSTGRES_BIN="$PG_BIN"
echo "PostgreSQL $("$PG_BIN/postgres" --version | awk '{print $3}') on port $PG_PORT ($PG_DIR)"
