"""Measure the local stand-ins: python -m devstack.measure [--ops 300]

Prints single-thread ops/s for the Cosmos stand-in (keep-alive on/off, via azure-cosmos),
the SendBird stand-in (requests.Session, keep-alive), Azurite queue send+receive+delete,
and the start-up time of each service.
"""

from __future__ import annotations

import argparse
import tempfile
import time
import uuid
import warnings

import requests

from devstack.stack import Azurite, CosmosStandIn, SendBirdStandIn


def _rate(n: int, seconds: float) -> str:
    return f"{n / seconds:8.0f} ops/s  ({1000 * seconds / n:6.2f} ms/op)"


def cosmos(ops: int, keep_alive: bool, log_dir: str) -> None:
    from azure.cosmos import PartitionKey

    with CosmosStandIn(0, keep_alive=keep_alive, log_dir=log_dir) as svc:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            client = svc.client()
            cont = client.create_database_if_not_exists("bench").create_container_if_not_exists(
                "c", partition_key=PartitionKey("/user_id"))
            ids = [uuid.uuid4().hex for _ in range(ops)]
            t0 = time.perf_counter()
            for i in ids:
                cont.upsert_item({"id": i, "user_id": "u1", "v": 1})
            t1 = time.perf_counter()
            for i in ids:
                cont.read_item(i, partition_key="u1")
            t2 = time.perf_counter()
        label = "on " if keep_alive else "off"
        print(f"cosmos keep-alive {label} start {svc.ready_after:.2f}s  upsert {_rate(ops, t1 - t0)}  "
              f"read {_rate(ops, t2 - t1)}")


def sendbird(ops: int, log_dir: str) -> None:
    with SendBirdStandIn(0, api_token="t", log_dir=log_dir) as sb:
        s = requests.Session()
        t0 = time.perf_counter()
        for i in range(ops):
            r = s.post(sb.send_url, json={"message": f"m{i}", "channel_url": "c"}, headers={"Api-Token": "t"})
            r.raise_for_status()
        dt = time.perf_counter() - t0
        print(f"sendbird stand-in start {sb.ready_after:.2f}s  send {_rate(ops, dt)}")


def azurite(ops: int, log_dir: str) -> None:
    from azure.storage.queue import QueueClient

    with Azurite(0, log_dir=log_dir) as az:
        q = QueueClient.from_connection_string(az.connection_string, "bench-queue")
        q.create_queue()
        t0 = time.perf_counter()
        for i in range(ops):
            q.send_message(f"m{i}")
            for m in q.receive_messages(max_messages=1):
                q.delete_message(m)
        dt = time.perf_counter() - t0
        print(f"azurite (in memory) start {az.ready_after:.2f}s  send+receive+delete {_rate(ops, dt)}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--ops", type=int, default=300)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as logs:
        cosmos(args.ops, True, logs)
        cosmos(max(50, args.ops // 5), False, logs)
        sendbird(args.ops, logs)
        azurite(args.ops, logs)


if __name__ == "__main__":
    main()
