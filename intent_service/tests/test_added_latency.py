"""INTENT_ADDED_LATENCY_MS / serve --added-latency-ms: a slow model for benchmarks, without blocking the loop."""
from __future__ import annotations

import concurrent.futures
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

REPO_ROOT = Path(__file__).resolve().parents[2]
API = "/language/:analyze-conversations?api-version=2023-04-01"
BODY = {"kind": "Conversation",
        "analysisInput": {"conversationItem": {"id": "1", "participantId": "u", "text": "where is my order"}},
        "parameters": {"projectName": "retail-bot", "deploymentName": "production"}}


def test_parse_added_latency_ms():
    from intent_service.app import parse_added_latency_ms

    assert parse_added_latency_ms(None) == 0 and parse_added_latency_ms("") == 0
    assert parse_added_latency_ms("300") == 300 and parse_added_latency_ms(2.5) == 2.5
    for bad in ("-1", "abc", "nan", "inf"):
        with pytest.raises(ValueError):
            parse_added_latency_ms(bad)


def test_env_var_reaches_the_app(monkeypatch):
    from intent_service.app import create_app_from_env

    monkeypatch.setenv("INTENT_ADDED_LATENCY_MS", "250")
    monkeypatch.delenv("INTENT_MODEL", raising=False)
    assert create_app_from_env().state.added_latency_ms == 250


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_serve_delays_predictions_without_blocking(retail_model_path, tmp_path):
    delay_s = 0.4
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    log = open(tmp_path / "serve.log", "wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "intent_service", "serve", "--model", str(retail_model_path), "--host", "127.0.0.1",
         "--port", str(port), "--added-latency-ms", str(delay_s * 1000)],
        cwd=REPO_ROOT, env=dict(os.environ, PYTHONUNBUFFERED="1"), stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 20
        while True:
            assert proc.poll() is None, (tmp_path / "serve.log").read_text()
            try:
                if requests.get(base + "/health/ready", timeout=1).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            assert time.monotonic() < deadline, "not ready"
            time.sleep(0.05)
        t0 = time.perf_counter()
        resp = requests.post(base + API, json=BODY, timeout=5)
        single = time.perf_counter() - t0
        assert resp.status_code == 200 and resp.json()["result"]["prediction"]["topIntent"]
        assert single >= delay_s

        # 8 predictions at once finish in about one delay (asyncio.sleep), not eight;
        # a health check during them answers at once.
        with concurrent.futures.ThreadPoolExecutor(9) as pool:
            t0 = time.perf_counter()
            futs = [pool.submit(requests.post, base + API, json=BODY, timeout=10) for _ in range(8)]
            time.sleep(0.05)
            h0 = time.perf_counter()
            assert requests.get(base + "/health/live", timeout=2).status_code == 200
            health = time.perf_counter() - h0
            assert all(f.result().status_code == 200 for f in futs)
            together = time.perf_counter() - t0
        assert health < delay_s / 2
        assert delay_s <= together < 2 * delay_s
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
