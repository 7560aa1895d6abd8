#!/usr/bin/env bash
# The any-language recipe, run for real: a pytest suite (tests/python) drives the coordinator
# and tcc-fake-participant as processes, through a client that openapi-python-client (PyPI)
# generates from openapi/coordinator.yaml.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --release --bin tcc-coordinator
cargo build --release -p tcc-participant --bin tcc-fake-participant

venv=target/pytest-venv
if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv"
fi
"$venv/bin/pip" install --quiet --disable-pip-version-check -r tests/python/requirements.txt

generated=target/pytest-client
cat > target/pytest-client.yaml <<'YAML'
project_name_override: tcc-coordinator-client
package_name_override: tcc_coordinator_client
YAML
# The generator warns only when it cannot read part of the document: fail on that.
"$venv/bin/openapi-python-client" generate --path openapi/coordinator.yaml \
    --config target/pytest-client.yaml --output-path "$generated" --overwrite 2>&1 |
    tee target/pytest-client.log
if grep -qE "Unable to process|Cannot parse|removal of" target/pytest-client.log; then
    echo "openapi-python-client could not read all of openapi/coordinator.yaml" >&2
    exit 1
fi

PYTHONPATH="$generated" "$venv/bin/python" -m pytest tests/python -q -p no:cacheprovider
