"""Timer triggers (``@app.timer_trigger``) with the host's semantics.

Reproduces the WebJobs timer extension's ``TimerListener`` (azure-webjobs-sdk-extensions
``src/WebJobs.Extensions/Extensions/Timers/Listeners/TimerListener.cs``) and ``ScheduleMonitor``:

* the schedule is an NCRONTAB expression of **six fields**, seconds first (``{second} {minute} {hour} {day}
  {month} {day-of-week}``), or an ``%APP_SETTING%`` holding one; parsed by ``croniter``
  (``second_at_beginning=True``); evaluated in UTC (Azure's default time zone);
* at start, with ``use_monitor`` and a stored schedule status whose ``Next`` has passed (the app was down at an
  occurrence), one invocation at once with ``past_due=True`` (it wins over ``run_on_startup``); else with
  ``run_on_startup`` one invocation at once (``past_due=False``); then the regular schedule;
* one invocation of a timer at a time; after each, ``Next`` is the first occurrence after the invocation time, so
  occurrences that passed while the function ran are skipped, not queued; a failed invocation does not stop the
  schedule;
* the function gets an ``azure.functions.TimerRequest``: ``past_due``, ``schedule_status`` (``Last``, ``Next``,
  ``LastUpdated``, ISO 8601; empty without ``use_monitor``) and ``schedule`` (``{"AdjustForDST": true}``);
* ``POST /admin/functions/{name}`` (the host's admin API for non-HTTP functions) invokes a timer function now
  (``202``, in the background), with ``past_due=False``, outside the schedule (the schedule status is not moved).

The schedule status is kept per function in memory, or with ``LOCALRUNNER_TIMER_STATUS_DIR`` in
``DIR/<function>/status`` (JSON ``{"Last", "Next", "LastUpdated"}``, the host's blob
``azure-webjobs-hosts/timers/<host id>/<function>/status``), so that a runner stopped across an occurrence catches
it up past due at its next start, as the host does.
"""
from __future__ import annotations

import datetime as dt
import json
import logging
import os
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Mapping, Optional, Tuple

from azure.functions.timer import TimerRequest
from croniter import croniter  # type: ignore[import-untyped]  # no stubs shipped

from .app_loader import FunctionLoadError, resolve_expression

if TYPE_CHECKING:  # pragma: no cover - types only
    from .app_loader import FunctionSpec
    from .invocation import InvocationResult, Invoker

log = logging.getLogger("localrunner.timers")
host_log = logging.getLogger("localrunner.host")

#: Environment variable: a folder where each timer's schedule status survives a restart (the host's monitor blob).
STATUS_DIR_ENV = "LOCALRUNNER_TIMER_STATUS_DIR"
#: The host's message for a schedule it cannot parse (TimerTriggerAttributeBindingProvider / TimerSchedule.Create).
INVALID_SCHEDULE = "The schedule expression '{0}' was not recognized as a valid cron expression or timespan string."
ADMIN_REASON = "This function was programmatically called via the host APIs."
_TIMESPAN = re.compile(r"^\d+(\.\d+)?:\d{2}(:\d{2})?$|^\d+\.\d{2}:\d{2}:\d{2}$")


@dataclass
class TimerTriggerSpec:
    param: str
    schedule: str  # the resolved six-field NCRONTAB expression
    run_on_startup: bool = False
    use_monitor: bool = True  # the host's default


def parse_schedule(expression: str, *, what: str) -> str:
    """The six-field NCRONTAB ``expression`` normalised (single spaces); raises :class:`FunctionLoadError` with
    the host's wording when it does not parse, and for the TimeSpan form (``hh:mm:ss``, App Service plans
    only), which localrunner does not run."""
    text = " ".join(expression.split())
    if _TIMESPAN.match(text):
        raise FunctionLoadError(f"{what}: TimeSpan schedules ('{text}') are not supported by localrunner; "
                                "use a six-field NCRONTAB expression")
    if len(text.split(" ")) != 6 or not croniter.is_valid(text, second_at_beginning=True):
        raise FunctionLoadError(f"{what}: {INVALID_SCHEDULE.format(text)}")
    return text


def timer_spec(trigger: Any, env: Mapping[str, str], *, what: str) -> TimerTriggerSpec:
    """The timer trigger of an indexed function: schedule resolved (``%SETTING%``) and checked."""
    raw = str(getattr(trigger, "schedule", "") or "")
    schedule = resolve_expression(raw, env, what=f"{what} trigger") if "%" in raw else raw
    use_monitor = getattr(trigger, "use_monitor", None)
    return TimerTriggerSpec(param=trigger.name, schedule=parse_schedule(schedule, what=f"{what} trigger"),
                            run_on_startup=bool(getattr(trigger, "run_on_startup", None) or False),
                            use_monitor=True if use_monitor is None else bool(use_monitor))


