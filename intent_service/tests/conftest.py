"""Fixtures: a small trained retail model and real uvicorn server processes."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

REPO_ROOT = Path(__file__).resolve().parents[2]
RETAIL_DATA = REPO_ROOT / "intent_service" / "data" / "retail"
API = "/language/:analyze-conversations?api-version=2023-04-01"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, model: str, key: str | None = None, extra_env: dict | None = None):
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        cmd = [sys.executable, "-m", "intent_service", "serve", "--model", model,
               "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1"]
        if key:
            cmd += ["--key", key]
        env = dict(os.environ, PYTHONUNBUFFERED="1", **(extra_env or {}))
        env.pop("INTENT_API_KEY", None)
        self.log_path = Path(os.environ.get("TMPDIR", "/tmp")) / f"intent-test-{self.port}.out"
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(cmd, cwd=str(REPO_ROOT), env=env, stdout=self._log,
                                     stderr=subprocess.STDOUT)

    def url(self, path: str) -> str:
        return self.base + path

    def wait_live(self, timeout: float = 15.0) -> None:
        self._wait("/health/live", timeout)

    def wait_ready(self, timeout: float = 20.0) -> None:
        self._wait("/health/ready", timeout)

    def _wait(self, path: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited: {self.output()}")
            try:
                if requests.get(self.url(path), timeout=1).status_code == 200:
                    return
            except requests.ConnectionError:
                pass
            time.sleep(0.05)
        raise TimeoutError(f"{path} not 200 after {timeout}s: {self.output()}")

    def output(self) -> str:
        self._log.flush()
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()  # our own child, by PID
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        self.log_path.unlink(missing_ok=True)


@pytest.fixture(scope="session")
def retail_model_path(tmp_path_factory) -> Path:
    """The retail model, trained from the committed data into a temporary file."""
    from intent_service.data import load_dataset
    from intent_service.training import train_model

    out = tmp_path_factory.mktemp("model") / "retail.skops"
    model = train_model(load_dataset(RETAIL_DATA), name="retail-test", oos_recall_target=0.9)
    model.save(str(out))
    return out


@pytest.fixture(scope="session")
def retail_model(retail_model_path):
    from intent_service.model import load_model

    return load_model(str(retail_model_path))


@pytest.fixture(scope="session")
def server(retail_model_path):
    """A real uvicorn process serving the retail model with a key configured."""
    srv = Server(str(retail_model_path), key="test-key-123")
    try:
        srv.wait_ready()
        yield srv
    finally:
        srv.stop()


@pytest.fixture
def start_server():
    started = []

    def _start(model: str, key: str | None = None, extra_env: dict | None = None) -> Server:
        srv = Server(model, key, extra_env=extra_env)
        started.append(srv)
        return srv

    yield _start
    for srv in started:
        srv.stop()


def clu_request(text, string_index_type=None, **extra):
    body = {"kind": "Conversation",
            "analysisInput": {"conversationItem": {"id": "1", "participantId": "user-1",
                                                   "text": text}},
            "parameters": {"projectName": "retail-bot", "deploymentName": "production"}}
    if string_index_type:
        body["parameters"]["stringIndexType"] = string_index_type
    body.update(extra)
    return body


@pytest.fixture(scope="session")
def clu():
    """Builds a CLU request body (tests import nothing from conftest directly)."""
    return clu_request


@pytest.fixture(scope="session")
def api_path():
    return API
