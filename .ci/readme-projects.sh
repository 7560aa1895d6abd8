#!/usr/bin/env bash
# The dependency lists of README.md and participant/README.md, used as a user would: a new
# project with README's [dev-dependencies] and its From Rust test passes `cargo test`, and a
# new project with the kit README's [dependencies] and its whole service builds, and so does
# one with README's Rust client [dependencies] and its checkout. The paths
# "…/tcc-coordinator" become this checkout; the projects take this repository's Cargo.lock,
# the versions it is tested with (README says to do the same).
set -euo pipefail
cd "$(dirname "$0")/.."
root="$(pwd)"
# Outside this checkout, so that cargo does not take them for members of its workspace; their
# builds are kept under target/ for the next run.
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
export CARGO_TARGET_DIR="$root/target/readme-projects"

python3 - "$root" "$work" <<'PY'
import os, re, sys
root, work = sys.argv[1], sys.argv[2]

def blocks(path, heading, lang):
    text = open(os.path.join(root, path)).read()
    after = text[text.index(heading):]
    return re.findall(r"```" + lang + r"\n(.*?)```", after, re.S)[0]

def project(name, toml, files):
    base = os.path.join(work, name)
    toml = toml.replace("…/tcc-coordinator", root)
    manifest = f'[package]\nname = "{name}"\nversion = "0.1.0"\nedition = "2021"\n\n' + toml
    for rel, code in {"Cargo.toml": manifest, **files}.items():
        path = os.path.join(base, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        open(path, "w").write(code)

project("mytests", blocks("README.md", "### From Rust", "toml"),
        {"src/lib.rs": "", "tests/stock.rs": blocks("README.md", "### From Rust", "rust")})
project("checkout", blocks("README.md", "## Call it from Rust, Python or TypeScript", "toml"),
        {"src/main.rs": blocks("README.md", "## Call it from Rust, Python or TypeScript", "rust")})
project("seats", blocks("participant/README.md", "### A whole service", "toml"),
        {"src/main.rs": blocks("participant/README.md", "### A whole service", "rust")})
PY
for project in mytests checkout seats; do
    cp Cargo.lock "$work/$project/Cargo.lock"
done
tested="$(cd "$work/mytests" && cargo test 2>&1)" || { echo "$tested"; exit 1; }
grep -q "test stock_is_confirmed_even_when_it_answers_503_twice ... ok" <<<"$tested" || {
    echo "$tested"; echo "README's From Rust test did not run" >&2; exit 1; }
(cd "$work/seats" && cargo build --quiet)
(cd "$work/checkout" && cargo build --quiet)
echo "README's dependency lists: the From Rust test passes, the kit's whole service and the Rust client's checkout build"