def next_occurrence(schedule: str, after: dt.datetime) -> dt.datetime:
    """The first occurrence of ``schedule`` strictly after ``after`` (aware UTC datetimes)."""
    nxt: dt.datetime = croniter(schedule, after, second_at_beginning=True).get_next(dt.datetime)
    return nxt


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


@dataclass
class ScheduleStatus:
    """The host's ``ScheduleStatus``: the last occurrence run, the next expected one, when this was written."""

    last: Optional[dt.datetime]
    next: dt.datetime
    last_updated: Optional[dt.datetime]

    def as_dict(self) -> Dict[str, str]:
        never = "0001-01-01T00:00:00+00:00"  # the host's default(DateTime) for "never"
        return {"Last": self.last.isoformat() if self.last else never, "Next": self.next.isoformat(),
                "LastUpdated": self.last_updated.isoformat() if self.last_updated else never}

    @classmethod
    def from_dict(cls, d: Mapping[str, str]) -> "ScheduleStatus":
        def parse(v: str) -> Optional[dt.datetime]:
            t = dt.datetime.fromisoformat(v)
            t = t if t.tzinfo else t.replace(tzinfo=dt.timezone.utc)
            return None if t.year == 1 else t
        nxt = parse(d["Next"])
        if nxt is None:
            raise ValueError("Next is not set")
        return cls(parse(d["Last"]), nxt, parse(d["LastUpdated"]))


class StatusStore:
    """Schedule statuses by function: in memory, or files under ``folder`` (``<function>/status``)."""

    def __init__(self, folder: Optional[str] = None):
        self.folder = Path(folder) if folder else None
        self._memory: Dict[str, ScheduleStatus] = {}

    def get(self, function: str) -> Optional[ScheduleStatus]:
        if self.folder is None:
            return self._memory.get(function)
        path = self.folder / function / "status"
        try:
            return ScheduleStatus.from_dict(json.loads(path.read_text(encoding="utf-8")))
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("timer %s: ignoring unreadable schedule status %s: %s", function, path, exc)
            return None

    def put(self, function: str, status: ScheduleStatus) -> None:
        if self.folder is None:
            self._memory[function] = status
            return
        path = self.folder / function / "status"
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(status.as_dict()), encoding="utf-8")
        os.replace(tmp, path)


class TimerListener:
    """Fires one timer function on its schedule (a thread), one invocation at a time, like the host's listener."""

    def __init__(self, spec: "FunctionSpec", invoker: "Invoker", store: StatusStore,
                 clock: Callable[[], dt.datetime] = utcnow):
        assert spec.timer is not None, f"{spec.name}: not a timer function"
        self.spec, self.timer, self.invoker, self.store, self.clock = spec, spec.timer, invoker, store, clock
        self.status: Optional[ScheduleStatus] = None
        #: decided at start: "IsPastDue", "RunOnStartup" or None (the host's UnscheduledInvocationReason)
        self.startup_invocation: Optional[str] = None
        self._stop = threading.Event()
        self._invocation_lock = threading.Lock()
        self._thread: Optional[threading.Thread] = None

    @property
    def name(self) -> str:
        return self.spec.name

    def start(self) -> None:
        """Read the stored status (``use_monitor``), decide the start-up invocation, start the schedule thread."""
        now = self.clock()
        past_due: Optional[dt.datetime] = None
        if self.timer.use_monitor:
            self.status = self.store.get(self.name)
            if self.status is not None and now > self.status.next:
                past_due = self.status.next
        if self.status is None:
            self.status = ScheduleStatus(None, next_occurrence(self.timer.schedule, now), None)
        self.startup_invocation = "IsPastDue" if past_due else "RunOnStartup" if self.timer.run_on_startup else None
        upcoming, t = [], now
        for _ in range(5):
            t = next_occurrence(self.timer.schedule, t)
            upcoming.append(t.isoformat())
        host_log.info("The next 5 occurrences of the '%s' schedule (Cron: '%s') will be:\n%s", self.name,
                      self.timer.schedule, "\n".join(upcoming))
        self._thread = threading.Thread(target=self._run, args=(past_due,), name=f"timer-{self.name}", daemon=True)
        self._thread.start()

    def _run(self, past_due: Optional[dt.datetime]) -> None:
        if past_due is not None:
            host_log.info("Function '%s' is past due on startup. Executing now.", self.name)
            self._fire(past_due=True, original=past_due)
        elif self.timer.run_on_startup:
            host_log.info("Function '%s' is configured to run on startup. Executing now.", self.name)
            self._fire(run_on_startup=True)
        while not self._stop.is_set():
            assert self.status is not None
            wait = (self.status.next - self.clock()).total_seconds()
            if self._stop.wait(max(0.0, wait)):
                return
            self._fire()

    def _fire(self, *, past_due: bool = False, run_on_startup: bool = False,
              original: Optional[dt.datetime] = None) -> None:
        with self._invocation_lock:
            if self._stop.is_set():
                return
            at = self.clock()
            details = ("UnscheduledInvocationReason: IsPastDue, OriginalSchedule: " + original.isoformat()
                       if past_due and original else "UnscheduledInvocationReason: RunOnStartup"
                       if run_on_startup else None)
            try:
                self.invoker.invoke(self.spec, self.request(past_due), reason=f"Timer fired at {at.isoformat()}",
                                    details=details)
            except Exception:  # noqa: BLE001 - the host: errors never stop the execution schedule
                log.exception("timer %s: invocation could not run", self.name)
            assert self.status is not None
            adjusted = self.status.next if not (past_due or run_on_startup) and self.status.next > at else at
            self.status = ScheduleStatus(adjusted, next_occurrence(self.timer.schedule, adjusted), adjusted)
            if self.timer.use_monitor:
                self.store.put(self.name, self.status)

    def request(self, past_due: bool) -> TimerRequest:
        """The trigger value the function gets (the worker's ``TimerRequest``)."""
        status = self.status.as_dict() if self.timer.use_monitor and self.status is not None else None
        return TimerRequest(past_due=past_due, schedule_status=status, schedule={"AdjustForDST": True})

    def invoke_now(self) -> "InvocationResult":
        """The admin API's invocation: now, ``past_due=False``, outside the schedule (its status is unchanged)."""
        return self.invoker.invoke(self.spec, self.request(False), reason=ADMIN_REASON)

    def stop(self) -> None:
        """No further invocations; one in flight runs to its end (see :meth:`wait_idle`)."""
        self._stop.set()

    def wait_idle(self, deadline: float) -> bool:
        """Wait (until ``time.monotonic()`` reaches ``deadline``) for the schedule thread to end."""
        if self._thread is not None:
            self._thread.join(max(0.0, deadline - time.monotonic()))
            return not self._thread.is_alive()
        return True


