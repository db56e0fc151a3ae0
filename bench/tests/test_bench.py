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


def test_profile_is_split_into_host_and_worker_processes(tmp_path):
    from bench.run import top_functions

    raw = tmp_path / "profile.txt"
    host = 'process 10:"python -m localrunner"'
    worker = 'process 11:"python -c spawn_main"'
    raw.write_text(
        f"{host};_poll_loop (localrunner/queues.py:200);_receive (localrunner/queues.py:187) 3\n"
        f"{host};run_wsgi (werkzeug/serving.py:374) 1\n"
        f"{host};{worker};run_stage (functions/common.py:27);read_item (cosmos/container.py:305) 6\n"
        f"{host};{worker};run_stage (functions/common.py:27) 2\n"
        "not a stack line\n"
    )
    prof = top_functions(raw)
    assert prof["host"]["samples"] == 4 and prof["worker"]["samples"] == 8
    assert prof["host"]["self_pct"][0] == ["_receive (localrunner/queues.py:187)", 75.0]
    assert prof["worker"]["inclusive_pct"][0] == ["run_stage (functions/common.py:27)", 100.0]
    assert dict(prof["worker"]["self_pct"])["read_item (cosmos/container.py:305)"] == 75.0
    # process frames are not functions
    assert not any(k.startswith("process ") for k, _ in prof["worker"]["inclusive_pct"] + prof["host"]["inclusive_pct"])
