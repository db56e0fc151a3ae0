"""PNG plots of a results file: latency percentiles vs offered load, chain vs monolith, one panel per intent latency.

    python -m bench.plots bench/results/results.json     # re-draw without re-running
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

COLORS = {"chain": "tab:blue", "monolith": "tab:red"}
METRICS = {
    "intake": ("intake_ms", "webhook answer (intake) latency"),
    "e2e": ("e2e_ms", "end-to-end latency (webhook sent -> reply at SendBird)"),
    "overhead": ("gateway_overhead_ms", "gateway overhead (end-to-end minus intent service and SendBird)"),
}


def plot_metric(data: dict, key: str, title: str, out: Path) -> Path:
    runs = data["runs"]
    latencies = sorted({r["intent_latency_ms"] for r in runs})
    fig, axes = plt.subplots(1, len(latencies), figsize=(4.2 * len(latencies), 3.6), squeeze=False, sharey=True)
    for ax, lat in zip(axes[0], latencies, strict=True):
        for mode in ("chain", "monolith"):
            rs = sorted((r for r in runs if r["mode"] == mode and r["intent_latency_ms"] == lat),
                        key=lambda r: r["rate"])
            if not rs:
                continue
            x = [r["rate"] for r in rs]
            for q, style in (("p50", "-o"), ("p99", "--^")):
                y = [r[key][q] if r[key][q] is not None else float("nan") for r in rs]
                ax.plot(x, y, style, color=COLORS[mode], label=f"{mode} {q}", markersize=4)
        if key == "intake_ms":
            ax.axhline(5000, color="gray", lw=0.8, ls=":")
            ax.text(ax.get_xlim()[0], 5000, " SendBird 5 s timeout", fontsize=7, va="bottom", color="gray")
        ax.set_yscale("log")
        ax.set_title(f"intent service +{lat:.0f} ms", fontsize=9)
        ax.set_xlabel("offered load (webhooks/s)", fontsize=8)
        ax.grid(True, which="both", alpha=0.3)
        ax.tick_params(labelsize=7)
    axes[0][0].set_ylabel("ms (log scale)", fontsize=8)
    axes[0][-1].legend(fontsize=7, loc="best")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(out, dpi=80)
    plt.close(fig)
    return out


def plot_all(data: dict, out_dir: Path, stem: str) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    return [plot_metric(data, key, title, out_dir / f"{stem}-{name}.png") for name, (key, title) in METRICS.items()]




def markdown_table(data: dict) -> str:
    """The README table of a results file."""
    def three(s: dict) -> str:
        return " / ".join("-" if s.get(k) is None else f"{s[k]:.0f}" for k in ("p50", "p95", "p99"))

    rows = ["| mode | intent +ms | offered/s | replies/s | intake p50 / p95 / p99 ms | end-to-end p50 / p95 / p99 ms "
            "| gateway overhead p50 / p95 / p99 ms | >5 s (re-sent) | lost | dup | runner CPU % | runner CPU ms/msg "
            "| runner peak RSS MB |", "|" + "---|" * 13]
    for r in data["runs"]:
        rows.append(f"| {r['mode']} | {r['intent_latency_ms']:.0f} | {r['rate']:.0f} | {r['throughput_msgs_s']:.1f} "
                    f"| {three(r['intake_ms'])} | {three(r['e2e_ms'])} | {three(r['gateway_overhead_ms'])} "
                    f"| {r['webhooks_over_5s']} | {r['lost']} | {r['duplicate_replies_visible']} "
                    f"| {r['runner_cpu_pct']:.0f} | {r['runner_cpu_ms_per_msg'] or 0:.1f} | {r['runner_peak_rss_mb']:.0f} |")
    return "\n".join(rows)


if __name__ == "__main__":
    path = Path(sys.argv[1])
    for p in plot_all(json.loads(path.read_text()), path.parent, path.stem):
        print(f"wrote {p}")
    print(markdown_table(json.loads(path.read_text())))