# -- runner hooks -------------------------------------------------------------------

def start_timers(specs: List["FunctionSpec"], invoker: "Invoker",
                 env: Mapping[str, str] = os.environ) -> List[TimerListener]:
    """Start a listener per timer function (schedule status in ``LOCALRUNNER_TIMER_STATUS_DIR`` when set)."""
    store = StatusStore(env.get(STATUS_DIR_ENV) or None)
    listeners = [TimerListener(s, invoker, store) for s in specs if s.timer is not None]
    for listener in listeners:
        listener.start()
    return listeners


def stop_timers(listeners: List[TimerListener], deadline: float) -> bool:
    """Stop every timer; True when each finished its invocation in flight before ``deadline``."""
    for listener in listeners:
        listener.stop()
    return all([listener.wait_idle(deadline) for listener in listeners])


class AdminInvoker:
    """``POST /admin/functions/{name}``: run a non-HTTP function now, in the background (the host answers 202)."""

    def __init__(self, listeners: List[TimerListener], specs: List["FunctionSpec"]):
        self._timers = {t.name.lower(): t for t in listeners}
        self._specs = {s.name.lower(): s for s in specs}
        self._threads: List[threading.Thread] = []

    def __call__(self, name: str, body: bytes) -> Tuple[int, Optional[Dict[str, Any]]]:
        """(status, JSON body or None): 202 started; 404 no such function; 400 an HTTP function (call its
        route), a bad body, or a trigger localrunner cannot invoke this way (queue)."""
        spec = self._specs.get(name.lower())
        if spec is None:
            return 404, None
        if body.strip():
            try:
                parsed = json.loads(body)
            except ValueError:
                return 400, {"error": "the body must be JSON: {\"input\": \"...\"}"}
            if not isinstance(parsed, dict):
                return 400, {"error": "the body must be a JSON object: {\"input\": \"...\"}"}
        if spec.http is not None:
            return 400, {"error": f"'{spec.name}' is an HTTP function: call its route"}
        timer = self._timers.get(name.lower())
        if timer is None:
            return 400, {"error": f"localrunner invokes only timer functions through the admin API; "
                                  f"'{spec.name}' is a {spec.trigger_type} function"}
        thread = threading.Thread(target=timer.invoke_now, name=f"admin-{spec.name}", daemon=True)
        self._threads = [t for t in self._threads if t.is_alive()] + [thread]
        thread.start()
        return 202, None

    def wait_idle(self, deadline: float) -> bool:
        for t in list(self._threads):
            t.join(max(0.0, deadline - time.monotonic()))
        return not any(t.is_alive() for t in self._threads)
