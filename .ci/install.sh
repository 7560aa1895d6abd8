#!/usr/bin/env bash
# Packaging: `cargo install` puts the three binaries into a scratch root and they run from there;
# the systemd unit in deploy/ passes `systemd-analyze verify` (systemd from Debian's
# packages, installed when absent) against the installed binary, and its sandboxing score
# is printed.
set -euo pipefail
cd "$(dirname "$0")/.."

root=$(mktemp -d)
work=$(mktemp -d)
cleanup() {
    kill "${pids[@]}" 2>/dev/null || true
    rm -rf "$root" "$work"
}
pids=()
trap cleanup EXIT

cargo install --locked --quiet --path . --root "$root"
cargo install --locked --quiet --path participant --root "$root"
cargo install --locked --quiet --path check --root "$root"
"$root/bin/tcc-coordinator" --version
"$root/bin/tcc-fake-participant" --version
"$root/bin/tcc-participant-check" --version

# Waits for a port file, then for `path` on that port to answer 200.
answers() {
    local port_file=$1 path=$2
    for _ in $(seq 1 300); do
        if [ -s "$port_file" ] && curl -fsS "http://127.0.0.1:$(cat "$port_file")$path" >/dev/null 2>&1; then
            return 0
        fi
        sleep 0.1
    done
    echo "nothing answered 200 on $path (port file $port_file)" >&2
    return 1
}

"$root/bin/tcc-coordinator" --ephemeral --listen 127.0.0.1:0 --port-file "$work/coordinator.port" \
    >"$work/coordinator.log" 2>&1 &
pids+=($!)
"$root/bin/tcc-fake-participant" --listen 127.0.0.1:0 --port-file "$work/fake.port" \
    >"$work/fake.log" 2>&1 &
pids+=($!)
answers "$work/coordinator.port" /health/ready
answers "$work/fake.port" /_calls
"$root/bin/tcc-participant-check" --try-url "http://127.0.0.1:$(cat "$work/fake.port")/holds" \
    --body '{}' --races 3 >"$work/check.log"
echo "the installed tcc-coordinator and tcc-fake-participant run and answer; tcc-participant-check passes the fake"

if ! command -v systemd-analyze >/dev/null; then
    apt-get update -qq && apt-get install -y -qq systemd >/dev/null
fi
sed "s|^ExecStart=/usr/local/bin/tcc-coordinator|ExecStart=$root/bin/tcc-coordinator|" \
    deploy/tcc-coordinator.service >"$work/tcc-coordinator.service"
systemd-analyze verify "$work/tcc-coordinator.service"
echo "deploy/tcc-coordinator.service: systemd-analyze verify passed"
systemd-analyze security --offline=true "$work/tcc-coordinator.service" | tail -1
