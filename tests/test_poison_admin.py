"""Poison listing and replay: against Azurite, and through the running gateway without duplicate replies."""

from __future__ import annotations

import time
import uuid

import pytest
import requests

from shared.clients.queues import QueueSender
from shared.models import INBOUND_QUEUE, REPLY_QUEUE, PoisonRecord, now_ms, poison_queue_name, poison_record_queue
from shared.poison_admin import ReplayRequest, list_poison, replay
from tests.support.messages import inbound


def record(msg, reason="intent service answered 503") -> PoisonRecord:
    return PoisonRecord(source_queue=INBOUND_QUEUE, reason=reason, error_type="TransientError", dequeue_count=5,
                        poisoned_at_ms=now_ms(), correlation_id=msg.correlation_id, message_id=msg.message_id,
                        original=msg.to_queue_text())


@pytest.fixture(scope="module")
def own_azurite(stack_logs):
    """An Azurite of its own: the session's one feeds a running gateway that would consume chat-inbound."""
    from devstack.stack import Azurite
    svc = Azurite(0, log_dir=stack_logs).start()
    yield svc
    svc.stop()


@pytest.fixture
def sender(own_azurite):
    s = QueueSender(own_azurite.connection_string, "base64")
    for q in (INBOUND_QUEUE, REPLY_QUEUE, *(f(x) for x in (INBOUND_QUEUE, REPLY_QUEUE)
                                            for f in (poison_queue_name, poison_record_queue))):
        s.ensure_queue(q)
        s.client(q).clear_messages()
    return s


def test_lists_app_records_and_host_moved_messages(sender):
    msg = inbound("hi", 31)
    sender.send_poison(record(msg))
    sender.send(poison_queue_name(REPLY_QUEUE), '{"type": "reply", "correlation_id": "c-raw", "message_id": 77}')
    entries = {e.source_queue: e for e in list_poison(sender).entries}
    app, host = entries[INBOUND_QUEUE], entries[REPLY_QUEUE]
    assert (app.recorded_by, app.reason, app.message_id, app.correlation_id) == \
        ("app", "intent service answered 503", 31, msg.correlation_id)
    assert host.recorded_by == "host" and host.message_id == 77 and "no reason recorded" in host.reason


def test_replay_moves_only_the_selected_messages_back(sender):
    a, b = inbound("hi", 41), inbound("hello", 42)
    sender.send_poison(record(a))
    sender.send_poison(record(b))
    done = replay(sender, ReplayRequest(message_ids=[42]))
    assert [e.message_id for e in done] == [42]
    from shared.models import InboundMessage, decode
    [requeued] = [decode(m.content, InboundMessage) for m in sender.peek(INBOUND_QUEUE)]
    assert requeued == b.model_copy(update={"replayed": True})
    assert [e.message_id for e in list_poison(sender).entries] == [41]  # the other one is still there, visible


@pytest.mark.parametrize("body, fragment", [({}, "select messages"), ({"queues": ["nope"], "all": True}, "unknown"),
                                            ({"all": True, "surprise": 1}, "surprise")])
def test_replay_request_must_select_something_known(body, fragment):
    with pytest.raises(ValueError, match=fragment):
        ReplayRequest.model_validate(body)


@pytest.mark.stack
def test_replay_through_the_gateway_answers_once(gateway, stack_settings, sendbird_standin):
    """A message poisoned before it was answered is replayed: one reply; replayed again: still one."""
    sender = QueueSender(stack_settings["AzureWebJobsStorage"], "base64")
    channel = f"sendbird_group_channel_{uuid.uuid4().hex[:10]}"
    msg = inbound("안녕하세요", int(uuid.uuid4().int % 10**12)).model_copy(
        update={"channel_url": channel, "user_id": f"replay-{uuid.uuid4().hex[:6]}"})
    admin = gateway.base_url + "/api/ops/poison"

    def replay_via_http():
        sender.send_poison(record(msg))
        listed = requests.get(admin, timeout=10).json()
        assert msg.correlation_id in {m["correlation_id"] for m in listed["messages"]}
        r = requests.post(admin + "/replay", json={"correlation_ids": [msg.correlation_id]}, timeout=10)
        assert r.status_code == 200 and r.json()["replayed"] == 1

    def replies():
        return [m for m in sendbird_standin.control.messages(channel) if m.get("dedup_id") == f"reply-{msg.message_id}"]

    replay_via_http()
    deadline = time.monotonic() + 20
    while not replies() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(replies()) == 1
    attempts = sendbird_standin.control.counters()["attempts"]
    replay_via_http()
    time.sleep(2.5)
    assert len(replies()) == 1
    assert sendbird_standin.control.counters()["attempts"] == attempts  # the second replay did not call SendBird


