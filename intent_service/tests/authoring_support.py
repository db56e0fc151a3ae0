"""Helpers for the authoring tests: an Azurite *blob* service (devstack's Azurite launcher starts the
queue service only, so this subclass runs ``azurite-blob`` with the same machinery), authoring
server processes, and small HTTP helpers."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, Optional

import requests

REPO_ROOT = Path(__file__).resolve().parents[2]
RETAIL_PROJECT = REPO_ROOT / "intent_service" / "data" / "retail" / "project.json"
API_VERSION = "2023-04-01"
AUTHORING = "/language/authoring/analyze-conversations"
PREDICT = "/language/:analyze-conversations?api-version=" + API_VERSION
AUTHOR_KEY = "author-key-0123456789"
PREDICT_KEY = "predict-key-0123456789"


def azurite_blob_class():
    """devstack's Azurite blob-service launcher (imported late: devstack is the gateway's tooling)."""
    from devstack.stack import AzuriteBlob

    return AzuriteBlob


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class AuthoringServer:
    """``python -m intent_service serve`` with a project store (authoring enabled)."""

    def __init__(self, store: str = "memory", env: Optional[Dict[str, str]] = None,
                 prediction_key: Optional[str] = PREDICT_KEY, model: Optional[str] = None):
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        cmd = [sys.executable, "-m", "intent_service", "serve", "--host", "127.0.0.1",
               "--port", str(self.port), "--workers", "1"]
        if model:
            cmd += ["--model", model]
        full_env = dict(os.environ, PYTHONUNBUFFERED="1", INTENT_AUTHORING_KEYS=f"admin:{AUTHOR_KEY}",
                        INTENT_JOB_RETRY_AFTER_SECONDS="0.2", INTENT_SYNC_INTERVAL_SECONDS="0.5")
        for k in ("INTENT_API_KEY", "INTENT_MODEL", "INTENT_MODEL_SHA256"):
            full_env.pop(k, None)
        if prediction_key:
            full_env["INTENT_API_KEY"] = prediction_key
        if store.startswith("DefaultEndpointsProtocol") or "BlobEndpoint=" in store:
            full_env["INTENT_STORE_CONNECTION_STRING"] = store
        else:
            full_env["INTENT_STORE"] = store
        full_env.update(env or {})
        self.log_path = Path(os.environ.get("TMPDIR", "/tmp")) / f"intent-authoring-{self.port}.out"
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(cmd, cwd=str(REPO_ROOT), env=full_env, stdout=self._log,
                                     stderr=subprocess.STDOUT)

    def url(self, path: str) -> str:
        return self.base + path

    def wait_ready(self, timeout: float = 30.0) -> "AuthoringServer":
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited: {self.output()}")
            try:
                if requests.get(self.url("/health/ready"), timeout=1).status_code == 200:
                    return self
            except requests.ConnectionError:
                pass
            time.sleep(0.05)
        raise TimeoutError(f"not ready after {timeout}s: {self.output()}")

    def output(self) -> str:
        self._log.flush()
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()  # our own child, by PID
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        self.log_path.unlink(missing_ok=True)


class Authoring:
    """Tiny raw-HTTP client for the authoring API (the SDK test uses Microsoft's SDK instead)."""

    def __init__(self, base: str, key: Optional[str] = AUTHOR_KEY):
        self.base = base
        self.s = requests.Session()
        if key:
            self.s.headers["Ocp-Apim-Subscription-Key"] = key

    def url(self, path: str) -> str:
        sep = "&" if "?" in path else "?"
        return f"{self.base}{AUTHORING}{path}{sep}api-version={API_VERSION}"

    def call(self, method: str, path: str, body=None, **kw) -> requests.Response:
        headers = kw.pop("headers", {})
        if body is not None:
            kw["data"] = json.dumps(body, ensure_ascii=False).encode("utf-8")
            headers.setdefault("Content-Type", "application/json")
        return self.s.request(method, self.url(path), headers=headers, timeout=kw.pop("timeout", 30), **kw)

    def wait(self, resp: requests.Response, timeout: float = 120.0) -> dict:
        """Follow ``operation-location`` until the job is terminal."""
        assert resp.status_code == 202, resp.text
        loc = resp.headers["operation-location"]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            job = self.s.get(loc, timeout=10).json()
            if job["status"] in ("succeeded", "failed", "cancelled", "partiallyCompleted"):
                return job
            time.sleep(0.1)
        raise TimeoutError(f"job not finished: {job}")

    def run(self, method: str, path: str, body=None, **kw) -> dict:
        return self.wait(self.call(method, path, body, **kw))


def predict(base: str, text: str, project: str, deployment: str, key: str = PREDICT_KEY,
            timeout: float = 5.0) -> requests.Response:
    body = {"kind": "Conversation",
            "analysisInput": {"conversationItem": {"id": "1", "participantId": "u", "text": text}},
            "parameters": {"projectName": project, "deploymentName": deployment}}
    return requests.post(base + PREDICT, json=body, timeout=timeout,
                         headers={"Ocp-Apim-Subscription-Key": key} if key else {})


def load_retail_project() -> dict:
    return json.loads(RETAIL_PROJECT.read_text(encoding="utf-8"))


class WebhookReceiver:
    """A local webhook endpoint that records every delivery; ``fail_first`` deliveries answer 500."""

    def __init__(self, fail_first: int = 0):
        import http.server
        import threading

        self.requests = []
        self.fail_first = fail_first
        self.attempts = 0
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                receiver.attempts += 1
                if receiver.attempts <= receiver.fail_first:
                    self.send_response(500)
                    self.end_headers()
                    return
                receiver.requests.append((dict(self.headers), body))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/events"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def events(self):
        return [json.loads(body) for _, body in self.requests]

    def wait_for(self, predicate, timeout: float = 20.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = [e for e in self.events() if predicate(e)]
            if found:
                return found
            time.sleep(0.05)
        raise TimeoutError(f"no matching event; got {[e['type'] for e in self.events()]}")

    def stop(self):
        self.server.shutdown()
        self.server.server_close()
