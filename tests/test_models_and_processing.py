"""Queue message versioning and the retry/poison policy of every queue stage."""

from __future__ import annotations

import json

import pytest

from shared.errors import PermanentError, TransientError
from shared.models import INBOUND_QUEUE, InboundMessage, ReplyMessage, decode, now_ms
from shared.processing import QueueStage, RetryPolicy, run_queue_stage
from shared.telemetry import DISABLED


def inbound(**changes) -> InboundMessage:
    t = now_ms()
    base = dict(correlation_id="c0ffee", message_id=42, channel_url="ch-1", user_id="u-1",
                sendbird_created_at_ms=t, received_at_ms=t, enqueued_at_ms=t, message_type="MESG", text="hi")
    return InboundMessage(**{**base, **changes})


def test_round_trip_keeps_every_field():
    m = inbound(text="배송 조회 😀")
    assert decode(m.to_queue_text().encode("utf-8"), InboundMessage) == m


@pytest.mark.parametrize("body, fragment", [
    (b"\xff\xfe", "undecodable"),
    (b"not json", "undecodable"),
    (b"[]", "expected a JSON object"),
    (json.dumps({"type": "reply", "version": 1}).encode(), "wrong message type"),
    (json.dumps({"type": "inbound", "version": 2}).encode(), "unknown inbound message version 2"),
    (json.dumps({"type": "inbound", "version": 1, "message_id": "x"}).encode(), "invalid inbound message"),
    (json.dumps({"type": "inbound", "version": True}).encode(), "unknown inbound message version True"),
    (json.dumps({"type": "inbound", "version": 1.0}).encode(), "unknown inbound message version 1.0"),
    (b"[" * 50_000 + b"]" * 50_000, "nested too deeply"),
    (json.dumps({**json.loads(inbound().to_queue_text()), "message_id": 2**53}).encode(), "message_id"),
])
def test_decode_refuses_with_a_reason(body, fragment):
    with pytest.raises(PermanentError) as err:
        decode(body, InboundMessage)
    assert fragment in err.value.reason


def test_unknown_fields_are_ignored_and_not_carried_along():
    """A newer build may add optional fields within a version (shared/models.py, "Rolling upgrades and message
    versions"; tests/test_message_compat.py): this build reads the message as it always did and drops the field."""
    m = inbound()
    decoded = decode(json.dumps({**json.loads(m.to_queue_text()), "surprise": 1}), InboundMessage)
    assert decoded == m and "surprise" not in decoded.to_queue_text()


def test_known_fields_are_still_validated_beside_unknown_ones():
    data = {**json.loads(inbound().to_queue_text()), "surprise": 1, "message_type": "VIDEO"}
    with pytest.raises(PermanentError, match="message_type"):
        decode(json.dumps(data), InboundMessage)


def test_following_carries_ids_and_stamps_enqueue_time():
    m = inbound(enqueued_at_ms=1)
    r = ReplyMessage.following(m, text="hello", language="en", reply_key="greeting.hello", dedup_id="reply-42")
    assert (r.message_id, r.channel_url, r.user_id, r.correlation_id) == (42, "ch-1", "u-1", "c0ffee")
    assert r.enqueued_at_ms > 1 and r.received_at_ms == m.received_at_ms


def run(body, queues, work, dequeue_count=1, on_poison=None, retry_budget_seconds=0):
    stage = QueueStage(INBOUND_QUEUE, InboundMessage, "intent_stage", on_poison=on_poison)
    return run_queue_stage(body, dequeue_count, stage, work, RetryPolicy(queues, 5, retry_budget_seconds))


def test_success_returns_the_work_result(queues):
    assert run(inbound().to_queue_text().encode(), queues, lambda m: m.text) == "hi"
    assert queues.sent == {}


def test_undecodable_message_is_poisoned_at_once_with_reason(queues):
    assert run(b'{"type": "inbound", "version": 9}', queues, lambda m: pytest.fail("must not run")) is None
    [record] = queues.poison_records(INBOUND_QUEUE)
    assert "version 9" in record.reason and record.dequeue_count == 1
    assert record.original == '{"type": "inbound", "version": 9}' and record.correlation_id is None


def test_permanent_error_poisons_and_calls_on_poison(queues):
    seen = []

    def work(m):
        raise PermanentError("intent service rejected the request (401)")

    run(inbound().to_queue_text().encode(), queues, work, on_poison=lambda m, r: seen.append((m.message_id, r)))
    [record] = queues.poison_records(INBOUND_QUEUE)
    assert record.reason == "intent service rejected the request (401)"
    assert record.correlation_id == "c0ffee" and record.message_id == 42
    assert seen == [(42, "intent service rejected the request (401)")]


@pytest.mark.parametrize("error", [TransientError("timeout"), RuntimeError("bug")])
def test_failures_before_the_last_attempt_are_reraised_for_the_host(queues, error):
    def work(m):
        raise error

    for attempt in range(1, 5):
        with pytest.raises(type(error)):
            run(inbound().to_queue_text().encode(), queues, work, dequeue_count=attempt)
    assert queues.sent == {}


def test_last_attempt_poisons_with_the_last_error(queues):
    def work(m):
        raise TransientError("intent service answered 503")

    assert run(inbound().to_queue_text().encode(), queues, work, dequeue_count=5) is None
    [record] = queues.poison_records(INBOUND_QUEUE)
    assert record.reason == "failed 5 times; last error: intent service answered 503"
    assert record.error_type == "TransientError"


def test_failing_apology_does_not_undo_the_poison_record(queues):
    def boom(m, r):
        raise RuntimeError("reply queue down")

    run(inbound().to_queue_text().encode(), queues, lambda m: (_ for _ in ()).throw(PermanentError("x")),
        on_poison=boom)
    assert len(queues.poison_records(INBOUND_QUEUE)) == 1


def test_a_stage_that_produces_a_message_appends_its_hop(queues):
    import time as _time

    from shared import timing
    from shared.models import ReplyMessage

    def work(m):
        with timing.dependency(DISABLED, "intent"):
            _time.sleep(0.02)
        return ReplyMessage.following(m, text="hi", language="en", reply_key="greeting.hello", dedup_id="r-1")

    queued = inbound(enqueued_at_ms=now_ms() - 150)
    out = run(queued.to_queue_text().encode(), queues, work)
    [hop] = out.hops
    assert hop.stage == INBOUND_QUEUE and hop.queue_wait_ms >= 150
    assert hop.dependency_ms["intent"] >= 20 and hop.duration_ms >= hop.dependency_ms["intent"]


def test_rate_limited_work_is_requeued_with_the_delay_within_the_budget(queues):
    from shared.errors import RateLimited

    def work(m):
        raise RateLimited("intent service circuit open", 4)

    body = inbound().to_queue_text().encode()
    assert run(body, queues, work, retry_budget_seconds=60) is None
    assert queues.sent[INBOUND_QUEUE] == [(body.decode(), 4)]  # same message, delayed, no attempt used up


def test_rate_limited_beyond_the_budget_is_retried_then_poisoned(queues):
    from shared.errors import RateLimited

    def work(m):
        raise RateLimited("intent service circuit open", 4)

    old = inbound(received_at_ms=now_ms() - 59_000).to_queue_text().encode()
    with pytest.raises(RateLimited):
        run(old, queues, work, retry_budget_seconds=60)
    run(old, queues, work, dequeue_count=5, retry_budget_seconds=60)
    assert INBOUND_QUEUE not in queues.sent and "circuit open" in queues.poison_records(INBOUND_QUEUE)[0].reason
