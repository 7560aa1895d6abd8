# Sourced by the CI scripts: starts the debug binary on a free port with a temporary log,
# sets $base to its URL, and stops it when the script exits. Extra flags: "$@".
cargo build --quiet --bin tcc-coordinator
coordinator_out=$(mktemp)
./target/debug/tcc-coordinator --ephemeral --listen 127.0.0.1:0 "$@" >"$coordinator_out" 2>/dev/null &
coordinator=$!
trap 'kill $coordinator 2>/dev/null || true; rm -f "$coordinator_out"' EXIT
base=""
for _ in $(seq 1 100); do
    base=$(sed -n 's/^tcc-coordinator listening on //p' "$coordinator_out")
    [ -n "$base" ] && break
    sleep 0.1
done
if [ -z "$base" ]; then
    echo "the coordinator did not start" >&2
    exit 1
fi
