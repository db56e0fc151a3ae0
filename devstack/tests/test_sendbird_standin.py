"""The SendBird Platform API stand-in (in-process server and control API)."""

from __future__ import annotations

import threading
import time

import pytest
import requests

from devstack.sendbird_standin import SendBirdControlClient, StandInError

API_TOKEN = "test-api-token"  # same values as the conftest fixtures
BOT = "ssg_bot"

BASIC = {"message": "hello", "channel_url": "sendbird_group_channel_1"}


def test_health(sendbird):
    assert requests.get(f"{sendbird.base_url}/__standin/health", timeout=5).json()["status"] == "ok"


@pytest.mark.parametrize("token", [None, "", "wrong-token"])
def test_api_token_required(send, sendbird, token):
    resp = send(BASIC, token=token)
    assert resp.status_code == 401
    body = resp.json()
    assert body["error"] is True and body["code"] == 400401 and body["message"]
    assert sendbird.messages() == []
    assert sendbird.counters()["rejected"] == {"401": 1}


def test_unknown_bot_is_404(send, sendbird):
    resp = send(BASIC, bot="someone_else")
    assert resp.status_code == 404
    assert resp.json()["error"] is True
    assert sendbird.messages() == []


@pytest.mark.parametrize(
    "body, field",
    [
        ({"channel_url": "c"}, "message"),
        ({"message": "hi"}, "channel_url"),
        ({"message": "", "channel_url": "c"}, "message"),
        ({"message": "   ", "channel_url": "c"}, "message"),
        ({"message": 42, "channel_url": "c"}, "message"),
        ({"message": "hi", "channel_url": 7}, "channel_url"),
        ({"message": "hi", "channel_url": "c", "message_type": "FILE"}, "message_type"),
        ({"message": "hi", "channel_url": "c", "custom_type": 1}, "custom_type"),
        ({"message": "hi", "channel_url": "c", "data": {"a": 1}}, "data"),
        ({"message": "hi", "channel_url": "c", "send_push": "yes"}, "send_push"),
        ({"message": "hi", "channel_url": "c", "mark_as_read": 1}, "mark_as_read"),
        ({"message": "hi", "channel_url": "c", "dedup_id": 5}, "dedup_id"),
        ({"message": "hi", "channel_url": "c", "colour": "red"}, "colour"),
    ],
)
def test_validation_errors_name_the_field(send, sendbird, body, field):
    resp = send(body)
    assert resp.status_code == 400
    err = resp.json()
    assert err["error"] is True
    assert 400100 <= err["code"] < 400200
    assert field in err["message"]
    assert sendbird.messages() == []


def test_body_must_be_a_json_object(sendbird):
    url = f"{sendbird.base_url}/v3/bots/{BOT}/send"
    for data in (b"not json", b"[1, 2]"):
        resp = requests.post(url, data=data, headers={"Api-Token": API_TOKEN}, timeout=5)
        assert resp.status_code == 400 and resp.json()["error"] is True


def test_accepted_message_is_recorded_and_returned(send, sendbird):
    before = int(time.time() * 1000)
    resp = send({**BASIC, "custom_type": "bot_reply", "data": '{"intent": "greet"}',
                 "send_push": False, "mark_as_read": True, "message_type": "MESG"})
    assert resp.status_code == 200
    msg = resp.json()
    assert isinstance(msg["message_id"], int)
    assert msg["type"] == "MESG"
    assert msg["message"] == "hello"
    assert msg["channel_url"] == BASIC["channel_url"]
    assert msg["user"]["user_id"] == BOT
    assert msg["custom_type"] == "bot_reply" and msg["data"] == '{"intent": "greet"}'
    assert before <= msg["created_at"] <= int(time.time() * 1000)
    assert "dedup_id" not in msg

    recorded = sendbird.messages()
    assert len(recorded) == 1
    assert recorded[0]["message_id"] == msg["message_id"]
    assert recorded[0]["_standin"]["send_push"] is False

    second = send({**BASIC, "message": "again"}).json()
    assert second["message_id"] > msg["message_id"]
    assert [m["message"] for m in sendbird.messages()] == ["hello", "again"]
    c = sendbird.counters()
    assert (c["attempts"], c["accepted"], c["deduplicated"], c["rejected_total"]) == (2, 2, 0, 0)


def test_dedup_id_returns_the_original(send, sendbird):
    first = send({**BASIC, "dedup_id": "reply-123"}).json()
    again = send({**BASIC, "message": "different text", "dedup_id": "reply-123"})
    assert again.status_code == 200
    assert again.json() == first
    assert first["dedup_id"] == "reply-123"
    # same dedup_id in another channel is a different message
    other = send({**BASIC, "channel_url": "other_channel", "dedup_id": "reply-123"}).json()
    assert other["message_id"] != first["message_id"]

    msgs = sendbird.messages()
    assert len(msgs) == 2
    assert msgs[0]["_standin"]["send_attempts"] == 2
    c = sendbird.counters()
    assert (c["attempts"], c["accepted"], c["deduplicated"]) == (3, 2, 1)


def test_scripted_429_with_rate_limit_headers(send, sendbird):
    sendbird.add_faults([{"status": 429, "retry_after": 1, "times": 2}])
    for _ in range(2):
        resp = send(BASIC)
        assert resp.status_code == 429
        assert resp.headers["X-RateLimit-Limit"] == "100;w=60"
        assert resp.headers["X-RateLimit-Remaining"] == "0"
        assert resp.headers["X-RateLimit-RetryAfter"] == "1"
        assert resp.json() == {"error": True, "code": 500910, "message": resp.json()["message"]}
    assert send(BASIC).status_code == 200
    c = sendbird.counters()
    assert c["rejected"] == {"429": 2}
    assert (c["attempts"], c["accepted"], c["faults_applied"], c["faults_pending"]) == (3, 1, 2, 0)
    assert len(sendbird.messages()) == 1


