"""Property-based tests (hypothesis): bad input gets a reason, never a crash.

Webhooks: any body, signed or not, gets 200/4xx with a JSON reason, and an accepted one always
yields a valid queue message. Queue messages: any body either decodes or is poisoned with a
reason; the stage runner never raises for bad input.
"""

from __future__ import annotations

import json

from hypothesis import HealthCheck, given, settings as hsettings, strategies as st

from shared.errors import PermanentError
from shared.intake import handle_webhook
from shared.models import INBOUND_QUEUE, MAX_UTTERANCE_CHARS, InboundMessage, ReplyMessage, RoutedMessage, decode
from shared.processing import QueueStage, RetryPolicy, run_queue_stage
from shared.settings import load_settings
from shared.signature import sign, verify
from tests.support.samples import SAMPLE_TOKEN, payload, sample_values
from tests.support.fakes import RecordingQueueSender

SETTINGS = load_settings(sample_values()).settings
BASE_EVENT = json.loads(payload("message_send_en.json"))
SETTINGS_PROFILE = hsettings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

json_leaf = st.one_of(st.none(), st.booleans(), st.integers(min_value=-2**70, max_value=2**70),
                      st.floats(allow_nan=False), st.text(max_size=50))
json_value = st.recursive(json_leaf, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                             st.dictionaries(st.text(max_size=8), inner, max_size=4)),
                          max_leaves=12)
PATHS = [("category",), ("type",), ("sender",), ("sender", "user_id"), ("channel",), ("channel", "channel_url"),
         ("payload",), ("payload", "message_id"), ("payload", "message"), ("payload", "created_at")]


def check_answer(decision):
    assert decision.status in (200, 400, 401, 413)
    json.dumps(decision.body)  # always serializable
    if decision.status == 200:
        assert decision.body["status"] in ("accepted", "ignored")
        assert (decision.inbound is not None) == (decision.body["status"] == "accepted")
        if decision.inbound is not None:
            assert decode(decision.inbound.to_queue_text().encode("utf-8"), InboundMessage) == decision.inbound
            assert len(decision.inbound.to_queue_text().encode("utf-8")) * 4 / 3 < 64 * 1024
    else:
        assert decision.body["error"]["code"] and decision.body["error"]["message"]
        assert decision.inbound is None


@SETTINGS_PROFILE
@given(body=st.binary(max_size=2048), signed=st.booleans())
def test_any_bytes_get_an_answer_with_a_reason(body, signed):
    headers = {"x-sendbird-signature": sign(body, SAMPLE_TOKEN)} if signed else {}
    d = handle_webhook(body, headers, SETTINGS)
    check_answer(d)
    if not signed:
        assert d.status in (401, 413)


@SETTINGS_PROFILE
@given(path=st.sampled_from(PATHS), value=json_value)
def test_wrong_types_anywhere_in_a_message_send_event(path, value):
    event = json.loads(json.dumps(BASE_EVENT))
    target = event
    for key in path[:-1]:
        if not isinstance(target.get(key), dict):
            target[key] = {}
        target = target[key]
    target[path[-1]] = value
    body = json.dumps(event).encode()
    check_answer(handle_webhook(body, {"x-sendbird-signature": sign(body, SAMPLE_TOKEN)}, SETTINGS))


@SETTINGS_PROFILE
@given(text=st.text(min_size=1, max_size=12_000))
def test_huge_unicode_text_is_accepted_within_the_queue_limit(text):
    event = json.loads(json.dumps(BASE_EVENT))
    event["payload"]["message"] = text
    body = json.dumps(event, ensure_ascii=False).encode("utf-8", errors="surrogatepass")
    d = handle_webhook(body, {"x-sendbird-signature": sign(body, SAMPLE_TOKEN)}, SETTINGS)
    check_answer(d)
    if d.inbound is not None:
        assert len(d.inbound.text) <= MAX_UTTERANCE_CHARS


@SETTINGS_PROFILE
@given(body=st.binary(max_size=512), flip=st.integers(min_value=0, max_value=511))
def test_signature_covers_every_byte(body, flip):
    sig = sign(body, SAMPLE_TOKEN)
    assert verify(body, sig, SAMPLE_TOKEN)
    if body:
        i = flip % len(body)
        tampered = body[:i] + bytes([body[i] ^ 0x01]) + body[i + 1:]
        assert not verify(tampered, sig, SAMPLE_TOKEN)


MODELS = [InboundMessage, RoutedMessage, ReplyMessage]


@SETTINGS_PROFILE
@given(body=st.one_of(st.binary(max_size=1024), json_value.map(lambda v: json.dumps(v).encode())),
       model=st.sampled_from(MODELS))
def test_decode_either_parses_or_raises_permanent_error(body, model):
    try:
        decode(body, model)
    except PermanentError as exc:
        assert exc.reason
    # any other exception fails the test


@SETTINGS_PROFILE
@given(version=st.one_of(st.integers(), st.text(max_size=5), st.none(), st.floats(allow_nan=False)),
       model=st.sampled_from(MODELS))
def test_unknown_versions_are_refused_with_the_version_named(version, model):
    if version == model.VERSION:
        return
    body = json.dumps({"type": model.TYPE, "version": version}).encode()
    try:
        decode(body, model)
        raise AssertionError("an unknown version was accepted")
    except PermanentError as exc:
        assert "version" in exc.reason


@SETTINGS_PROFILE
@given(body=st.one_of(st.binary(max_size=1024), json_value.map(lambda v: json.dumps(v).encode())),
       dequeue_count=st.integers(min_value=1, max_value=5))
def test_stage_runner_poisons_bad_bodies_with_a_reason_and_never_raises(body, dequeue_count):
    queues = RecordingQueueSender()
    result = run_queue_stage(body, dequeue_count, QueueStage(INBOUND_QUEUE, InboundMessage, "intent_stage"),
                             lambda m: "ran", RetryPolicy(queues, max_dequeue_count=5))
    poisoned = queues.poison_records(INBOUND_QUEUE)
    if result == "ran":
        assert poisoned == []
    else:
        [record] = poisoned
        assert record.reason and record.source_queue == INBOUND_QUEUE
        assert record.original == body.decode("utf-8", errors="replace")
