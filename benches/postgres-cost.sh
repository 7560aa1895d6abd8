#!/usr/bin/env bash
# What one coordinated transaction costs PostgreSQL, for sizing a database. Runs the
# benchmark's confirm scenario (K = 2 links, 64 transactions in flight) with one coordinator on
# the database TCC_TEST_POSTGRES names, reads the primary's counters before and after, and
# prints per transaction: WAL bytes, commits, statements (pg_stat_statements), rows updated,
# and the CPU of every PostgreSQL server on this machine (with a standby: both), next to the
# benchmark's throughput, p99 and coordinator CPU.
#
#   bash -c 'source .ci/postgres.sh && bash benches/postgres-cost.sh'                     # one server
#   bash -c 'source .ci/patroni.sh && TCC_TEST_POSTGRES=$TCC_TEST_PATRONI bash benches/postgres-cost.sh'
#
# ROUNDS and SECONDS (default 3 and 5) set the benchmark's rounds.
set -euo pipefail
cd "$(dirname "$0")/.."
url="${TCC_TEST_POSTGRES:?set TCC_TEST_POSTGRES (source .ci/postgres.sh or .ci/patroni.sh)}"
rounds="${ROUNDS:-3}"
seconds="${SECONDS_PER_ROUND:-5}"

psql -qAt "$url" -c "CREATE EXTENSION IF NOT EXISTS pg_stat_statements" >/dev/null
counters() {
    psql -qAt -F ' ' "$url" -c "SELECT pg_current_wal_lsn() - '0/0'::pg_lsn,
        (SELECT sum(xact_commit) FROM pg_stat_database),
        (SELECT coalesce(sum(n_tup_ins), 0) FROM pg_stat_user_tables WHERE relname = 'tcc_reservations'),
        (SELECT coalesce(sum(n_tup_upd), 0) FROM pg_stat_user_tables WHERE relname = 'tcc_reservations'),
        (SELECT coalesce(sum(calls), 0) FROM pg_stat_statements
            WHERE query ~* '^\s*(insert|update|select|delete|begin|commit)' AND query ~ 'tcc_')"
}
# CPU seconds every PostgreSQL server on this machine has used: each postmaster's own and its
# exited children's (cutime, cstime), plus its live children's.
database_cpu() {
    python3 - <<'PY'
import os
ticks = os.sysconf("SC_CLK_TCK")
procs = {}
for pid in filter(str.isdigit, os.listdir("/proc")):
    try:
        stat = open(f"/proc/{pid}/stat").read()
    except OSError:
        continue
    comm = stat[stat.index("(") + 1:stat.rindex(")")]
    fields = stat[stat.rindex(")") + 2:].split()
    procs[int(pid)] = (comm, int(fields[1]), [int(f) for f in fields[11:15]])
total = 0
for pid, (comm, parent, (u, s, cu, cs)) in procs.items():
    if comm != "postgres":
        continue
    if procs.get(parent, ("",))[0] == "postgres":
        total += u + s
    else:
        total += u + s + cu + cs
print(total / ticks)
PY
}
settings="$(psql -qAt "$url" -c "SELECT 'synchronous_commit=' || current_setting('synchronous_commit') || ' synchronous_standby_names=''' || current_setting('synchronous_standby_names') || ''''")"
read -r wal0 commits0 inserted0 updated0 statements0 <<<"$(counters)"
cpu0="$(database_cpu)"
report="$(mktemp)"
cargo bench --bench tcc -- confirm --store postgres --instances 1 --rounds "$rounds" \
    --seconds "$seconds" --json "$report" >&2
# The server publishes a backend's counters when it goes idle (at most once a second).
sleep 2
read -r wal1 commits1 inserted1 updated1 statements1 <<<"$(counters)"
cpu1="$(database_cpu)"
python3 - "$report" "$settings" <<PY
import json, sys
report = json.load(open(sys.argv[1]))
r = report[0]
tx = $inserted1 - $inserted0
print(f"postgres cost: {sys.argv[2]}")
print(f"postgres cost: transactions={tx} tx/s={r['coordinator_tps_median']:.0f} "
      f"p50_ms={r['p50_ms']} p99_ms={r['p99_ms']} "
      f"coordinator_cpu_us_per_tx={r['coordinator_cpu_us_per_tx_median']:.0f} "
      f"wal_bytes_per_tx={($wal1 - $wal0) / tx:.0f} commits_per_tx={($commits1 - $commits0) / tx:.2f} "
      f"statements_per_tx={($statements1 - $statements0) / tx:.2f} "
      f"rows_updated_per_tx={($updated1 - $updated0) / tx:.2f} "
      f"database_cpu_us_per_tx={($cpu1 - $cpu0) * 1e6 / tx:.0f}")
PY
rm -f "$report"
