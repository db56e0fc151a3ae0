"""Benchmark: the queue chain vs the monolith (every stage inline in the webhook request), on the local stack.

    python -m bench.run                      # the README figures (both modes, intent +0/+300/+2000 ms), < 10 min
    python -m bench.run --mode chain --rates 5,20,50 --duration 20 --users 50 --intent-latency-ms 0,300
    python -m bench.run --smoke              # a few seconds: tiny rate, both modes, checks figures exist, lost == 0
    python -m bench.run --mode chain --rates 50,100,150 --intent-latency-ms 0 --profile   # ceiling + py-spy

For each intent-service latency it starts Azurite, the Cosmos DB stand-in, the SendBird stand-in and the
intent service (``INTENT_ADDED_LATENCY_MS``) on free loopback ports; for each mode a functions runner
(``localrunner``) hosting the chain (``function_app.py``) or ``bench/monolith_app``; for each rate one run.
Prints a table; writes ``bench/results/<name>.json`` (all figures) and PNG plots.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

from bench import harness

RESULTS = Path(__file__).resolve().parent / "results"
#: Intent latencies at or above this many ms run only the rates in --slow-rates (a 2 s model cannot keep up
#: with 50 msg/s in either mode; its backlog would take minutes to drain).
SLOW_MS = 1000


def _floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x.strip()]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n")[0])
    p.add_argument("--mode", choices=["chain", "monolith", "both"], default="both")
    p.add_argument("--rates", type=_floats, default=[5, 20, 50], help="offered webhooks/s, comma-separated")
    p.add_argument("--slow-rates", type=_floats, default=[5, 20],
                   help=f"rates used when the intent latency is >= {SLOW_MS} ms (default 5,20)")
    p.add_argument("--duration", type=float, default=10, help="seconds of load per run (default 10)")
    p.add_argument("--users", type=int, default=50,
                   help="simulated users = sender threads = max webhooks in flight (default 50)")
    p.add_argument("--intent-latency-ms", type=_floats, default=[0, 300, 2000],
                   help="added intent-service latency per prediction, comma-separated (default 0,300,2000)")
    p.add_argument("--webhook-retries", type=int, default=3,
                   help="re-sends of a webhook not answered within 5 s, as SendBird does (default 3)")
    p.add_argument("--name", default=None, help="results file stem (default: 'results', or 'smoke')")
    p.add_argument("--no-plots", action="store_true")
    p.add_argument("--profile", action="store_true",
                   help="py-spy the chain runner and its worker processes during each chain run (Python CPU: samples of the "
                        "thread holding the GIL); top functions per process group go into the JSON")
    p.add_argument("--smoke", action="store_true", help="quick check: 2 msg/s for 2 s, both modes, intent +0 ms")
    p.add_argument("--workers", type=int, default=None,
                   help="FUNCTIONS_WORKER_PROCESS_COUNT of each runner (default: unset, the worker runs in the "
                        "runner's process)")
    p.add_argument("--instances", type=int, default=1,
                   help="runner instances on the same queues and state (chain only; webhooks spread over them)")
    p.add_argument("--env", action="append", default=[], metavar="NAME=VALUE",
                   help="app setting for the runners, repeatable (e.g. AzureFunctionsJobHost__extensions__queues__"
                        "batchSize=32)")
    p.add_argument("--cache", action="store_true",
                   help="prediction cache on: a redis-server in the stack and INTENT_CACHE_URL for the runners")
    p.add_argument("--freeze-cache", action="store_true",
                   help="with --cache: redis-server stopped (SIGSTOP) during each measured run, a hung cache that "
                        "accepts connections and answers nothing")
    p.add_argument("--log-dir", default=None)
    a = p.parse_args(argv)
    if any("=" not in e for e in a.env):
        p.error("--env takes NAME=VALUE")
    a.cache = a.cache or a.freeze_cache
    if a.smoke:
        a.rates, a.slow_rates, a.duration, a.users, a.intent_latency_ms = [2], [2], 2, 4, [0]
        a.name = a.name or "smoke"
        a.no_plots = True
    a.name = a.name or "results"
    return a


def threading_is_main() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def _profile_start(pid: int, out: Path, duration: float) -> subprocess.Popen | None:
    exe = Path(sys.executable).parent / "py-spy"
    if not exe.exists():
        return None
    return subprocess.Popen([str(exe), "record", "-p", str(pid), "-d", str(int(duration)), "-r", "50",
                             "-f", "raw", "-o", str(out), "--nonblocking", "--subprocesses", "--gil"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def top_functions(raw: Path, n: int = 15) -> dict:
    """From py-spy's collapsed stacks (``--subprocesses --gil``: samples of the thread holding the GIL, i.e. Python
    CPU, in the runner and in each worker process): per process (``host`` = the runner's own process, ``worker``
    = the worker processes together), the functions with most samples, inclusive and self, as % of that process
    group's samples."""
    samples: dict[str, int] = {}
    self_: dict[str, dict[str, int]] = {}
    inclusive: dict[str, dict[str, int]] = {}
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        c = int(count)
        frames = stack.split(";")
        procs = [i for i, f in enumerate(frames) if f.startswith("process ")]
        group = "worker" if len(procs) > 1 else "host"  # a worker's stack starts with the runner's process
        frames = frames[procs[-1] + 1:] if procs else frames
        frames = frames or ["?"]
        samples[group] = samples.get(group, 0) + c
        own, incl = self_.setdefault(group, {}), inclusive.setdefault(group, {})
        own[frames[-1]] = own.get(frames[-1], 0) + c
        for f in set(frames):
            incl[f] = incl.get(f, 0) + c

    def top(d: dict[str, int], total: int) -> list[list]:
        return [[k, round(100 * v / max(1, total), 1)] for k, v in sorted(d.items(), key=lambda kv: -kv[1])[:n]]

    out: dict = {"sampled": "the thread holding the GIL (Python CPU), 50 Hz"}
    for group, total in sorted(samples.items()):
        out[group] = {"samples": total, "self_pct": top(self_[group], total),
                      "inclusive_pct": top(inclusive[group], total)}
    return out


