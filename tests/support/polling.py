"""Waiting in tests without racing: poll a condition until it holds or a deadline passes."""
from __future__ import annotations

import time
from typing import Any, Callable


def poll(fn: Callable[[], Any], timeout: float, what: str, interval: float = 0.2) -> Any:
    """``fn()``'s first truthy value, calling it every ``interval`` seconds; ``AssertionError`` naming ``what``
    after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = fn()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout:.0f} s")
        time.sleep(interval)
