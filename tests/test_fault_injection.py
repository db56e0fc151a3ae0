"""The fault-injection suite at CI size ("Nothing lost, nothing doubled"): many conversations through the local
runner with duplicate webhook deliveries, queue redeliveries, a killed worker, intent service 503s/timeouts and
an outage, SendBird 429/5xx bursts, Cosmos DB 429s and a second writer (412s). See faults/README.md.

The report is printed and written to .stack/faults/ci-<timestamp>/report.txt (+ report.json, logs/)."""

from __future__ import annotations

import time

import pytest

from faults.plan import PRESETS
from faults.run import DEFAULT_OUT, run_suite

pytestmark = pytest.mark.stack


def test_nothing_lost_nothing_doubled():
    out = DEFAULT_OUT / f"ci-{time.strftime('%Y%m%d-%H%M%S')}"
    started = time.monotonic()
    report = run_suite(PRESETS["ci"], out)
    print(f"\nfault-injection report: {out / 'report.txt'} ({time.monotonic() - started:.0f} s)")
    assert report.accepted > 0 and report.accepted >= report.plan["users"] * report.plan["messages"] * 0.9
    assert report.drained, "the gateway's queues did not drain in time"
    assert report.lost == 0, f"lost: {report.lost_ids}"
    assert report.duplicates == 0, f"answered twice: {report.details.get('duplicates')}"
    assert not report.checks["second_writer"]["mismatches"], "an update was lost between the two Cosmos writers"
    assert not report.checks["admission"]["problems"], report.checks["admission"]["problems"]


def test_hung_intent_calls_on_the_last_attempt_leave_no_user_in_silence():
    """functionTimeout restarts the worker; messages whose last attempt hung are moved raw to <queue>-poison by the
    host. The poison triggers record each with a reason and apologise once: 0 lost, 0 answered twice."""
    out = DEFAULT_OUT / f"hung-{time.strftime('%Y%m%d-%H%M%S')}"
    report = run_suite(PRESETS["hung"], out)
    print(f"\nfault-injection report: {out / 'report.txt'}")
    assert report.drained, "the gateway's queues did not drain in time"
    assert report.lost == 0, f"left in silence: {report.lost_ids}"
    assert report.duplicates == 0, f"answered twice: {report.details.get('duplicates')}"
    host_moved = [p for p in report.details["poison"] if "moved to the poison queue by the Functions host" in p["reason"]]
    assert host_moved and report.apologies >= 1, "the scenario must have hit the host's poison path"


def test_two_instances_one_killed_nothing_lost_nothing_doubled_order_kept():
    """Two runner instances on the same queues and state (competing consumers, wake-ups only within an instance);
    one is SIGKILLed mid-load and stays down: the other takes over its messages after the lease and its webhooks
    after SendBird's re-posts. Every fault of the CI run on top."""
    out = DEFAULT_OUT / f"two-{time.strftime('%Y%m%d-%H%M%S')}"
    started = time.monotonic()
    report = run_suite(PRESETS["two-instances"], out)
    print(f"\nfault-injection report: {out / 'report.txt'} ({time.monotonic() - started:.0f} s)")
    assert report.injected["instances"] == 2
    assert [k["restarted"] for k in report.injected["kills"]] == [False]
    assert report.accepted > 0 and report.accepted >= report.plan["users"] * report.plan["messages"] * 0.9
    assert report.drained, "the gateway's queues did not drain in time"
    assert report.lost == 0, f"lost: {report.lost_ids}"
    assert report.duplicates == 0, f"answered twice: {report.details.get('duplicates')}"
    assert not report.checks["second_writer"]["mismatches"], "an update was lost between the two Cosmos writers"
    assert not report.checks["admission"]["problems"], report.checks["admission"]["problems"]
    # the gateway's order promise: each user's answers go out in the order their messages were admitted
    assert report.order["answer_vs_admission_inversions"] == 0, report.order
