#!/usr/bin/env bash
# README's walkthrough, run as written: the release coordinator on its default port (8080,
# a temporary log) and the inventory example on 8081, then every ```sh block of the
# "Walkthrough" section after the first (which starts those two) in one shell, in order, with
# the answers README shows asserted. A user who pastes the blocks gets what this checks.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --bin tcc-coordinator --example inventory
work="$(mktemp -d)"
./target/release/tcc-coordinator --ephemeral >"$work/coordinator.log" 2>&1 &
coordinator=$!
./target/release/examples/inventory >"$work/inventory.log" 2>&1 &
inventory=$!
trap 'kill $coordinator $inventory 2>/dev/null || true; rm -rf "$work"' EXIT
for _ in $(seq 300); do
    curl -sf localhost:8080/health/ready >/dev/null && curl -sf localhost:8081/stock >/dev/null && break
    sleep 0.1
done

# The blocks, each followed by a marker line, run in one shell so that `$id` carries over;
# before the block that reads the reservation, wait (as a reader would) until its try answered.
python3 - "$work/steps.sh" <<'PY'
import re, sys
readme = open("README.md").read()
section = readme[readme.index("## Walkthrough"):readme.index("\n## ", readme.index("## Walkthrough") + 1)]
blocks = re.findall(r"```sh\n(.*?)```", section, re.S)[1:]
with open(sys.argv[1], "w") as out:
    for n, block in enumerate(blocks):
        if n == 1:
            out.write('for _ in $(seq 100); do curl -s localhost:8080/reservations/$id | grep -q \'"state":"reserved"\' && break; sleep 0.05; done\n')
        out.write(block)
        out.write(f"\necho '=== end of block {n}'\n")
PY
bash "$work/steps.sh" >"$work/out.txt" 2>&1 || { cat "$work/out.txt"; exit 1; }

python3 - "$work/out.txt" <<'PY'
import sys
out = open(sys.argv[1]).read()
blocks = out.split("=== end of block ")
expected = [
    ["HTTP/1.1 202 Accepted", "location: /reservations/", '"state":"trying"'],
    ['"state":"reserved"', '"order":"A-17"', '"confirm":{"href"'],
    ["HTTP/1.1 303 See Other", "location: /transactions/", '"state":"confirmed"', '"confirmed_at"'],
    ["HTTP/1.1 410 Gone", '"reason":"expired"', '"state":"cancelled"'],
]
failed = False
for n, wanted in enumerate(expected):
    text = blocks[n] if n < len(blocks) else ""
    for w in wanted:
        if w not in text:
            print(f"walkthrough block {n + 1}: README promises {w!r}; the answer was:\n{text}")
            failed = True
if len(blocks) - 1 != len(expected):
    print(f"the walkthrough has {len(blocks) - 1} blocks to run; this script checks {len(expected)}")
    failed = True
sys.exit(1 if failed else 0)
PY
echo "walkthrough: every block answered as README shows"

# "From any language", run as written with the release binaries on PATH.
cargo build --release -p tcc-participant --bin tcc-fake-participant
python3 - "$work/any.sh" <<'PY'
import re, sys
readme = open("README.md").read()
start = readme.index("### From any language")
block = re.findall(r"```sh\n(.*?)```", readme[start:], re.S)[0]
open(sys.argv[1], "w").write(block)
PY
PATH="$(pwd)/target/release:$PATH" bash "$work/any.sh" >"$work/any.txt" 2>&1 || { cat "$work/any.txt"; exit 1; }
python3 - "$work/any.txt" <<'PY'
import json, sys
out = open(sys.argv[1]).read()
lines = out.splitlines()
# curl prints the calls without a newline: read the first JSON value of that line.
calls, _ = json.JSONDecoder().raw_decode(next(line for line in lines if line.startswith("[")))
seen = [(c["verb"], c["status"]) for c in calls]
promised = [("try", 201), ("confirm", 503), ("confirm", 503), ("confirm", 204)]
if "303" not in lines or seen != promised:
    sys.exit(f"From any language: README promises a 303 and calls {promised}; got:\n{out}")
