"""Fixtures for testing a choreography from Python: the coordinator and fake participants
as processes (each on a free port it writes to a port file), and a client generated from
openapi/coordinator.yaml.

Binaries: $TCC_COORDINATOR_BIN and $TCC_FAKE_PARTICIPANT_BIN, or target/release/.
The generated client package `tcc_coordinator_client` must be importable (.ci/pytest.sh
generates it and puts it on PYTHONPATH).
"""

import os
import pathlib
import subprocess
import time

import httpx
import pytest
from tcc_coordinator_client import Client

ROOT = pathlib.Path(__file__).resolve().parents[2]
PATIENCE = 30.0


def binary(variable, name):
    return os.environ.get(variable) or str(ROOT / "target" / "release" / name)


def wait_for(what, check, timeout=PATIENCE):
    """Polls `check` until it returns something truthy, which it returns."""
    deadline = time.monotonic() + timeout
    while True:
        found = check()
        if found:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"this never happened: {what}")
        time.sleep(0.02)


class Process:
    """A binary started with `--listen 127.0.0.1:0 --port-file FILE`."""

    def __init__(self, args, workdir, name):
        self.port_file = workdir / f"{name}.port"
        self.log = open(workdir / f"{name}.log", "wb")
        self.process = subprocess.Popen(
            args + ["--listen", "127.0.0.1:0", "--port-file", str(self.port_file)],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        port = wait_for(f"{name} writes its port file", self._port)
        self.url = f"http://127.0.0.1:{port}"

    def _port(self):
        if self.process.poll() is not None:
            raise AssertionError(f"exited with {self.process.returncode}, see {self.log.name}")
        try:
            return int(self.port_file.read_text().strip())
        except (FileNotFoundError, ValueError):
            return None

    def stop(self):
        self.process.terminate()
        self.process.wait(timeout=10)
        self.log.close()


class FakeParticipant(Process):
    """tcc-fake-participant, scripted and read over its control API."""

    def __init__(self, workdir, name):
        super().__init__([binary("TCC_FAKE_PARTICIPANT_BIN", "tcc-fake-participant")], workdir, name)
        self.http = httpx.Client(base_url=self.url)

    @property
    def try_url(self):
        return f"{self.url}/holds"

    def script(self, verb, *answers):
        response = self.http.post("/_script", json={"verb": verb, "answers": list(answers)})
        assert response.status_code == 204, response.text

    def calls(self, verb=None):
        calls = self.http.get("/_calls").json()
        return [c for c in calls if verb is None or c["verb"] == verb]

    def holds(self):
        return self.http.get("/_holds").json()


@pytest.fixture
def coordinator(tmp_path):
    """The coordinator on an ephemeral log, and a generated client for it."""
    process = Process(
        [
            binary("TCC_COORDINATOR_BIN", "tcc-coordinator"),
            "--ephemeral",
            "--max-retry-interval",
            "500ms",
        ],
        tmp_path,
        "coordinator",
    )
    wait_for(
        "the coordinator is ready",
        lambda: httpx.get(f"{process.url}/health/ready").status_code == 200,
    )
    # No --api-token: a plain client (with tokens: AuthenticatedClient(base_url, token=...)).
    client = Client(base_url=process.url)
    yield client
    process.stop()


@pytest.fixture
def shop(tmp_path):
    """Three fake participants: order, payment, stock."""
    fakes = {name: FakeParticipant(tmp_path, name) for name in ("order", "payment", "stock")}
    yield fakes
    for fake in fakes.values():
        fake.stop()
