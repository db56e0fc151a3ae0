"""Every answer of the webhook intake (plain code, no HTTP)."""

from __future__ import annotations

import json
import re

import pytest

from shared.intake import handle_webhook
from shared.models import InboundMessage, decode
from shared.signature import sign
from tests.support.samples import SAMPLE_NOW_MS, SAMPLE_TOKEN, payload


def call(body: bytes, settings, signature: str | None = "auto"):
    headers = {} if signature is None else {"x-sendbird-signature": sign(body, SAMPLE_TOKEN) if signature == "auto" else signature}
    return handle_webhook(body, headers, settings, clock=lambda: SAMPLE_NOW_MS)


def test_sample_signatures_match_the_documented_ones():
    readme = (payload("README.md")).decode()
    for name, sig in re.findall(r"`(\w+\.json)`: `([0-9a-f]{64})`", readme):
        assert sign(payload(name), SAMPLE_TOKEN) == sig, name


def test_text_message_is_accepted_and_enqueued(settings):
    d = call(payload("message_send_en.json"), settings)
    assert d.status == 200 and d.body["status"] == "accepted"
    assert d.inbound is not None
    assert d.inbound.message_id == 1758211234567
    assert d.inbound.user_id == "customer_1042"
    assert d.inbound.channel_url.startswith("sendbird_group_channel_24371592")
    assert d.inbound.text == "Hi, where is my order 20261119-0042?"
    assert d.inbound.sendbird_created_at_ms == 1763600000123
    assert d.body["correlation_id"] == d.inbound.correlation_id
    # the enqueued text decodes back to the same message
    assert decode(d.inbound.to_queue_text().encode(), InboundMessage) == d.inbound


def test_korean_text_survives_the_queue_encoding(settings):
    d = call(payload("message_send_ko.json"), settings)
    assert d.inbound.text == "안녕하세요, 주문한 상품 배송 조회 좀 해주세요"
    assert "안녕하세요" in d.inbound.to_queue_text()


@pytest.mark.parametrize("signature, code", [(None, "missing_signature"), ("0" * 64, "invalid_signature"),
                                              ("not-hex", "invalid_signature")])
def test_bad_or_missing_signature_is_401(settings, signature, code):
    d = call(payload("message_send_en.json"), settings, signature=signature)
    assert d.status == 401 and d.body["error"]["code"] == code and d.inbound is None


def test_signature_over_other_bytes_is_401(settings):
    body = payload("message_send_en.json")
    reserialized = json.dumps(json.loads(body)).encode()  # same JSON, other bytes
    d = handle_webhook(reserialized, {"x-sendbird-signature": sign(body, SAMPLE_TOKEN)}, settings,
                       clock=lambda: SAMPLE_NOW_MS)
    assert d.status == 401


def test_uppercase_hex_signature_is_accepted(settings):
    body = payload("message_send_en.json")
    d = call(body, settings, signature=sign(body, SAMPLE_TOKEN).upper())
    assert d.status == 200


def test_body_over_limit_is_413_before_signature_check(settings):
    body = b'{"category": "' + b"x" * settings.webhook_max_body_bytes + b'"}'
    d = call(body, settings, signature="0" * 64)
    assert d.status == 413 and d.body["error"]["code"] == "payload_too_large"
    assert str(settings.webhook_max_body_bytes) in d.body["error"]["message"]


@pytest.mark.parametrize("body", [b"{not json", b"\xff\xfe\x00", b"[1, 2]", b'"text"', b"{}"])
def test_unparsable_or_non_object_json_is_400(settings, body):
    d = call(body, settings)
    assert d.status == 400 and d.body["error"]["message"]


@pytest.mark.parametrize("path", [("payload", "message_id"), ("sender", "user_id"), ("channel", "channel_url"),
                                  ("payload", "created_at"), ("type",)])
def test_message_send_missing_required_field_is_400_naming_it(settings, path):
    event = json.loads(payload("message_send_en.json"))
    target = event
    for key in path[:-1]:
        target = target[key]
    del target[path[-1]]
    d = call(json.dumps(event).encode(), settings)
    assert d.status == 400 and d.body["error"]["code"] == "invalid_payload"
    assert path[-1] in d.body["error"]["message"]


def test_other_category_is_ignored_with_200(settings):
    d = call(payload("group_channel_create.json"), settings)
    assert d.status == 200 and d.body == {"status": "ignored", "reason": "category_not_handled",
                                          "category": "group_channel:create"}
    assert d.inbound is None


def test_message_from_the_bot_is_ignored(settings):
    d = call(payload("message_send_from_bot.json"), settings)
    assert d.status == 200 and d.body["reason"] == "sent_by_bot" and d.inbound is None