def test_scripted_faults_apply_in_order_over_http(send, sendbird):
    control = SendBirdControlClient(sendbird.base_url)
    pending = control.add_faults([{"status": 503}, {"status": 500, "times": 1}, {"status": 429, "retry_after": 2.5}])
    assert [f["status"] for f in pending] == [503, 500, 429]
    statuses = [send(BASIC).status_code for _ in range(4)]
    assert statuses == [503, 500, 429, 200]
    assert control.counters()["rejected"] == {"429": 1, "500": 1, "503": 1}
    assert control.pending_faults() == []
    assert [a["status"] for a in control.attempts()] == [503, 500, 429, 200]


def test_5xx_fault_body(send, sendbird):
    sendbird.add_faults({"status": 503, "times": 1})
    resp = send(BASIC)
    assert resp.status_code == 503
    assert resp.json()["error"] is True and isinstance(resp.json()["code"], int)
    assert sendbird.messages() == []


def test_delay_fault_then_normal_processing(send, sendbird):
    sendbird.add_faults({"delay_ms": 300, "times": 2})
    t0 = time.perf_counter()
    assert send(BASIC).status_code == 200
    assert send(BASIC).status_code == 200
    slow = time.perf_counter() - t0
    t1 = time.perf_counter()
    assert send(BASIC).status_code == 200
    fast = time.perf_counter() - t1
    assert slow >= 0.6
    assert fast < 0.2
    assert len(sendbird.messages()) == 3


def test_delay_does_not_block_other_requests(sendbird):
    sendbird.add_faults({"delay_ms": 800, "times": 1})
    url = f"{sendbird.base_url}/v3/bots/{BOT}/send"
    slow = threading.Thread(target=requests.post, args=(url,),
                            kwargs={"json": BASIC, "headers": {"Api-Token": API_TOKEN}, "timeout": 5})
    slow.start()
    time.sleep(0.1)
    t0 = time.perf_counter()
    assert requests.post(url, json=BASIC, headers={"Api-Token": API_TOKEN}, timeout=5).status_code == 200
    assert time.perf_counter() - t0 < 0.5  # served while the delayed call sleeps
    slow.join()
    assert len(sendbird.messages()) == 2


def test_bad_fault_spec_is_400(sendbird):
    control = SendBirdControlClient(sendbird.base_url)
    for bad in ([{"times": 2}], [{"status": 200}], [{"status": 429, "bogus": 1}], "nope"):
        with pytest.raises(StandInError):
            control.add_faults(bad)
    assert control.pending_faults() == []


def test_reset_clears_messages_counters_and_faults(send, sendbird):
    control = SendBirdControlClient(sendbird.base_url)
    send({**BASIC, "dedup_id": "d1"})
    control.add_faults({"status": 503, "times": 3})
    control.reset()
    snap = control.snapshot()
    assert snap["messages"] == [] and snap["counters"]["attempts"] == 0
    assert control.pending_faults() == []
    # dedup keys are forgotten too
    assert send({**BASIC, "dedup_id": "d1"}).status_code == 200
    assert len(control.messages()) == 1


def test_wait_for_messages_long_poll(send, sendbird):
    control = SendBirdControlClient(sendbird.base_url)
    threading.Timer(0.3, lambda: [send({**BASIC, "message": f"m{i}"}) for i in range(2)]).start()
    t0 = time.perf_counter()
    msgs = control.wait_for_messages(2, timeout=5)
    assert [m["message"] for m in msgs] == ["m0", "m1"]
    assert 0.2 < time.perf_counter() - t0 < 3


def test_wait_for_messages_times_out(sendbird):
    control = SendBirdControlClient(sendbird.base_url)
    t0 = time.perf_counter()
    with pytest.raises(TimeoutError):
        control.wait_for_messages(1, timeout=0.5)
    assert 0.4 < time.perf_counter() - t0 < 3
    with pytest.raises(TimeoutError):
        sendbird.wait_for_messages(1, timeout=0.2)  # in-process variant


def test_wait_filters_by_channel(send, sendbird):
    send({**BASIC, "channel_url": "a"})
    threading.Timer(0.2, lambda: send({**BASIC, "channel_url": "b"})).start()
    msgs = sendbird.wait_for_messages(1, timeout=3, channel_url="b")
    assert [m["channel_url"] for m in msgs] == ["b"]


def test_keep_alive_connection_reused(sendbird):
    import http.client

    conn = http.client.HTTPConnection(sendbird.host, sendbird.port, timeout=5)
    try:
        for _ in range(3):
            conn.request("POST", f"/v3/bots/{BOT}/send", body=b'{"message": "k", "channel_url": "c"}',
                         headers={"Api-Token": API_TOKEN, "Content-Type": "application/json"})
            resp = conn.getresponse()
            assert resp.status == 200
            assert resp.version == 11
            assert (resp.getheader("Connection") or "").lower() != "close"
            resp.read()
        assert len(sendbird.messages()) == 3
    finally:
        conn.close()


def test_concurrent_dedup_creates_one_message(sendbird):
    url = f"{sendbird.base_url}/v3/bots/{BOT}/send"
    results = []

    def worker():
        r = requests.post(url, json={**BASIC, "dedup_id": "same"}, headers={"Api-Token": API_TOKEN}, timeout=5)
        results.append(r.json()["message_id"])

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(results)) == 1
    assert len(sendbird.messages()) == 1
    assert sendbird.counters()["deduplicated"] == 7
