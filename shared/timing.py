"""Per-invocation timing of outbound calls (intent service, SendBird, Cosmos DB), in milliseconds.

A queue stage opens a scope (:func:`scope`); client modules wrap each outbound call in :func:`dependency`; the
stage reads the totals when it writes its hop. Calls outside a scope are not recorded. Uses a ``ContextVar``, so
concurrent invocations on other threads do not mix.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import TYPE_CHECKING

from shared.telemetry import Span

if TYPE_CHECKING:  # pragma: no cover - types only
    from shared.ports import TelemetryPort

_current: ContextVar[dict[str, float] | None] = ContextVar("dependency_ms", default=None)


@contextmanager
def scope() -> Iterator[dict[str, float]]:
    """Collect dependency times (name -> ms) for the duration of the ``with`` block."""
    totals: dict[str, float] = defaultdict(float)
    token = _current.set(totals)
    try:
        yield totals
    finally:
        _current.reset(token)


@contextmanager
def dependency(telemetry: TelemetryPort, name: str, operation: str = "", target: str = "",
               dependency_type: str = "HTTP") -> Iterator[Span]:
    """Add the wall time of the ``with`` block (ms) to ``name`` in the current scope, if any, and report it
    through ``telemetry`` as a dependency (``operation`` on ``target``) of the current stage.
    Yields the dependency span (``set_status_code`` for HTTP answers)."""
    with waiting(name), telemetry.dependency(name, operation or name, target, dependency_type) as span:
        yield span


#: The ``dependency_ms`` name of the time a look-up waited for a concurrent look-up's intent call (the prediction
#: cache's coalesced misses, :mod:`shared.intent_cache`): model time, spent by another invocation's call.
INTENT_COALESCED = "intent_coalesced"


@contextmanager
def waiting(name: str) -> Iterator[None]:
    """Add the wall time of the ``with`` block (ms) to ``name`` in the current scope, if any. Alone: time spent
    without a call of one's own (waiting for another invocation's call), reported as no dependency; under
    :func:`dependency`, the call's time."""
    start = time.perf_counter()
    try:
        yield
    finally:
        totals = _current.get()
        if totals is not None:
            totals[name] += (time.perf_counter() - start) * 1000
