"""End to end through the local stack: signed SendBird webhook -> real functions (local runner, Azurite queues,
Cosmos DB stand-in, the intent service) -> reply recorded by the SendBird stand-in."""

from __future__ import annotations

import json
import re
import time
import uuid

import pytest
import requests

from shared.clients.queues import QueueSender
from shared.models import INBOUND_QUEUE, PoisonRecord, poison_record_queue
from shared.signature import sign
from tests.support.samples import SAMPLE_TOKEN, payload
from tools import webhooks
from tools.send_webhook import refresh_created_at

pytestmark = pytest.mark.stack
REPLY_TIMEOUT = 20.0


@pytest.fixture(scope="module")
def http():
    return requests.Session()


def post(gateway, http, body: bytes, signature: str | None = "auto", **kwargs):
    """POST ``body`` to the intake; signed with the sample token when ``signature`` is "auto", after setting
    ``payload.created_at`` to now (the intake's replay window refuses the sample files' old timestamps)."""
    headers = {"Content-Type": "application/json"}
    if signature == "auto":
        body = refresh_created_at(body)
    if signature is not None:
        headers["x-sendbird-signature"] = sign(body, SAMPLE_TOKEN) if signature == "auto" else signature
    return http.post(gateway.base_url + webhooks.WEBHOOK_PATH, data=body, headers=headers, timeout=10, **kwargs)


def wait_reply(standin, channel_url: str, message_id: int, timeout: float = REPLY_TIMEOUT) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = [m for m in standin.control.messages(channel_url) if m.get("dedup_id") == f"reply-{message_id}"]
        if found:
            return found[0]
        time.sleep(0.05)
    raise AssertionError(f"no reply to message {message_id} within {timeout} s")


def no_reply(standin, channel_url: str, message_id: int, window: float = 2.0) -> bool:
    time.sleep(window)
    return not [m for m in standin.control.messages(channel_url) if m.get("dedup_id") == f"reply-{message_id}"]


def say(gateway, http, user: str, channel: str, text: str, message_type: str = "MESG") -> int:
    mid = int(uuid.uuid4().int % 10**15)
    body = webhooks.encode(webhooks.message_send_event(user_id=user, text=text, message_id=mid, channel_url=channel,
                                                       message_type=message_type))
    r = post(gateway, http, body)
    assert r.status_code == 200 and r.json()["status"] == "accepted", r.text
    return mid


def test_sample_english_webhook_gets_a_reply(gateway, sendbird_standin, http):
    r = post(gateway, http, payload("message_send_en.json"))
    assert r.status_code == 200
    body = r.json()
    assert body["status"] == "accepted" and body["message_id"] == 1758211234567
    msg = wait_reply(sendbird_standin, body["channel_url"], body["message_id"])
    data = json.loads(msg["data"])
    assert data["correlation_id"] == body["correlation_id"]
    assert data["route"] in {"order_status", "greeting", "fallback"} and msg["user"]["user_id"] == "ssg_bot"
    assert msg["created_at"] >= 1763600000123


def test_sample_korean_webhook_gets_a_korean_reply(gateway, sendbird_standin, http):
    r = post(gateway, http, payload("message_send_ko.json"))
    msg = wait_reply(sendbird_standin, r.json()["channel_url"], r.json()["message_id"])
    assert re.search("[가-힣]", msg["message"])


def test_bot_message_is_ignored_and_never_answered(gateway, sendbird_standin, http):
    r = post(gateway, http, payload("message_send_from_bot.json"))
    assert r.status_code == 200 and r.json()["reason"] == "sent_by_bot"
    assert no_reply(sendbird_standin, r.json()["channel_url"], r.json()["message_id"])


def test_file_gets_a_text_only_reply(gateway, sendbird_standin, http):
    r = post(gateway, http, payload("message_send_file.json"))
    msg = wait_reply(sendbird_standin, r.json()["channel_url"], r.json()["message_id"])
    assert json.loads(msg["data"])["reply_key"] == "unsupported.file"


def test_order_status_slot_filling_across_messages(gateway, sendbird_standin, http):
    user, channel = f"e2e-{uuid.uuid4().hex[:8]}", f"sendbird_group_channel_{uuid.uuid4().hex[:10]}"
    first = say(gateway, http, user, channel, "I want to check my order status")
    ask = wait_reply(sendbird_standin, channel, first)
    assert json.loads(ask["data"])["reply_key"] == "order_status.ask_number"
    second = say(gateway, http, user, channel, "20261119-0042")
    found = wait_reply(sendbird_standin, channel, second)
    assert json.loads(found["data"])["reply_key"] == "order_status.found" and "20261119-0042" in found["message"]


def test_handoff_silences_the_bot(gateway, sendbird_standin, http):
    user, channel = f"e2e-{uuid.uuid4().hex[:8]}", f"sendbird_group_channel_{uuid.uuid4().hex[:10]}"
    first = say(gateway, http, user, channel, "상담원 연결해 주세요")
    assert json.loads(wait_reply(sendbird_standin, channel, first)["data"])["route"] == "handoff"
    second = say(gateway, http, user, channel, "안녕하세요")
    assert no_reply(sendbird_standin, channel, second)


