"""Benchmark: start-up to ready, single-request latency, throughput under concurrency.

Starts the server as a child process on a free loopback port, sends a bounded
number of requests over 127.0.0.1 only, prints the figures, stops the child.

    python intent_service/bench/bench.py [--workers 1] [--requests 1000] [--concurrency 8]
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import requests

REPO = Path(__file__).resolve().parents[2]
MODEL = REPO / "intent_service" / "models" / "retail.skops"
API = "/language/:analyze-conversations?api-version=2023-04-01"
TEXTS = ["where is my order 20261119-0042?", "주문번호 20261119-0042 배송 조회해 주세요",
         "검정 운동화 270 사이즈 있어요?", "do you have a denim jacket at Hanbit Mall",
         "상담원 연결해 주세요 010-1234-5678", "thanks, bye", "오늘 날씨 어때?", "hello"]


def body(text):
    return json.dumps({"kind": "Conversation",
                       "analysisInput": {"conversationItem": {"id": "1", "participantId": "u",
                                                              "text": text}},
                       "parameters": {"stringIndexType": "TextElement_V8"}}).encode()


def process_tree(pid: int) -> list:
    """``pid`` and its descendants (uvicorn's worker processes with ``--workers N``), from /proc."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            with open(f"/proc/{p}/task/{p}/children", encoding="ascii") as fh:
                todo.extend(int(c) for c in fh.read().split())
        except OSError:
            pass
    return out


def tree_rss_mb(pid: int) -> tuple:
    """(current, peak) resident memory summed over the server's processes, in MB."""
    pairs = [rss_mb(p) for p in process_tree(pid)]
    return sum(r for r, _ in pairs), sum(h for _, h in pairs)


def tree_cpu_seconds(pid: int) -> float:
    """CPU seconds summed over the server's processes (workers exit only when the server does)."""
    return sum(cpu_seconds(p) for p in process_tree(pid))


def rss_mb(pid: int) -> tuple:
    """(current, peak) resident memory of a process in MB, from /proc (Linux)."""
    vals = {}
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith(("VmRSS:", "VmHWM:")):
                    key, kb = line.split()[:2]
                    vals[key] = int(kb) / 1024
    except OSError:
        pass
    return vals.get("VmRSS:", float("nan")), vals.get("VmHWM:", float("nan"))


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far, from /proc (Linux)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return float("nan")


def pct(values, p):
    v = sorted(values)
    return v[min(len(v) - 1, int(round(p / 100 * (len(v) - 1))))]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--requests", type=int, default=1000, help="sequential requests (max 20000)")
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--concurrent-requests", type=int, default=2000, help="max 20000")
    ap.add_argument("--model", default=str(MODEL), help="model file (default: the retail model)")
    args = ap.parse_args()
    model = Path(args.model)
    n_seq, n_conc = min(args.requests, 20000), min(args.concurrent_requests, 20000)

    if not model.is_file() and model == MODEL:
        subprocess.run([sys.executable, "-m", "intent_service", "build-retail"], cwd=REPO, check=True)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    base = f"http://127.0.0.1:{port}"
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "intent_service", "serve", "--model", str(model),
                             "--host", "127.0.0.1", "--port", str(port),
                             "--workers", str(args.workers), "--log-level", "warning"],
                            cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        t_live = None
        while True:
            if proc.poll() is not None:
                raise SystemExit("server exited during start-up")
            try:
                r = requests.get(base + "/health/ready", timeout=1)
                t_live = t_live or time.perf_counter()
                if r.status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            if time.perf_counter() - t0 > 60:
                raise SystemExit("not ready after 60s")
            time.sleep(0.02)
        t_ready = time.perf_counter()
        print(f"workers: {args.workers}; cores: {os.cpu_count()}")
        print(f"start-up: process spawn -> live {t_live - t0:.2f}s, -> ready {t_ready - t0:.2f}s")

        sess = requests.Session()
        payloads = [body(t) for t in TEXTS]
        hdr = {"Content-Type": "application/json"}
        for i in range(50):  # warm-up
            sess.post(base + API, data=payloads[i % len(payloads)], headers=hdr)
        lat = []
        for i in range(n_seq):
            t = time.perf_counter()
            r = sess.post(base + API, data=payloads[i % len(payloads)], headers=hdr)
            lat.append((time.perf_counter() - t) * 1000)
            assert r.status_code == 200
        print(f"sequential ({n_seq} requests, one keep-alive connection, client on the same host): "
              f"p50 {pct(lat, 50):.2f} ms, p90 {pct(lat, 90):.2f} ms, p99 {pct(lat, 99):.2f} ms, "
              f"max {max(lat):.2f} ms, mean {statistics.mean(lat):.2f} ms")

        conc_lat, errors, lock = [], [0], threading.Lock()
        counter = iter(range(n_conc))

        def worker():
            s = requests.Session()
            for i in counter:
                t = time.perf_counter()
                r = s.post(base + API, data=payloads[i % len(payloads)], headers=hdr)
                d = (time.perf_counter() - t) * 1000
                with lock:
                    conc_lat.append(d)
                    if r.status_code != 200:
                        errors[0] += 1

        threads = [threading.Thread(target=worker) for _ in range(args.concurrency)]
        cpu0, own0 = tree_cpu_seconds(proc.pid), time.process_time()
        t = time.perf_counter()
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        wall = time.perf_counter() - t
        server_cpu, client_cpu = tree_cpu_seconds(proc.pid) - cpu0, time.process_time() - own0
        print(f"concurrent ({n_conc} requests, {args.concurrency} client threads): "
              f"{n_conc / wall:.0f} req/s, p50 {pct(conc_lat, 50):.2f} ms, "
              f"p99 {pct(conc_lat, 99):.2f} ms, errors {errors[0]}")
        # CPU time per request does not depend on what else runs on the machine; 2 cores can serve
        # at most 2000 / (server + client ms) requests per second
        print(f"CPU per request: server {1000 * server_cpu / n_conc:.2f} ms, this client "
              f"{1000 * client_cpu / n_conc:.2f} ms (load average {os.getloadavg()[0]:.1f})")
        rss, peak = tree_rss_mb(proc.pid)
        print(f"server resident memory (all its processes): {rss:.0f} MB (peak {peak:.0f} MB)")
    finally:
        proc.terminate()  # our child, by PID
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
    return 0


if __name__ == "__main__":
    sys.exit(main())