PY
echo "from any language: answered as README shows"

# The kit README's fake participant block, and its seats service reached through the
# coordinator (still running on 8080), as that README tells.
python3 - "$work/fake.sh" <<'PY'
import re, sys
readme = open("participant/README.md").read()
start = readme.index("## The fake participant")
open(sys.argv[1], "w").write(re.findall(r"```sh\n(.*?)```", readme[start:], re.S)[0])
PY
PATH="$(pwd)/target/release:$PATH" bash "$work/fake.sh" >"$work/fake.txt" 2>&1 || { cat "$work/fake.txt"; exit 1; }
python3 - "$work/fake.txt" <<'PY'
import sys
lines = open(sys.argv[1]).read().splitlines()
if lines.count("204") != 3 or lines.count("[]") != 2:
    sys.exit("participant/README.md's fake participant block: README promises three 204 and "
             "empty calls and holds; got:\n" + "\n".join(lines))
PY
echo "the fake participant: answered as participant/README.md shows"

cargo build --release -p tcc-participant --example seats
rm -f "$work/seats.port"
(cd "$work" && exec "$OLDPWD/target/release/examples/seats" 127.0.0.1:0 "$work/seats.port" >"$work/seats.log" 2>&1) &
seats=$!
trap 'kill $coordinator $inventory $seats 2>/dev/null || true; rm -rf "$work"' EXIT
while [ ! -s "$work/seats.port" ]; do sleep 0.1; done
seats_url="http://127.0.0.1:$(cat "$work/seats.port")/holds"
book() {
    curl -s -X POST localhost:8080/reservations -H 'content-type: application/json' -H 'Prefer: wait=5' \
        -d "{\"participants\": [{\"name\": \"seats\", \"try\": {\"url\": \"$seats_url\", \"body\": {\"seat\": \"$1\"}}}]}"
}
book 8A | grep -q '"state":"reserved"' || { echo "seat 8A was not reserved"; exit 1; }
book 7C | grep -q 'try refused: 409 Conflict: seat 7C is taken' || {
    echo "seat 7C's refusal does not show its reason"; book 7C; exit 1; }
echo "the kit's seats service: reserved and refused as participant/README.md says"

# README's Rust client block (client/examples/checkout.rs) against the coordinator on 8080
# and the inventory example on 8081.
cargo build --release -p tcc-client --example checkout
checkout="$(target/release/examples/checkout http://127.0.0.1:8080 http://127.0.0.1:8081/holds)"
grep -q "^confirmed: transaction " <<<"$checkout" || {
    echo "README's Rust client block: expected a confirmed transaction, got: $checkout" >&2; exit 1; }
echo "the Rust client's checkout: confirmed, as README's block shows"

# README's TypeScript blocks, as written, in a new directory: the project set up with npm,
# reserve.ts, and main.ts reserving an apple of the inventory through the coordinator on 8080.
python3 - "$work/ts.sh" "$(pwd)" <<'PY'
import re, sys
readme = open("README.md").read()
part = readme[readme.index("**TypeScript**"):readme.index("[`tests/typescript/`]")]
setup, main = re.findall(r"```sh\n(.*?)```", part, re.S)
module = re.findall(r"```ts\n(.*?)```", part, re.S)[0]
script = setup.replace("…/tcc-coordinator", sys.argv[2])
script += "cat > reserve.ts <<'TS_MODULE'\n" + module + "TS_MODULE\n" + main
open(sys.argv[1], "w").write(script)
PY
typescript="$(cd "$work" && bash "$work/ts.sh" 2>&1)" || { echo "$typescript"; exit 1; }
grep -q "^reserved: " <<<"$typescript" || {
    echo "README's TypeScript blocks: expected 'reserved: <id>', got: $typescript" >&2; exit 1; }
echo "README's TypeScript blocks: a new project reserves through the coordinator"