# ------------------------------------------------------------------ every error answer over real HTTP
@pytest.mark.parametrize("name, body, signature, status, code", [
    ("missing signature", payload("message_send_en.json"), None, 401, "missing_signature"),
    ("bad signature", payload("message_send_en.json"), "ab" * 32, 401, "invalid_signature"),
    ("bad json", b"{oops", "auto", 400, "invalid_json"),
    ("missing field", b'{"category": "group_channel:message_send", "type": "MESG"}', "auto", 400, "invalid_payload"),
    ("too large", b" " * 40_000, "auto", 413, "payload_too_large"),
])
def test_intake_error_answers(gateway, http, name, body, signature, status, code):
    r = post(gateway, http, body, signature=signature)
    assert r.status_code == status, name
    assert r.headers["content-type"].startswith("application/json")
    assert r.json()["error"]["code"] == code and r.json()["error"]["message"]


def test_other_category_is_acknowledged(gateway, http):
    r = post(gateway, http, payload("group_channel_create.json"))
    assert r.status_code == 200 and r.json()["status"] == "ignored"


# ------------------------------------------------------------------ poison
def wait_poison(sender: QueueSender, queue: str, marker: str, timeout: float = 20.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for m in sender.peek(poison_record_queue(queue)):
            if marker in m.content:
                return m.content
        time.sleep(0.1)
    raise AssertionError(f"nothing with {marker!r} reached {poison_record_queue(queue)} within {timeout} s")


@pytest.mark.parametrize("body, reason", [
    ('{"type": "inbound", "version": 7, "marker": "%s"}', "unknown inbound message version 7"),
    ('not json at all %s', "undecodable inbound message"),
])
def test_bad_queue_message_lands_in_poison_with_its_reason(gateway, stack_settings, body, reason):
    sender = QueueSender(stack_settings["AzureWebJobsStorage"], "base64")
    marker = uuid.uuid4().hex
    sender.send(INBOUND_QUEUE, body % marker)
    record = PoisonRecord.model_validate_json(wait_poison(sender, INBOUND_QUEUE, marker))
    assert reason in record.reason and record.source_queue == INBOUND_QUEUE and marker in record.original


def test_a_message_the_host_moved_to_the_poison_queue_gets_a_record_and_one_apology(gateway, stack_settings,
                                                                                    sendbird_standin):
    """What the host does when the last attempt crashed or timed out: the raw body lands in chat-inbound-poison.
    The poison trigger records it with a reason and the user gets the apology, once."""
    from shared.models import InboundMessage, now_ms, poison_queue_name
    sender = QueueSender(stack_settings["AzureWebJobsStorage"], "base64")
    channel = f"sendbird_group_channel_{uuid.uuid4().hex[:8]}"
    t = now_ms()
    msg = InboundMessage(correlation_id=uuid.uuid4().hex, message_id=int(uuid.uuid4().int % 10**12),
                         channel_url=channel, user_id=f"u-{uuid.uuid4().hex[:6]}", sendbird_created_at_ms=t,
                         received_at_ms=t, enqueued_at_ms=t, message_type="MESG", text="where is my order?")
    sender.send(poison_queue_name(INBOUND_QUEUE), msg.to_queue_text())
    sender.send(poison_queue_name(INBOUND_QUEUE), msg.to_queue_text())  # moved twice (a redelivery): one apology
    record = PoisonRecord.model_validate_json(wait_poison(sender, INBOUND_QUEUE, msg.correlation_id))
    assert "moved to the poison queue by the Functions host" in record.reason and record.message_id == msg.message_id
    sendbird_standin.control.wait_for_messages(1, timeout=REPLY_TIMEOUT, channel_url=channel)
    time.sleep(2)
    sent = sendbird_standin.control.messages(channel)
    assert [m["dedup_id"] for m in sent] == [f"apology-{msg.message_id}"]


# --------------------------------------------------------------------------- long messages


LONG_MESSAGES = [
    ("en", "Hello! " + "I have been a loyal customer for many years and I always liked your shop, the staff were "
     "kind and the parcels came quickly, but this time something went wrong and I am getting worried. " * 20
     + "So please tell me: where is my order 20261119-0042?", "order_status"),
    ("ko", "안녕하세요. " + "저는 오랫동안 이 쇼핑몰을 이용해 온 고객이고 늘 만족했는데 이번에는 조금 걱정이 되어서 글을 남깁니다. " * 30
     + "제가 주문한 상품 배송 조회 좀 해주세요. 주문번호는 20261119-0042 입니다.", "order_status"),
]


@pytest.mark.parametrize("language, text, route", LONG_MESSAGES, ids=[m[0] for m in LONG_MESSAGES])
def test_a_long_message_is_classified_and_answered_like_a_short_one(gateway, sendbird_standin, http, language,
                                                                     text, route):
    assert 1_000 < len(text) <= 4_000
    user, channel = f"long-{uuid.uuid4().hex[:8]}", f"sendbird_group_channel_{uuid.uuid4().hex[:8]}"
    mid = say(gateway, http, user, channel, text)
    msg = wait_reply(sendbird_standin, channel, mid)
    data = json.loads(msg["data"])
    assert data["reply_key"] != "apology.error" and data["route"] == route, data
    assert "20261119-0042" in msg["message"]  # the order number at the end of the message was found
    assert bool(re.search("[가-힣]", msg["message"])) == (language == "ko")