def test_message_from_an_ignored_sender_is_ignored(settings):
    s = settings.model_copy(update={"sendbird_ignored_sender_ids": "agent_7, customer_1042"})
    d = call(payload("message_send_en.json"), s)
    assert d.status == 200 and d.body["reason"] == "sender_ignored" and d.inbound is None


def test_file_message_is_enqueued_for_a_text_only_reply(settings):
    d = call(payload("message_send_file.json"), settings)
    assert d.status == 200 and d.inbound.message_type == "FILE"
    assert d.inbound.text == "" and d.inbound.file_name == "receipt.png"


def test_admin_message_is_ignored(settings):
    event = json.loads(payload("message_send_en.json"))
    event["type"] = "ADMM"
    d = call(json.dumps(event).encode(), settings)
    assert d.status == 200 and d.body["reason"] == "admin_message" and d.inbound is None


def test_blank_text_is_ignored(settings):
    event = json.loads(payload("message_send_en.json"))
    event["payload"]["message"] = "   "
    d = call(json.dumps(event).encode(), settings)
    assert d.status == 200 and d.body["reason"] == "empty_text"


def test_long_text_is_cut_to_the_utterance_limit(settings):
    from shared.models import MAX_UTTERANCE_CHARS
    event = json.loads(payload("message_send_en.json"))
    event["payload"]["message"] = "가" * (MAX_UTTERANCE_CHARS + 500)
    d = call(json.dumps(event, ensure_ascii=False).encode(), settings)
    assert d.status == 200 and len(d.inbound.text) == MAX_UTTERANCE_CHARS


def test_each_delivery_gets_its_own_correlation_id(settings):
    a, b = call(payload("message_send_en.json"), settings), call(payload("message_send_en.json"), settings)
    assert a.inbound.message_id == b.inbound.message_id
    assert a.inbound.correlation_id != b.inbound.correlation_id


# --------------------------------------------------------------------------- security review findings


def _event(settings, **payload_changes) -> bytes:
    event = json.loads(payload("message_send_en.json"))
    event["payload"].update(payload_changes)
    return json.dumps(event).encode()


@pytest.mark.parametrize("age_seconds, accepted", [(0, True), (599, True), (601, False), (3600 * 24 * 30, False),
                                                   (-59, True), (-61, False)])
def test_webhooks_outside_the_replay_window_are_refused_without_enqueueing(settings, age_seconds, accepted):
    now = 1_800_000_000_000
    body = _event(settings, created_at=now - age_seconds * 1000)
    d = handle_webhook(body, {"x-sendbird-signature": sign(body, SAMPLE_TOKEN)}, settings, clock=lambda: now)
    assert d.status == 200
    if accepted:
        assert d.body["status"] == "accepted" and d.inbound is not None
    else:
        assert d.body == {"status": "ignored", "reason": "stale_webhook", "message_id": 1758211234567,
                          "channel_url": d.body["channel_url"], "age_seconds": age_seconds} and d.inbound is None


def test_a_stale_webhook_is_counted_in_telemetry(settings):
    from shared.telemetry import NullTelemetry

    class RecordingTelemetry(NullTelemetry):
        def __init__(self):
            super().__init__()
            self.events = []

        def event(self, name, properties=None, measurements=None, traceparent=None):
            self.events.append((name, properties or {}, measurements or {}))

    tel = RecordingTelemetry()
    body = payload("message_send_en.json")
    handle_webhook(body, {"x-sendbird-signature": sign(body, SAMPLE_TOKEN)}, settings, telemetry=tel)
    assert [(n, p["reason"]) for n, p, _ in tel.events] == [("WebhookIgnored", "stale_webhook")]


def test_a_non_ascii_signature_is_401_not_500(settings):
    d = call(payload("message_send_en.json"), settings, signature="서명" * 32)
    assert d.status == 401 and d.body["error"]["code"] == "invalid_signature"


def test_a_signed_deeply_nested_body_is_400(settings):
    body = b"[" * 20_000 + b"]" * 20_000  # 40,000 bytes, under the body limit
    settings = settings.model_copy(update={"webhook_max_body_bytes": 45_000})
    d = call(body, settings)
    assert d.status == 400 and d.body["error"]["code"] == "invalid_json"
    assert "nested too deeply" in d.body["error"]["message"]


@pytest.mark.parametrize("message_id, status", [(2**53 - 1, 200), (2**53, 400), (2**63 - 1, 400)])
def test_message_ids_beyond_2_pow_53_are_400(settings, message_id, status):
    d = call(_event(settings, message_id=message_id), settings)
    assert d.status == status
    if status == 400:
        assert d.body["error"]["code"] == "invalid_payload" and "message_id" in d.body["error"]["message"]
