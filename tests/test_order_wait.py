"""Ordering hold-backs wait inside the invocation before re-queueing (:func:`shared.branch_handlers.handle`): a
message whose user's earlier turn is not final re-reads the user's document after each pause of
``ORDER_WAIT_BACKOFF_SECONDS`` and is answered in the same invocation once the earlier turn is final; else it is
re-queued once, ``ORDER_RETRY_DELAY_SECONDS`` per earlier turn not final later (bounded); with no waiting slot free
in the process it is re-queued at once. The clock and the sleep are injected: no real waiting."""

from __future__ import annotations

import threading
from collections.abc import Callable

import pytest

from shared.branch_handlers import (ORDER_RETRY_DELAY_SECONDS, ORDER_RETRY_MAX_DELAY_SECONDS,
                                   ORDER_WAIT_BACKOFF_SECONDS, _Decision, handle, retry_delay)
from shared.models import ReplyMessage, RoutedMessage, decode
from shared.processing import delivered
from shared.routes import ROUTES
from tests.support.fakes import clu_prediction
from tests.support.messages import inbound


@pytest.fixture
def chain(chain, intent):
    """The conftest chain, with every utterance classified as a confident greeting."""
    intent.default = clu_prediction("Greeting", 0.9)
    return chain


def first_delivery(chain, routed: RoutedMessage, sleep: Callable[[float], None],
                   clock: Callable[[], int] | None = None) -> ReplyMessage | None:
    """The branch handler on the first delivery of ``routed`` (dequeue count 1), with an injected sleep and clock."""
    t = clock or (lambda: routed.received_at_ms + 100)
    with delivered(1):
        return handle(routed, chain.svc.branch(), clock=t, sleep=sleep)


def test_an_unblocked_message_does_not_wait(chain):
    first = chain.route(inbound("hi", 1))
    pauses: list[float] = []
    assert first_delivery(chain, first, pauses.append) is not None
    assert pauses == [] and chain.held_back == []


def test_a_message_whose_predecessor_becomes_final_during_the_wait_is_answered_in_the_same_invocation(
        chain, store, sendbird):
    first, second = chain.route(inbound("hi", 1)), chain.route(inbound("hi again", 2))
    reply1 = chain.handle(first)
    writes = store.writes
    pauses: list[float] = []

    def sleep(seconds: float) -> None:
        pauses.append(seconds)
        if len(pauses) == 2:  # the earlier reply is sent during the second pause
            assert store.writes == writes  # waiting wrote nothing
            assert chain.send(reply1) == "sent"

    reply2 = first_delivery(chain, second, sleep)
    assert pauses == list(ORDER_WAIT_BACKOFF_SECONDS[:2])
    assert reply2 is not None and reply2.seq == 2 and chain.held_back == []  # not re-queued
    assert chain.turn(2).status == "answered" and chain.turn(2).sending is not None  # written, with its claim
    assert chain.send(reply2) == "sent"
    assert [m["dedup_id"] for m in sendbird.messages] == ["reply-1", "reply-2"]
    assert chain.turn(2).status == "sent"


def test_a_message_whose_predecessor_stays_unfinished_is_requeued_once_with_the_documented_delay(
        chain, queues, store):
    chain.route(inbound("hi", 1))
    second = chain.route(inbound("hi again", 2))
    reads, writes = store.reads, store.writes
    pauses: list[float] = []
    assert first_delivery(chain, second, pauses.append) is None
    assert pauses == list(ORDER_WAIT_BACKOFF_SECONDS)
    assert store.writes == writes and store.reads == reads + 1 + len(ORDER_WAIT_BACKOFF_SECONDS)  # a read each
    [(text, delay)] = queues.sent[ROUTES.get(second.route).queue]
    assert delay == ORDER_RETRY_DELAY_SECONDS
    again = decode(text, RoutedMessage)
    assert again.message_id == 2 and again.order_waits == 1
    assert chain.turn(2).status == "received"


def test_the_wait_ends_when_the_longest_order_wait_is_over(chain, queues, settings):
    chain.route(inbound("hi", 1))
    second = chain.route(inbound("hi again", 2))
    now = [second.received_at_ms + settings.order_max_wait_seconds * 1000 - 500]

    def sleep(seconds: float) -> None:
        now[0] += int(seconds * 1000)

    reply = first_delivery(chain, second, sleep, clock=lambda: now[0])
    assert reply is not None and reply.seq == 2  # handled anyway, after 0.1 + 0.2 + 0.4 s
    assert chain.held_back == [] and not queues.sent


def test_with_no_waiting_slot_free_a_held_back_message_is_requeued_at_once(chain, queues, monkeypatch):
    import shared.branch_handlers as bh
    busy = threading.BoundedSemaphore(1)
    busy.acquire()  # every slot taken by other waiting messages
    monkeypatch.setattr(bh, "_waiters", busy)
    chain.route(inbound("hi", 1))
    second = chain.route(inbound("hi again", 2))
    pauses: list[float] = []
    assert first_delivery(chain, second, pauses.append) is None
    assert pauses == []
    [(_, delay)] = queues.sent[ROUTES.get(second.route).queue]
    assert delay == ORDER_RETRY_DELAY_SECONDS


def test_the_requeue_delay_grows_with_the_earlier_turns_not_final_up_to_its_bound(chain, queues):
    for i in (1, 2, 3):
        chain.route(inbound("hi", i))
    fourth = chain.route(inbound("hi", 4))
    assert first_delivery(chain, fourth, lambda _: None) is None
    [(_, delay)] = queues.sent[ROUTES.get(fourth.route).queue]
    assert delay == 3 * ORDER_RETRY_DELAY_SECONDS
    assert retry_delay(_Decision(held_back_by=list(range(1, 20)))) == ORDER_RETRY_MAX_DELAY_SECONDS
