#!/usr/bin/env bash
# tcc-participant-check against three participants that keep the contract, each started on a
# free port: the kit's inventory example, tcc-fake-participant, and a service written in
# Python from openapi/participant.yaml alone (tests/python/shipping_participant.py). Each must
# pass every rule (JUnit in target/participant-check/). Then the exit statuses: 2 for bad
# arguments, 1 for a participant that breaks a rule.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --release --workspace
cargo build --release --example inventory
check=target/release/tcc-participant-check
out=target/participant-check
rm -rf "$out" && mkdir -p "$out"
pids=()
trap 'kill "${pids[@]}" 2>/dev/null || true' EXIT

wait_for_file() {
    for _ in $(seq 300); do
        [ -s "$1" ] && return 0
        sleep 0.1
    done
    echo "$1 never appeared" >&2
    exit 1
}

# The inventory example prints its address; 10 apples: the checker's holds fit with 8 races.
target/release/examples/inventory --listen 127.0.0.1:0 > "$out/inventory.log" 2>&1 &
pids+=($!)
for _ in $(seq 300); do grep -q "participant on http" "$out/inventory.log" && break; sleep 0.1; done
inventory=$(grep -o "on http://[0-9.:]*" "$out/inventory.log" | head -1 | cut -c4-)
# The kit's expiry rule is checked on the fake participant below (the example keeps 30 s).
"$check" --try-url "$inventory/holds" --body '{"sku": "apple", "quantity": 1}' --races 8 \
    --junit "$out/inventory.xml"

target/release/tcc-fake-participant --listen 127.0.0.1:0 --port-file "$out/fake.port" \
    --deadline-margin-secs 1 > "$out/fake.log" 2>&1 &
pids+=($!)
wait_for_file "$out/fake.port"
"$check" --try-url "http://127.0.0.1:$(cat "$out/fake.port")/holds" --body '{"anything": true}' \
    --expiry-margin 1s --junit "$out/fake.xml"

# README's "Check your participant" block, as written: the Python shipping service.
python3 - "$out/readme.sh" <<'PY'
import re, sys
readme = open("README.md").read()
start = readme.index("## Check your participant")
open(sys.argv[1], "w").write(re.findall(r"```sh\n(.*?)```", readme[start:], re.S)[0])
PY
bash "$out/readme.sh" > "$out/readme.log" 2>&1 || { cat "$out/readme.log"; exit 1; }
grep -q "12 rules: 12 held, 0 broken, 0 not checked" "$out/readme.log" \
    && grep -q "tcc-participant-check exited with 0" "$out/readme.log" || {
    echo "README's check block: README promises 12 rules held; got:" >&2; cat "$out/readme.log" >&2; exit 1; }
cp target/participant-check.xml "$out/shipping.xml"

# Bad arguments and a broken rule, against the Python service started again.
python3 tests/python/shipping_participant.py --port-file "$out/shipping.port" > "$out/shipping.log" 2>&1 &
pids+=($!)
wait_for_file "$out/shipping.port"
shipping="http://127.0.0.1:$(cat "$out/shipping.port")/shipments"

# Bad arguments: exit 2, naming what is wrong.
set +e
"$check" --try-url "$shipping" --body '{not json' > "$out/bad.log" 2>&1
status=$?
set -e
[ "$status" = 2 ] && grep -q -- "--body is not JSON" "$out/bad.log" || {
    echo "bad arguments: expected exit 2 naming --body, got $status" >&2; cat "$out/bad.log" >&2; exit 1; }

# Nothing listening: exit 2, saying so.
set +e
"$check" --try-url "http://127.0.0.1:9/holds" --body '{}' --timeout 200ms > "$out/absent.log" 2>&1
status=$?
set -e
[ "$status" = 2 ] && grep -q "is the service running and listening there?" "$out/absent.log" || {
    echo "nothing listening: expected exit 2 saying so, got $status" >&2; cat "$out/absent.log" >&2; exit 1; }

# A participant that breaks a rule: the shipping service refuses a body it cannot read, so
# every try is refused and try-answers-link breaks: exit 1, the JUnit file says so.
set +e
"$check" --try-url "$shipping" --body '{"parcel": ""}' --junit "$out/refused.xml" > "$out/refused.log" 2>&1
status=$?
set -e
[ "$status" = 1 ] && grep -q "FAIL  try-answers-link" "$out/refused.log" \
    && grep -q 'failures="1"' "$out/refused.xml" || {
    echo "a broken rule: expected exit 1 and try-answers-link, got $status" >&2; cat "$out/refused.log" >&2; exit 1; }
echo "tcc-participant-check: inventory, fake participant and the Python shipping service keep the contract"
