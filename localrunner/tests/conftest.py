"""Fixtures for localrunner tests: an Azurite queue service and sample-app copies."""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import uuid

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
SAMPLE_APP = os.path.join(HERE, "sample_app")
REPO_ROOT = os.path.dirname(os.path.dirname(HERE))
if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)

# Azurite's well-known development account (the same key the SDK uses for
# UseDevelopmentStorage=true).
DEV_ACCOUNT_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="


def _find_azurite_queue():
    cands = [os.environ.get("AZURITE_QUEUE_BIN"),
             os.path.join(REPO_ROOT, "devstack", "node_modules", ".bin", "azurite-queue"),
             shutil.which("azurite-queue")]
    for c in cands:
        if c and os.path.isfile(c) and os.access(c, os.X_OK):
            return c
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def connection_string(port: int) -> str:
    return ("DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;"
            f"AccountKey={DEV_ACCOUNT_KEY};QueueEndpoint=http://127.0.0.1:{port}/devstoreaccount1;")


@pytest.fixture(scope="session")
def azurite(tmp_path_factory):
    """Start azurite-queue in memory on a free port; yields the connection string."""
    exe = _find_azurite_queue()
    if exe is None:
        pytest.skip("azurite-queue not found: set AZURITE_QUEUE_BIN, or npm install azurite in "
                    "devstack/ (devstack/node_modules/.bin/azurite-queue), or put azurite-queue on PATH")
    port = _free_port()
    workdir = tmp_path_factory.mktemp("azurite")
    args = [exe, "--skipApiVersionCheck", "--queueHost", "127.0.0.1", "--queuePort", str(port),
            "--inMemoryPersistence", "--silent"]
    try:
        help_text = subprocess.run([exe, "--help"], capture_output=True, text=True, timeout=20).stdout
    except Exception:
        help_text = ""
    if "--disableTelemetry" in help_text:
        args.append("--disableTelemetry")
    log = open(workdir / "azurite.log", "wb")
    proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, cwd=str(workdir))
    deadline = time.monotonic() + 20
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                pytest.fail(f"azurite-queue did not start; see {workdir / 'azurite.log'}")
            time.sleep(0.1)
    yield connection_string(port)
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
    log.close()


def unique_queues(tag: str = "") -> dict:
    """Per-test queue names for the sample app's %SETTING% expressions."""
    s = uuid.uuid4().hex[:8]
    t = f"{tag}-" if tag else ""
    return {
        "Q_HTTP_OUT": f"t{s}-{t}http-out",
        "Q_CHAIN_A": f"t{s}-{t}chain-a",
        "Q_CHAIN_B": f"t{s}-{t}chain-b",
        "Q_AUDIT": f"t{s}-{t}audit",
        "Q_FLAKY": f"t{s}-{t}flaky",
        "Q_POISON_SRC": f"t{s}-{t}always-fails",
        "Q_SLOW": f"t{s}-{t}slow",
        "Q_RET_IN": f"t{s}-{t}ret-in",
        "Q_RET_OUT": f"t{s}-{t}ret-out",
        "Q_RELAY_IN": f"t{s}-{t}relay-in",
        "Q_RELAY_OUT": f"t{s}-{t}relay-out",
    }


@pytest.fixture
def app_copy(tmp_path):
    """Copy the sample app to a temp dir; optionally patch host.json's queues/top-level keys."""

    def make(queues=None, top=None, http=None, raw_host=None):
        dst = tmp_path / f"app-{uuid.uuid4().hex[:6]}"
        shutil.copytree(SAMPLE_APP, dst, ignore=shutil.ignore_patterns("__pycache__"))
        host = json.loads((dst / "host.json").read_text())
        if raw_host is not None:
            host = raw_host
        else:
            host["extensions"]["queues"].update(queues or {})
            host["extensions"]["http"].update(http or {})
            host.update(top or {})
        (dst / "host.json").write_text(json.dumps(host))
        return str(dst)

    return make


def wait_for(predicate, timeout: float = 10.0, interval: float = 0.05, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


@pytest.fixture(scope="session")
def helpers():
    class H:
        wait_for = staticmethod(wait_for)
        unique_queues = staticmethod(unique_queues)
        SAMPLE_APP = globals()["SAMPLE_APP"]
    return H