def run(a: argparse.Namespace) -> dict:
    modes = ["chain", "monolith"] if a.mode == "both" else [a.mode]
    results: list[dict] = []
    t_all = time.monotonic()
    for latency in a.intent_latency_ms:
        rates = a.slow_rates if latency >= SLOW_MS else a.rates
        stack = harness.infra_stack(latency, a.log_dir, cache=a.cache)
        with stack:
            texts = harness.usable_utterances(stack["intent"].base_url)
            env = dict(e.split("=", 1) for e in a.env)
            for mode in modes:
                n = a.instances if mode == "chain" else 1
                runners = [harness.runner_for(stack, mode, a.log_dir, workers=a.workers, env=env) for _ in range(n)]
                with contextlib.ExitStack() as running:
                    for r in runners:
                        running.enter_context(r)
                    runner = runners[0]
                    # warm-up: clients, connections, Cosmos database/container, first imports
                    harness.run_once(stack, runners, mode=mode, intent_latency_ms=latency, rate=5, duration=1,
                                     users=5, texts=texts, tag=f"warm{mode}{int(latency)}", drain_timeout=20)
                    for rate in rates:
                        tag = f"{mode[0]}{int(latency)}r{int(rate)}t{int(time.time()) % 100000}"
                        if a.cache:
                            harness.flush_cache(stack)
                        prof = None
                        if a.profile and mode == "chain":
                            raw = RESULTS / f"profile-{mode}-{int(latency)}ms-{int(rate)}rps.txt"
                            prof = _profile_start(runner.pid, raw, a.duration + 2)
                        with harness.frozen_cache(stack, a.freeze_cache):
                            fig = harness.run_once(stack, runners, mode=mode, intent_latency_ms=latency, rate=rate,
                                                   duration=a.duration, users=a.users, texts=texts, tag=tag,
                                                   webhook_retries=a.webhook_retries)
                        if prof is not None:
                            try:
                                prof.wait(30)
                            except subprocess.TimeoutExpired:
                                prof.terminate()
                            if raw.exists():
                                fig["profile"] = {"raw_file": raw.name, **top_functions(raw)}
                        results.append(fig)
                        fig["cache"] = "frozen" if a.freeze_cache else a.cache
                        print(_row(fig) + _cache_note(fig), flush=True)
    return {"meta": {"created": time.strftime("%Y-%m-%d %H:%M:%S"), "machine": platform.platform(),
                     "cpus": __import__("os").cpu_count(), "python": platform.python_version(),
                     "args": {k: v for k, v in vars(a).items()},
                     "total_s": round(time.monotonic() - t_all, 1)},
            "runs": results}


