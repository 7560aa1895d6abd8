#!/usr/bin/env bash
# Starts a throwaway high-availability PostgreSQL for the failover tests and the chaos soak:
# one etcd and two PostgreSQL nodes, each run by Patroni, on loopback, under target/patroni-ci,
# with `synchronous_mode: true` (a commit waits for the synchronous standby, and only that
# standby may be promoted). Installs what is absent from Debian's packages (patroni,
# etcd-server, PostgreSQL). Source it: it exports
#
#   TCC_TEST_PATRONI           the multi-host URL the coordinators use
#                              (postgres://postgres@127.0.0.1:P0,127.0.0.1:P1/postgres?target_session_attrs=read-write)
#   TCC_TEST_PATRONI_DIR       the cluster's folder: NODE/{start,patroni.yml,pg_port,rest_port,patroni.pid,data}
#   TCC_TEST_PATRONI_NODES     the node names, space separated (pg0 pg1)
#
# and sets a trap that stops every process of the cluster when the calling shell exits.
# A node whose Patroni was killed is started again with `sh "$TCC_TEST_PATRONI_DIR/NODE/start"`.
# Patroni's timings: ttl 10 s (a silent leader loses its key after at most 10 s), loop_wait 1 s,
# retry_timeout 4 s.
set -euo pipefail

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

pg_bin() {
    local found
    found="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)"
    [ -n "$found" ] && echo "$found"
}

missing=()
command -v patroni >/dev/null || missing+=(patroni)
command -v etcd >/dev/null || missing+=(etcd-server)
/usr/bin/python3 -c 'import etcd' 2>/dev/null || missing+=(python3-etcd)
[ -n "$(pg_bin)" ] || missing+=(postgresql)
if [ "${#missing[@]}" -gt 0 ]; then
    echo "installing from Debian's packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
PG_BIN="$(pg_bin)"

HA_DIR="$(pwd)/target/patroni-ci"
# Whatever an earlier run left (a shell that was killed before its trap ran).
pkill -KILL -f "$HA_DIR/" 2>/dev/null || true
rm -rf "$HA_DIR"
mkdir -p "$HA_DIR"

# PostgreSQL refuses to run as root: Patroni, which starts it, runs as `postgres` then.
OWNER="$(id -un)"
[ "$(id -u)" = 0 ] && OWNER=postgres

ETCD_CLIENT="$(free_port)"
ETCD_PEER="$(free_port)"
etcd --name tcc-ci --data-dir "$HA_DIR/etcd" \
    --listen-client-urls "http://127.0.0.1:$ETCD_CLIENT" \
    --advertise-client-urls "http://127.0.0.1:$ETCD_CLIENT" \
    --listen-peer-urls "http://127.0.0.1:$ETCD_PEER" \
    --initial-advertise-peer-urls "http://127.0.0.1:$ETCD_PEER" \
    --initial-cluster "tcc-ci=http://127.0.0.1:$ETCD_PEER" --enable-v2=true \
    >"$HA_DIR/etcd.log" 2>&1 &
echo $! >"$HA_DIR/etcd.pid"
disown

stop_patroni() {
    local pid
    for node in "$HA_DIR"/pg*; do
        [ -f "$node/patroni.pid" ] || continue
        pid="$(cat "$node/patroni.pid")"
        kill -CONT "$pid" 2>/dev/null || true
        kill -TERM "$pid" 2>/dev/null || true
    done
    sleep 1
    # Whatever is left (a stopped postmaster, a killed Patroni's PostgreSQL), and etcd.
    pkill -CONT -f "$HA_DIR/" 2>/dev/null || true
    pkill -KILL -f "$HA_DIR/" 2>/dev/null || true
    kill "$(cat "$HA_DIR/etcd.pid")" 2>/dev/null || true
}
# After whatever the calling shell already stops at exit (`.ci/postgres.sh` sourced before).
previous_exit_trap="$(trap -p EXIT | sed -E "s/^trap -- '(.*)' EXIT$/\1/")"
trap "stop_patroni; ${previous_exit_trap}" EXIT

