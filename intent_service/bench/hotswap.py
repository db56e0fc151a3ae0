"""Hot-swap benchmark: predictions keep flowing while models are deployed and swapped.

Starts the intent service with a project store (in memory), imports the retail project, trains
``--models`` models, deploys the first to ``production`` and then, while client threads send
predictions to ``production`` at a fixed rate, runs ``--ops`` deployment changes, alternating
"deploy the next model to staging" (a model load beside the serving ones) and "swap staging with
production" (through the promotion gate). It reports failed requests (any non-200 or transport error)
and latency percentiles for requests sent during a change (from the authoring call until the job
succeeded, plus ``--settle`` seconds) and for the steady periods in between.

    python intent_service/bench/hotswap.py [--rate 100] [--ops 10] [--json out.json]

Pass criteria (issue 11): 0 failed requests; p99 during changes <= 2 x steady p99.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from pathlib import Path

import requests

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from intent_service.tests.authoring_support import (PREDICT_KEY, Authoring,  # noqa: E402
                                                    AuthoringServer, load_retail_project)

TEXTS = ["where is my order 20261119-0042?", "배송이 언제 도착하는지 알려줘", "do you have leather boots in size 260",
         "상담원이랑 통화하고 싶어요", "thank you, bye", "안녕하세요", "what is the weather on mars", "검정 운동화 있어요?"]


def pct(values, q):
    if not values:
        return float("nan")
    v = sorted(values)
    return v[min(len(v) - 1, int(round(q / 100 * (len(v) - 1))))]


class Load:
    """Open-loop load: requests are scheduled at a fixed rate and spread over worker threads; each
    worker keeps its own connection (a gateway's connection pool)."""

    def __init__(self, base: str, rate: float, workers: int):
        self.base, self.rate, self.workers = base, rate, workers
        self.samples = []  # (t_sent, latency_s, ok, version)
        self.errors = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = []
        self._t0 = None

    def _worker(self, k: int):
        s = requests.Session()
        s.headers.update({"Ocp-Apim-Subscription-Key": PREDICT_KEY})
        url = self.base + "/language/:analyze-conversations?api-version=2023-04-01"
        interval = self.workers / self.rate
        n = 0
        next_t = self._t0 + k * interval / self.workers
        while not self._stop.is_set():
            now = time.perf_counter()
            if now < next_t:
                time.sleep(next_t - now)
            text = TEXTS[(n + k) % len(TEXTS)]
            body = {"kind": "Conversation",
                    "analysisInput": {"conversationItem": {"id": str(n), "participantId": "bench", "text": text}},
                    "parameters": {"projectName": "retail-bot", "deploymentName": "production"}}
            t = time.perf_counter()
            ok, version = False, None
            try:
                r = s.post(url, json=body, timeout=10)
                ok = r.status_code == 200
                version = r.headers.get("x-model-version")
                if not ok:
                    self.errors.append((t, r.status_code, r.text[:200]))
            except requests.RequestException as exc:
                self.errors.append((t, type(exc).__name__, str(exc)[:200]))
            lat = time.perf_counter() - t
            with self._lock:
                self.samples.append((t, lat, ok, version))
            n += 1
            next_t += interval
            if next_t < time.perf_counter() - 1.0:  # far behind: do not burst
                next_t = time.perf_counter()

    def start(self):
        self._t0 = time.perf_counter()
        for k in range(self.workers):
            th = threading.Thread(target=self._worker, args=(k,), daemon=True)
            th.start()
            self._threads.append(th)

    def stop(self):
        self._stop.set()
        for th in self._threads:
            th.join(timeout=15)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rate", type=float, default=100.0, help="predictions per second (default 100)")
    ap.add_argument("--workers", type=int, default=4, help="client threads/connections (default 4)")
    ap.add_argument("--ops", type=int, default=10, help="deploys + swaps during the load (default 10)")
    ap.add_argument("--steady", type=float, default=3.0, help="seconds of steady load between changes")
    ap.add_argument("--settle", type=float, default=0.5, help="seconds after a job succeeded still counted")
    ap.add_argument("--json", help="write the figures here")
    args = ap.parse_args(argv)

    n_models = args.ops // 2 + 1
    srv = AuthoringServer(env={"INTENT_SYNC_INTERVAL_SECONDS": "1", "INTENT_JOB_RETRY_AFTER_SECONDS": "0.2"})
    try:
        srv.wait_ready(60)
        a = Authoring(srv.base)
        t0 = time.perf_counter()
        job = a.run("POST", "/projects/retail-bot/:import", load_retail_project())
        assert job["status"] == "succeeded", job
        for i in range(1, n_models + 1):
            job = a.run("POST", "/projects/retail-bot/:train",
                        {"modelLabel": f"m{i}", "trainingMode": "standard", "evaluationOptions": {"kind": "manual"}})
            assert job["status"] == "succeeded", job
        print(f"trained {n_models} models in {time.perf_counter() - t0:.1f}s", file=sys.stderr)
        job = a.run("PUT", "/projects/retail-bot/deployments/production", {"trainedModelLabel": "m1"})
        assert job["status"] == "succeeded", job

        load = Load(srv.base, args.rate, args.workers)
        load.start()
        time.sleep(args.steady * 2)
        windows = []
        ops = []
        next_model = 2
        for k in range(args.ops):
            if k % 2 == 0:
                what = f"deploy m{next_model} -> staging"
                call = ("PUT", "/projects/retail-bot/deployments/staging", {"trainedModelLabel": f"m{next_model}"})
                next_model += 1
            else:
                what = "swap staging <-> production"
                call = ("POST", "/projects/retail-bot/deployments/:swap",
                        {"firstDeploymentName": "staging", "secondDeploymentName": "production"})
            start = time.perf_counter()
            job = a.run(*call)
            end = time.perf_counter()
            ok = job["status"] == "succeeded"
            ops.append({"op": what, "status": job["status"], "seconds": round(end - start, 3),
                        "errors": job.get("errors")})
            windows.append((start, end + args.settle))
            print(f"{what}: {job['status']} in {end - start:.2f}s", file=sys.stderr)
            if not ok:
                break
            time.sleep(args.steady)
        time.sleep(args.steady)
        load.stop()
        info = requests.get(srv.url("/model"), timeout=5).json()
    finally:
        srv.stop()

    def in_window(t):
        return any(s <= t <= e for s, e in windows)

    def in_kind(t, kind):
        return any(s <= t <= e for (s, e), o in zip(windows, ops, strict=False) if o["op"].startswith(kind))

    deploys = [lat * 1000 for t, lat, ok, _ in load.samples if in_kind(t, "deploy")]
    swaps = [lat * 1000 for t, lat, ok, _ in load.samples if in_kind(t, "swap")]
    during = [lat * 1000 for t, lat, ok, _ in load.samples if in_window(t)]
    steady = [lat * 1000 for t, lat, ok, _ in load.samples if not in_window(t)]
    failed = sum(1 for s in load.samples if not s[2])
    versions = []
    for _, _, _, v in sorted(load.samples):
        if v and (not versions or versions[-1] != v):
            versions.append(v)
    fig = {
        "requests": len(load.samples), "failed": failed, "rate_per_s": args.rate, "workers": args.workers,
        "ops": ops, "model_versions_served_in_order": versions,
        "steady": {"n": len(steady), "p50_ms": round(pct(steady, 50), 2), "p99_ms": round(pct(steady, 99), 2),
                   "max_ms": round(max(steady), 2) if steady else None},
        "during_changes": {"n": len(during), "p50_ms": round(pct(during, 50), 2),
                           "p99_ms": round(pct(during, 99), 2), "max_ms": round(max(during), 2) if during else None},
        "during_deploys": {"n": len(deploys), "p50_ms": round(pct(deploys, 50), 2), "p99_ms": round(pct(deploys, 99), 2)},
        "during_swaps": {"n": len(swaps), "p50_ms": round(pct(swaps, 50), 2), "p99_ms": round(pct(swaps, 99), 2)},
        "models_in_memory_at_end": info.get("modelsInMemory"),
        "load_average": os.getloadavg(),
        "errors": [list(map(str, e)) for e in load.errors[:10]],
    }
    ratio = fig["during_changes"]["p99_ms"] / fig["steady"]["p99_ms"] if steady and during else float("nan")
    fig["p99_ratio"] = round(ratio, 2)
    fig["pass"] = failed == 0 and ratio <= 2.0 and all(o["status"] == "succeeded" for o in ops)
    print(json.dumps(fig, indent=1, ensure_ascii=False))
    if args.json:
        Path(args.json).write_text(json.dumps(fig, indent=1, ensure_ascii=False), encoding="utf-8")
    return 0 if fig["pass"] else 1


if __name__ == "__main__":
    sys.exit(main())
