"""Smoke test of the benchmark tool: both modes at a tiny rate through the real local stack (~10 s)."""
import json

import pytest

from bench import run


@pytest.mark.stack
def test_smoke_both_modes(tmp_path, monkeypatch):
    monkeypatch.setattr(run, "RESULTS", tmp_path)
    assert run.main(["--smoke", "--name", "smoke-test", "--log-dir", str(tmp_path / "logs")]) == 0
    data = json.loads((tmp_path / "smoke-test.json").read_text())
    assert {r["mode"] for r in data["runs"]} == {"chain", "monolith"}
    for r in data["runs"]:
        assert r["accepted"] == r["webhooks"] > 0
        assert r["lost"] == 0 and r["duplicate_replies_visible"] == 0
        assert r["replies"] == r["accepted"] and r["throughput_msgs_s"] > 0
        for key in ("intake_ms", "e2e_ms", "gateway_overhead_ms"):
            assert r[key]["p50"] is not None and r[key]["p99"] >= r[key]["p50"]
        assert r["runner_peak_rss_mb"] > 0 and r["cpu_s"]["runner"] > 0
    chain = next(r for r in data["runs"] if r["mode"] == "chain")
    assert {"chat-inbound", "chat-reply"} <= chain["queue_wait_ms"].keys()


def test_percentiles():
    from bench.harness import pct, summary

    v = list(range(1, 101))
    assert (pct(v, 50), pct(v, 99), pct([], 50)) == (50, 99, None)
    assert summary([3.0])["p99"] == 3.0
