"""The hot-swap benchmark, short: predictions keep answering 200 while a model is deployed beside the
serving one and swapped into production (the full run and its figures: intent_service/README.md,
"Hot swap")."""
from __future__ import annotations

import json
import subprocess
import sys

from .authoring_support import REPO_ROOT


def test_no_failed_prediction_during_deploy_and_swap(tmp_path):
    out = tmp_path / "hotswap.json"
    proc = subprocess.run([sys.executable, str(REPO_ROOT / "intent_service" / "bench" / "hotswap.py"),
                           "--ops", "4", "--rate", "50", "--steady", "1.5", "--json", str(out)],
                          cwd=str(REPO_ROOT), capture_output=True, text=True, timeout=600)
    assert out.is_file(), proc.stderr[-3000:]
    fig = json.loads(out.read_text(encoding="utf-8"))
    assert fig["failed"] == 0, fig["errors"]
    assert [o["status"] for o in fig["ops"]] == ["succeeded"] * 4
    assert fig["during_changes"]["n"] > 20 and fig["steady"]["n"] > 100
    assert len(fig["model_versions_served_in_order"]) == 3  # m1, then m2, then m3 in production
    assert fig["models_in_memory_at_end"] <= 2
    # the latency criterion (p99 during changes <= 2 x steady) is measured by the full benchmark on a
    # quiet machine; on a shared CI runner it is reported, not asserted
    print(json.dumps({k: fig[k] for k in ("steady", "during_changes", "p99_ratio")}))
