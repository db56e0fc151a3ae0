"""Timer triggers: NCRONTAB parsing, the schedule, run_on_startup, past-due catch-up with use_monitor, and the
admin API that invokes a timer function now. The timer app (timer_app/) needs no storage emulator."""
from __future__ import annotations

import datetime as dt
import json
import os
import time

import pytest
import requests

from localrunner import FunctionLoadError, Runner
from localrunner.timers import (INVALID_SCHEDULE, ScheduleStatus, StatusStore, next_occurrence, parse_schedule)

HERE = os.path.dirname(os.path.abspath(__file__))
TIMER_APP = os.path.join(HERE, "timer_app")
YEARLY = "0 0 0 1 1 *"  # never fires during a test run (unless it runs at new year's midnight UTC)
UTC = dt.timezone.utc


def wait_for(predicate, what: str, timeout: float = 20.0):
    """Poll ``predicate`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.05)


def records(path) -> list[dict]:
    try:
        with open(path, encoding="utf-8") as f:
            return [json.loads(line) for line in f if line.strip()]
    except FileNotFoundError:
        return []


@pytest.fixture
def start(tmp_path):
    """Start the timer app with settings over the defaults (both timers yearly); yields (runner, log path)."""
    runners: list[Runner] = []
    log = tmp_path / "timer.log"

    def go(**settings: str) -> Runner:
        env = {"TIMER_LOG": str(log), "FREQUENT_SCHEDULE": YEARLY, "NIGHTLY_SCHEDULE": YEARLY,
               "NIGHTLY_RUN_ON_STARTUP": "0", **settings}
        r = Runner(TIMER_APP, port=0, env_overrides=env, settings_file=None)
        runners.append(r)
        return r.start()

    go.log = log  # type: ignore[attr-defined]
    yield go
    for r in runners:
        r.stop(timeout=10)


# --------------------------------------------------------------------------- schedule expressions
@pytest.mark.parametrize("expr, after, expected", [
    ("0 5 0 * * *", "2026-12-03T16:00:00", "2026-12-04T00:05:00"),     # daily, shortly after midnight
    ("*/15 * * * * *", "2026-12-03T16:00:00", "2026-12-03T16:00:15"),  # seconds first
    ("0 */5 * * * 1-5", "2026-12-05T10:00:00", "2026-12-07T00:00:00"),  # Saturday -> Monday
    ("0 30 9 * * Mon", "2026-12-03T16:00:00", "2026-12-07T09:30:00"),   # day names
    ("0 0 12 1 * *", "2026-12-01T12:00:00", "2027-01-01T12:00:00"),     # strictly after
])
def test_next_occurrence_of_six_field_ncrontab(expr, after, expected):
    got = next_occurrence(parse_schedule(expr, what="t"), dt.datetime.fromisoformat(after).replace(tzinfo=UTC))
    assert got == dt.datetime.fromisoformat(expected).replace(tzinfo=UTC)


@pytest.mark.parametrize("expr", ["0 5 * * *", "0 5 0 * * * 2026", "61 * * * * *", "a b c d e f", ""])
def test_expressions_the_host_refuses(expr):
    with pytest.raises(FunctionLoadError) as err:
        parse_schedule(expr, what="function 'x' trigger")
    assert INVALID_SCHEDULE.format(" ".join(expr.split())) in str(err.value)


def test_timespan_schedules_are_refused_with_a_reason():
    with pytest.raises(FunctionLoadError, match="TimeSpan schedules"):
        parse_schedule("00:05:00", what="t")


def test_a_bad_schedule_setting_fails_the_start(start):
    with pytest.raises(FunctionLoadError, match=r"function 'nightly'.*'0 5 \* \* \*' was not recognized"):
        start(NIGHTLY_SCHEDULE="0 5 * * *")


def test_the_schedule_comes_from_the_app_setting_and_is_described(start):
    r = start(NIGHTLY_SCHEDULE="0 5 0 * * *")
    nightly = next(d for d in r.status()["details"] if d["name"] == "nightly")
    assert nightly == {"name": "nightly", "trigger": "timerTrigger", "schedule": "0 5 0 * * *",
                       "runOnStartup": False, "useMonitor": True, "outputs": []}


# --------------------------------------------------------------------------- firing
def test_the_schedule_fires_with_the_timer_request(start):
    r = start(FREQUENT_SCHEDULE="* * * * * *")  # every second
    def two() -> list[dict] | None:
        found = [x for x in records(start.log) if x["function"] == "frequent"]
        return found[:2] if len(found) >= 2 else None
    got = wait_for(two, "two scheduled invocations")
    assert [x["past_due"] for x in got] == [False, False]
    assert got[0]["status"] == {} and got[0]["schedule"] == {"AdjustForDST": True}  # use_monitor=False: no status
    assert r.function_stats("frequent")["successes"] >= 2
    assert [t.startup_invocation for t in r.timers] == [None, None]


def test_run_on_startup_invokes_once_at_start(start):
    r = start(NIGHTLY_RUN_ON_STARTUP="1")
    assert {t.name: t.startup_invocation for t in r.timers} == {"frequent": None, "nightly": "RunOnStartup"}
    (got,) = wait_for(lambda: records(start.log), "the start-up invocation")
    assert got["function"] == "nightly" and got["past_due"] is False
    assert set(got["status"]) == {"Last", "Next", "LastUpdated"}  # use_monitor=True: the schedule status


def test_a_missed_occurrence_runs_past_due_at_start_and_wins_over_run_on_startup(start, tmp_path):
    status_dir = tmp_path / "timer-status"
    missed = dt.datetime(2026, 1, 1, tzinfo=UTC)
    StatusStore(str(status_dir)).put("nightly", ScheduleStatus(missed - dt.timedelta(days=1), missed,
                                                               missed - dt.timedelta(days=1)))
    r = start(LOCALRUNNER_TIMER_STATUS_DIR=str(status_dir), NIGHTLY_RUN_ON_STARTUP="1")
    assert {t.name: t.startup_invocation for t in r.timers}["nightly"] == "IsPastDue"
    (got,) = wait_for(lambda: records(start.log), "the past-due invocation")
    assert got["function"] == "nightly" and got["past_due"] is True
    assert got["status"]["Next"].startswith("2026-01-01T00:00:00")
    stored = wait_for(lambda: (s := StatusStore(str(status_dir)).get("nightly")) and s.next > missed and s,
                      "the stored status to move on")
    assert stored.next > dt.datetime.now(UTC)  # the next yearly occurrence


def test_no_past_due_on_a_first_start_or_without_use_monitor(start, tmp_path):
    r = start(LOCALRUNNER_TIMER_STATUS_DIR=str(tmp_path / "empty"))
    assert [t.startup_invocation for t in r.timers] == [None, None]


def test_a_failing_invocation_does_not_stop_the_schedule(start):
    r = start(NIGHTLY_SCHEDULE="* * * * * *", NIGHTLY_FAILS="1")
    wait_for(lambda: r.function_stats("nightly").get("failures", 0) >= 2, "two failed scheduled invocations")


# --------------------------------------------------------------------------- invoking now
def test_runner_trigger_invokes_now_outside_the_schedule(start):
    r = start()
    before = r.timers[1].status
    result = r.trigger("nightly")
    assert result.ok
    (got,) = records(start.log)
    assert got["function"] == "nightly" and got["past_due"] is False
    assert r.timers[1].status == before  # the schedule is not moved by a manual run
    with pytest.raises(KeyError):
        r.trigger("nope")


def test_admin_api_invokes_a_timer_function_in_the_background(start):
    r = start()
    res = requests.post(r.base_url + "/admin/functions/nightly", json={"input": ""}, timeout=5)
    assert res.status_code == 202 and res.content == b""
    (got,) = wait_for(lambda: records(start.log), "the admin invocation")
    assert got["function"] == "nightly" and got["past_due"] is False
    assert requests.post(r.base_url + "/admin/functions/NIGHTLY", timeout=5).status_code == 202  # case-insensitive
    assert requests.post(r.base_url + "/admin/functions/nope", json={}, timeout=5).status_code == 404
    bad = requests.post(r.base_url + "/admin/functions/nightly", data=b"not json", timeout=5)
    assert bad.status_code == 400 and "JSON" in bad.json()["error"]
    assert requests.get(r.base_url + "/admin/functions/nightly", timeout=5).status_code == 404  # POST only
    wait_for(lambda: r.function_stats("nightly")["successes"] == 2, "both admin invocations")


def test_admin_api_needs_the_key_when_the_runner_has_one(tmp_path):
    env = {"TIMER_LOG": str(tmp_path / "log"), "FREQUENT_SCHEDULE": YEARLY, "NIGHTLY_SCHEDULE": YEARLY}
    with Runner(TIMER_APP, port=0, env_overrides=env, function_key="k-123") as r:
        url = r.base_url + "/admin/functions/nightly"
        assert requests.post(url, timeout=5).status_code == 401
        assert requests.post(url, headers={"x-functions-key": "k-123"}, timeout=5).status_code == 202
        wait_for(lambda: r.function_stats("nightly")["successes"] == 1, "the keyed admin invocation")


def test_a_timer_function_runs_in_a_language_worker_process(start):
    r = start(FUNCTIONS_WORKER_PROCESS_COUNT="1")
    assert r.trigger("nightly").ok
    (got,) = records(start.log)
    assert got["pid"] != os.getpid() and got["past_due"] is False  # the TimerRequest crossed to the worker