NODES="pg0 pg1"
URL_HOSTS=""
for node in $NODES; do
    dir="$HA_DIR/$node"
    mkdir -p "$dir/data"
    chmod 700 "$dir/data"
    pg_port="$(free_port)"
    rest_port="$(free_port)"
    echo "$pg_port" >"$dir/pg_port"
    echo "$rest_port" >"$dir/rest_port"
    URL_HOSTS="${URL_HOSTS:+$URL_HOSTS,}127.0.0.1:$pg_port"
    cat >"$dir/patroni.yml" <<YAML
scope: tcc-ci
name: $node
log:
  level: INFO
restapi:
  listen: 127.0.0.1:$rest_port
  connect_address: 127.0.0.1:$rest_port
etcd:
  host: 127.0.0.1:$ETCD_CLIENT
bootstrap:
  dcs:
    ttl: 10
    loop_wait: 1
    retry_timeout: 4
    maximum_lag_on_failover: 1048576
    synchronous_mode: true
    postgresql:
      use_pg_rewind: true
      parameters:
        max_connections: 300
        wal_log_hints: 'on'
        wal_keep_size: 256MB
        fsync: 'on'
  initdb:
    - encoding: UTF8
    - auth: trust
  pg_hba:
    - local all all trust
    - host replication all 127.0.0.1/32 trust
    - host all all 127.0.0.1/32 trust
postgresql:
  listen: 127.0.0.1:$pg_port
  connect_address: 127.0.0.1:$pg_port
  data_dir: $dir/data
  bin_dir: $PG_BIN
  pgpass: $dir/pgpass
  remove_data_directory_on_rewind_failure: true
  remove_data_directory_on_diverged_timelines: true
  authentication:
    superuser:
      username: postgres
    replication:
      username: postgres
    rewind:
      username: postgres
  parameters:
    unix_socket_directories: '$dir'
    # Statements per transaction, for benches/postgres-cost.sh.
    shared_preload_libraries: pg_stat_statements
YAML
    # Starts (or starts again) this node's Patroni in the background.
    cat >"$dir/start" <<SH
#!/bin/sh
cd "$dir"
if [ "\$(id -u)" = 0 ]; then
    setsid runuser -u $OWNER -- patroni "$dir/patroni.yml" >>"$dir/patroni.log" 2>&1 </dev/null &
else
    setsid patroni "$dir/patroni.yml" >>"$dir/patroni.log" 2>&1 </dev/null &
fi
echo \$! >"$dir/patroni.pid"
SH
    chmod +x "$dir/start"
done
[ "$(id -u)" = 0 ] && chown -R "$OWNER" "$HA_DIR"/pg*

# etcd first, then the nodes one after the other, so that pg0 bootstraps and pg1 follows it.
for _ in $(seq 100); do
    curl -fs "http://127.0.0.1:$ETCD_CLIENT/health" >/dev/null 2>&1 && break
    sleep 0.2
done
leader_and_sync() {
    curl -fs "http://127.0.0.1:$(cat "$HA_DIR/pg0/rest_port")/cluster" 2>/dev/null |
        python3 -c 'import json, sys; c = json.load(sys.stdin)["members"]; r = sorted(m["role"] for m in c if m["state"] in ("running", "streaming")); print(" ".join(r))' 2>/dev/null || true
}
sh "$HA_DIR/pg0/start"
for _ in $(seq 300); do
    [ "$(leader_and_sync)" = "leader" ] && break
    sleep 0.2
done
sh "$HA_DIR/pg1/start"
for _ in $(seq 600); do
    [ "$(leader_and_sync)" = "leader sync_standby" ] && break
    sleep 0.2
done
if [ "$(leader_and_sync)" != "leader sync_standby" ]; then
    echo "the Patroni cluster did not come up with a leader and a synchronous standby: $(leader_and_sync)" >&2
    tail -n 20 "$HA_DIR"/pg*/patroni.log >&2
    exit 1
fi

export TCC_TEST_PATRONI="postgres://postgres@$URL_HOSTS/postgres?target_session_attrs=read-write"
export TCC_TEST_PATRONI_DIR="$HA_DIR"
export TCC_TEST_PATRONI_NODES="$NODES"
echo "Patroni cluster: PostgreSQL $("$PG_BIN/postgres" --version | awk '{print $3}'), nodes $NODES on $URL_HOSTS, etcd on $ETCD_CLIENT ($HA_DIR)"