HEADER = (f"{'mode':8} {'i x w':>5} {'intent':>6} {'rate':>5} {'thru':>6} | {'intake p50/p95/p99 ms':>23} | "
          f"{'e2e p50/p95/p99 ms':>21} | {'overhead p50/p99':>16} | {'>5s':>4} {'lost':>4} {'dup':>4} | "
          f"{'cpu%':>5} {'ms/msg':>6} {'host':>5} {'wrk':>5} {'rss MB':>6} | {'db ops/wr/B wr':>15}")


def _row(f: dict) -> str:
    def three(s: dict) -> str:
        return "/".join("-" if s.get(k) is None else f"{s[k]:.0f}" for k in ("p50", "p95", "p99"))

    ov = f["gateway_overhead_ms"]
    shape = f"{f.get('instances', 1)}x{f.get('worker_processes') or '-'}"
    return (f"{f['mode']:8} {shape:>5} {f['intent_latency_ms']:>6.0f} {f['rate']:>5.0f} "
            f"{f['throughput_msgs_s']:>6.1f} | "
            f"{three(f['intake_ms']):>23} | {three(f['e2e_ms']):>21} | "
            f"{('-' if ov['p50'] is None else f'{ov[chr(112)+chr(53)+chr(48)]:.0f}/{ov[chr(112)+chr(57)+chr(57)]:.0f}'):>16} | "
            f"{f['webhooks_over_5s']:>4} {f['lost']:>4} {f['duplicate_replies_visible']:>4} | "
            f"{f['runner_cpu_pct']:>5.0f} {f['runner_cpu_ms_per_msg'] or 0:>6.1f} "
            f"{f.get('host_cpu_ms_per_msg') or 0:>5.1f} {f.get('worker_cpu_ms_per_msg') or 0:>5.1f} "
            f"{f['runner_peak_rss_mb']:>6.0f} | {_cosmos(f):>15}")


def _cosmos(f: dict) -> str:
    """Cosmos DB operations / writes / bytes written per reply on the user-state container (counted at the client)."""
    c = (f.get("cosmos") or {}).get("user_state") or {}
    return f"{c.get('operations', 0):.2f}/{c.get('writes', 0):.2f}/{c.get('written_bytes', 0):.0f}" if c else "-"


def _cache_note(f: dict) -> str:
    """`` | cache hit x% saved y%`` when the run looked utterances up in the prediction cache, else empty."""
    c = f.get("prediction_cache") or {}
    if not c.get("lookups"):
        return ""
    return f" | cache hit {100 * c['hit_rate']:.0f}% saved {100 * c['intent_calls_saved']:.0f}% of intent calls"


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    import signal

    # SIGTERM -> SystemExit, so the ``with`` blocks stop every service this run started
    if threading_is_main():
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    RESULTS.mkdir(parents=True, exist_ok=True)
    print(HEADER, flush=True)
    data = run(a)
    out = RESULTS / f"{a.name}.json"
    out.write_text(json.dumps(data, indent=1, ensure_ascii=False), encoding="utf-8")
    print(f"\n{HEADER}")
    for f in data["runs"]:
        print(_row(f) + _cache_note(f))
    print(f"\nthru = replies/s sustained; >5s = webhooks SendBird would have re-sent; dup = visible duplicate replies; "
          f"cpu% = runner CPU (100 = one core); ms/msg = runner CPU per reply (host + worker processes), host / "
          f"wrk = the host's and the worker processes' part\ndb ops/wr/B wr = Cosmos DB operations / writes / bytes written per "
          f"reply on the user-state container, counted at the client\ni x w = instances x worker processes (- = in the "
          f"runner's process)\nwrote {out} "
          f"({data['meta']['total_s']} s)")
    if not a.no_plots:
        from bench import plots

        for p in plots.plot_all(data, RESULTS, a.name):
            print(f"wrote {p}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