@pytest.mark.stack
def test_replay_endpoint_rejects_a_bad_body_with_a_reason(gateway):
    r = requests.post(gateway.base_url + "/api/ops/poison/replay", data=b'{"queues": ["x"]}', timeout=10)
    assert r.status_code == 400 and "unknown queues" in r.json()["error"]["message"]


def test_a_record_written_twice_is_listed_once(sender):
    msg = inbound("hi", 51)
    rec = record(msg)
    sender.send_poison(rec)
    sender.send_poison(rec)  # a poison trigger retried after writing its record
    assert [e.message_id for e in list_poison(sender).entries] == [51]


def test_replay_all_does_not_replay_twice_a_message_poisoned_again_during_the_scan(sender):
    """Replay-all used to keep receiving until the queue was empty: a replayed message that failed again and
    was poisoned anew during the scan was replayed a second time."""
    sender.send_poison(record(inbound("hi", 61)))
    [peeked] = sender.peek(poison_record_queue(INBOUND_QUEUE))
    first_ms = peeked.inserted_at_ms  # Storage insertion times have one-second resolution
    started = first_ms + 1000  # the replay starts one second after the first poisoning...
    while now_ms() < first_ms + 2100:
        time.sleep(0.1)
    sender.send_poison(record(inbound("hi again", 62)))  # ...and this one is poisoned after it started
    done = replay(sender, ReplayRequest(all=True, queues=[INBOUND_QUEUE]), started_ms=started)
    assert [e.message_id for e in done] == [61]
    assert [e.message_id for e in list_poison(sender).entries] == [62]  # left for the next replay, visible


@pytest.mark.parametrize("mode", ["mask", "strict"])
def test_the_listing_redacts_bodies_in_pii_modes(sender, mode):
    from shared.telemetry import Redactor
    msg = inbound("where is my order 20261119-0042?", 71)
    sender.send_poison(record(msg))
    [entry] = list_poison(sender).entries
    shown = entry.to_dict(Redactor(mode, "k" * 32))["original"]
    assert msg.user_id not in shown and "20261119" not in shown and msg.channel_url not in shown
    assert entry.to_dict()["original"] == msg.to_queue_text()  # replay still has the real body


def test_the_listing_pages_through_more_records_than_one_receive_returns(sender):
    for i in range(40):
        sender.send_poison(record(inbound("hi", 1000 + i)))
    first = list_poison(sender, (INBOUND_QUEUE,), limit=25)
    second = list_poison(sender, (INBOUND_QUEUE,), offset=first.next_offset, limit=25)
    ids = [e.message_id for e in first.entries + second.entries]
    assert len(first.entries) == 25 and second.next_offset is None and sorted(ids) == list(range(1000, 1040))
    assert len(list_poison(sender, (INBOUND_QUEUE,)).entries) == 40  # the listing hid nothing for good


def test_a_deeply_nested_body_in_a_poison_queue_does_not_break_the_listing(sender):
    sender.send_poison(record(inbound("hi", 81)))
    sender.send(poison_queue_name(INBOUND_QUEUE), "[" * 10_000 + "]" * 10_000)  # a hostile raw body (20 KB)
    entries = list_poison(sender).entries
    assert sorted(e.recorded_by for e in entries) == ["app", "host"]
    assert [e.message_id for e in entries if e.recorded_by == "app"] == [81]


def test_a_record_of_a_version_this_build_cannot_read_is_listed_as_a_record_and_replays_its_original():
    """Rolling upgrades (shared/models.py): a newer build's record with a version this build does not read is still
    the app's record; its replay must re-send the message it holds, never the record itself."""
    import json

    from shared.poison_admin import parse_entry

    msg = inbound("hi", 51)
    newer = {**json.loads(record(msg).model_dump_json()), "version": 2, "reason": "why, as a newer build says it"}
    entry = parse_entry(INBOUND_QUEUE, "id-1", json.dumps(newer))
    assert entry.recorded_by == "app" and entry.original == msg.to_queue_text()
    assert (entry.message_id, entry.correlation_id) == (51, msg.correlation_id)
    assert "cannot read (version 2" in entry.reason and "why, as a newer build says it" in entry.reason
    # a raw message is still a raw message, and a body that only says "poison" without an original too
    raw = parse_entry(INBOUND_QUEUE, "id-2", msg.to_queue_text())
    assert raw.recorded_by == "host" and raw.original == msg.to_queue_text()
    bogus = parse_entry(INBOUND_QUEUE, "id-3", '{"type": "poison", "version": 2}')
    assert bogus.recorded_by == "host"
