"""``python -m tools.demo`` options: the prediction cache is on for ``run`` (``make run``) unless ``--no-cache``,
off for the scripted demo unless ``--cache``, and the stack says which (``tests/test_demo_signals.py`` starts the
real ``run`` and sees its redis-server)."""

from __future__ import annotations

import pytest

from tools.demo import cache_line, parse_args


@pytest.mark.parametrize("argv, cache", [
    (["run"], True), (["run", "--no-cache"], False), (["run", "--free-ports"], True),
    ([], False), (["demo"], False), (["demo", "--cache"], True),
])
def test_the_cache_is_on_for_run_unless_turned_off(argv, cache):
    assert parse_args(argv).cache is cache


class _Redis:
    url = "redis://127.0.0.1:6390/0"


def test_the_stack_says_whether_the_cache_is_on():
    assert cache_line({"redis": _Redis()}) == (
        "Prediction cache: on (INTENT_CACHE_URL=redis://127.0.0.1:6390/0, memory only; --no-cache turns it off)")
    assert cache_line({}) == "Prediction cache: off (--cache turns it on)"
