"""Contracts of the queue, intent, SendBird and blob adapters: each fake and its real adapter pass the same tests.

Real adapters run against real local servers: Azurite, the project's intent
service, the SendBird stand-in; error mapping against pytest-httpserver.
"""

from __future__ import annotations

import json
import time
import uuid

import pytest
from pytest_httpserver import HTTPServer

from shared.clients.blobs import BlobStore
from shared.clients.clu import IntentClient
from shared.clients.queues import QueueSender
from shared.clients.sendbird import SendBirdClient
from shared.errors import PermanentError, RateLimited, TransientError
from shared.models import PoisonRecord, poison_record_queue
from shared.settings import load_settings
from tests.support.samples import sample_values
from tests.support.fakes import (FakeSendBird, InMemoryBlobs, RecordingQueueSender, ScriptedIntentClient,
                                 clu_prediction)


def settings_with(**values):
    return load_settings({**sample_values(), **values}).settings


# ------------------------------------------------------------------ queues
class FakeQueueView:
    """The fake seen through the contract's eyes: visible messages of a queue, in order."""

    def __init__(self):
        self.sender = RecordingQueueSender()

    def visible(self, queue):
        return [t for t, delay in self.sender.sent.get(queue, []) if delay == 0]


class AzuriteQueueView:
    def __init__(self, azurite, encoding):
        self.sender = QueueSender(azurite.connection_string, encoding)

    def visible(self, queue):
        return [m.content for m in self.sender.peek(queue)]


@pytest.fixture(params=["fake", "azurite-base64", "azurite-none"])
def queue_view(request):
    if request.param == "fake":
        return FakeQueueView()
    return AzuriteQueueView(request.getfixturevalue("azurite"), request.param.split("-")[1])


def qname() -> str:
    return f"contract-{uuid.uuid4().hex[:10]}"


def test_sent_text_is_received_unchanged(queue_view):
    q = qname()
    texts = ['{"type": "reply", "text": "배송 조회 😀"}', '{"n": 2}']
    for t in texts:
        queue_view.sender.send(q, t)
    assert queue_view.visible(q) == texts


def test_delayed_message_is_invisible_until_its_delay(queue_view):
    q = qname()
    queue_view.sender.send(q, "later", delay_seconds=30)
    assert queue_view.visible(q) == []


def test_poison_record_goes_to_the_records_queue(queue_view):
    q = qname()
    record = PoisonRecord(source_queue=q, reason="unknown version 9", error_type="PermanentError",
                          dequeue_count=1, poisoned_at_ms=1, original="{}")
    queue_view.sender.send_poison(record)
    [text] = queue_view.visible(poison_record_queue(q))
    assert PoisonRecord.model_validate_json(text) == record


def test_base64_encoding_is_what_the_trigger_expects(azurite):
    """With messageEncoding=base64 the raw queue body is base64 of the UTF-8 text (host.json contract)."""
    import base64
    from azure.storage.queue import QueueClient
    q = qname()
    QueueSender(azurite.connection_string, "base64").send(q, "안녕")
    raw = QueueClient.from_connection_string(azurite.connection_string, q).peek_messages()[0].content
    assert base64.b64decode(raw).decode("utf-8") == "안녕"


# ------------------------------------------------------------------ intent client
@pytest.fixture(params=["fake", "intent-service"])
def intent_client(request):
    if request.param == "fake":
        return ScriptedIntentClient(default=clu_prediction("Greeting", 0.8, {"None": 0.15, "Help": 0.05}))
    return IntentClient(settings_with(INTENT_ENDPOINT=request.getfixturevalue("intent_service").base_url))


def test_prediction_shape(intent_client):
    p = intent_client.analyze("hello there", "en", participant_id="u-1", item_id="1", request_id="c-1")
    scores = [i.confidence_score for i in p.intents]
    assert p.query == "hello there"
    assert scores == sorted(scores, reverse=True) and all(0 <= s <= 1 for s in scores)
    assert p.top_intent == p.intents[0].category and p.confidence_score == scores[0]


def test_real_service_understands_the_retail_intents(intent_service):
    client = IntentClient(settings_with(INTENT_ENDPOINT=intent_service.base_url))
    assert client.analyze("안녕하세요", "ko", "u", "1").top_intent == "Greeting"
    order = client.analyze("where is my order 20261119-0042?", "en", "u", "2")
    assert order.top_intent == "OrderStatus"
    [number] = [e for e in order.entities if e.category == "OrderNumber"]
    assert number.text == "20261119-0042"
    search = client.analyze("운동화 보여주세요", "ko", "u", "3")
    assert search.top_intent == "ProductSearch"
    assert any(e.category == "ProductCategory" and e.text == "운동화" for e in search.entities)


@pytest.mark.parametrize("status, error", [(503, TransientError), (500, TransientError), (429, TransientError),
                                           (401, PermanentError), (400, PermanentError)])
def test_intent_error_mapping(httpserver: HTTPServer, status, error):
    httpserver.expect_request("/language/:analyze-conversations").respond_with_json(
        {"error": {"code": "X", "message": "nope"}}, status=status)
    client = IntentClient(settings_with(INTENT_ENDPOINT=httpserver.url_for("/"), INTENT_RETRIES="0"))
    with pytest.raises(error):
        client.analyze("hi", "en", "u", "1")


def test_intent_request_follows_clu(httpserver: HTTPServer):
    httpserver.expect_request("/language/:analyze-conversations", method="POST",
                              query_string="api-version=2023-04-01",
                              headers={"Ocp-Apim-Subscription-Key": "k3y", "Apim-Request-Id": "corr-1"}
                              ).respond_with_json(clu_prediction("Help", 0.7))
    client = IntentClient(settings_with(INTENT_ENDPOINT=httpserver.url_for("/"), INTENT_API_KEY="k3y"))
    assert client.analyze("what can you do", "en", "u-9", "77", request_id="corr-1").top_intent == "Help"
    body = json.loads(httpserver.log[0][0].get_data())
    assert body["kind"] == "Conversation"
    assert body["analysisInput"]["conversationItem"] == {"id": "77", "participantId": "u-9",
                                                         "text": "what can you do", "language": "en"}
    assert body["parameters"]["stringIndexType"] == "TextElement_V8"


def test_intent_timeout_is_transient(httpserver: HTTPServer):
    httpserver.expect_request("/language/:analyze-conversations").respond_with_handler(
        lambda req: (time.sleep(0.5), None)[1])
    client = IntentClient(settings_with(INTENT_ENDPOINT=httpserver.url_for("/"), INTENT_TIMEOUT_SECONDS="0.2",
                                        INTENT_RETRIES="0"))
    with pytest.raises(TransientError, match="unreachable"):
        client.analyze("hi", "en", "u", "1")


def test_intent_unexpected_body_is_transient(httpserver: HTTPServer):
    httpserver.expect_request("/language/:analyze-conversations").respond_with_json({"hello": "world"})
    client = IntentClient(settings_with(INTENT_ENDPOINT=httpserver.url_for("/")))
    with pytest.raises(TransientError, match="unexpected body"):
        client.analyze("hi", "en", "u", "1")


def test_dead_intent_service_trips_the_circuit_and_fails_fast(httpserver: HTTPServer):
    httpserver.expect_request("/language/:analyze-conversations").respond_with_data("down", 503)
    client = IntentClient(settings_with(INTENT_ENDPOINT=httpserver.url_for("/"), INTENT_RETRIES="0",
                                        INTENT_BREAKER_FAILURES="3", INTENT_BREAKER_RESET_SECONDS="30"))
    for _ in range(3):
        with pytest.raises(TransientError, match="503"):
            client.analyze("hi", "en", "u", "1")
    calls = len(httpserver.log)
    started = time.perf_counter()
    with pytest.raises(RateLimited, match="circuit open") as err:
        client.analyze("hi", "en", "u", "1")
    assert len(httpserver.log) == calls  # no request at all
    assert time.perf_counter() - started < 0.05
    assert 1 <= err.value.retry_after_seconds <= 30  # the stage re-queues the message for that long


def test_client_errors_do_not_trip_the_circuit(httpserver: HTTPServer):
    httpserver.expect_request("/language/:analyze-conversations").respond_with_json({"error": {}}, status=400)
    client = IntentClient(settings_with(INTENT_ENDPOINT=httpserver.url_for("/"), INTENT_BREAKER_FAILURES="2"))
    for _ in range(4):
        with pytest.raises(PermanentError):
            client.analyze("hi", "en", "u", "1")
    assert client.breaker.state == "closed"


def test_concurrent_intent_calls_run_in_parallel():
    """The breaker must not serialize calls: 4 calls of 0.4 s each take ~0.4 s together, not 1.6 s."""
    import concurrent.futures

    httpserver = HTTPServer(threaded=True)
    httpserver.start()

    def slow(request):
        time.sleep(0.4)
        from werkzeug import Response
        return Response(json.dumps(clu_prediction("Greeting", 0.9)), content_type="application/json")

    httpserver.expect_request("/language/:analyze-conversations").respond_with_handler(slow)
    client = IntentClient(settings_with(INTENT_ENDPOINT=httpserver.url_for("/")))
    started = time.perf_counter()
    try:
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            results = list(pool.map(lambda i: client.analyze("hi", "en", "u", str(i)), range(4)))
    finally:
        httpserver.stop()
    assert [r.top_intent for r in results] == ["Greeting"] * 4
    assert time.perf_counter() - started < 1.2


def test_intent_retries_a_503_then_succeeds(httpserver: HTTPServer):
    httpserver.expect_ordered_request("/language/:analyze-conversations").respond_with_data("warming up", 503)
    httpserver.expect_ordered_request("/language/:analyze-conversations").respond_with_json(
        clu_prediction("Greeting", 0.9))
    client = IntentClient(settings_with(INTENT_ENDPOINT=httpserver.url_for("/"), INTENT_RETRIES="2"))
    assert client.analyze("hi", "en", "u", "1").top_intent == "Greeting"


# ------------------------------------------------------------------ SendBird client
class FakeSendBirdView:
    def __init__(self):
        self.client = FakeSendBird()

    def visible(self, channel):
        return [m["message"] for m in self.client.messages if m["channel_url"] == channel]

    def fail_next(self, status, retry_after=None):
        self.client.script.append({429: RateLimited("429", retry_after or 1), 503: TransientError("503"),
                                   500: TransientError("500")}[status])


class StandInView:
    def __init__(self, standin):
        from tools.gateway_stack import LOCAL_API_TOKEN
        self.standin = standin
        self.client = SendBirdClient(settings_with(SENDBIRD_API_BASE_URL=standin.base_url,
                                                   SENDBIRD_API_TOKEN=LOCAL_API_TOKEN))
        standin.control.clear_faults()

    def visible(self, channel):
        return [m["message"] for m in self.standin.control.messages(channel)]

    def fail_next(self, status, retry_after=None):
        # the client retries 5xx twice in-process: script three failures so the error surfaces
        times = 1 if status == 429 else 3
        fault = {"status": status, "times": times}
        if retry_after is not None:
            fault["retry_after"] = retry_after
        self.standin.control.add_faults([fault])


@pytest.fixture(params=["fake", "standin"])
def sendbird_view(request):
    if request.param == "fake":
        return FakeSendBirdView()
    return StandInView(request.getfixturevalue("sendbird_standin"))


def channel() -> str:
    return f"sendbird_group_channel_{uuid.uuid4().hex[:10]}"


def test_send_shows_one_message(sendbird_view):
    ch = channel()
    assert sendbird_view.client.send_bot_message(ch, "안녕하세요!", "reply-1") > 0
    assert sendbird_view.visible(ch) == ["안녕하세요!"]


def test_same_dedup_id_is_shown_once(sendbird_view):
    ch = channel()
    first = sendbird_view.client.send_bot_message(ch, "hello", "reply-2")
    second = sendbird_view.client.send_bot_message(ch, "hello", "reply-2")
    assert first == second and sendbird_view.visible(ch) == ["hello"]


def test_429_raises_rate_limited_with_retry_after(sendbird_view):
    sendbird_view.fail_next(429, retry_after=3)
    with pytest.raises(RateLimited) as err:
        sendbird_view.client.send_bot_message(channel(), "hello", "reply-3")
    assert err.value.retry_after_seconds == 3


def test_5xx_is_transient(sendbird_view):
    sendbird_view.fail_next(503)
    with pytest.raises(TransientError):
        sendbird_view.client.send_bot_message(channel(), "hello", "reply-4")


def test_rejected_message_is_permanent(sendbird_view):
    with pytest.raises(PermanentError):
        sendbird_view.client.send_bot_message(channel(), "", "reply-5")


def test_wrong_token_is_permanent(sendbird_standin):
    client = SendBirdClient(settings_with(SENDBIRD_API_BASE_URL=sendbird_standin.base_url,
                                          SENDBIRD_API_TOKEN="wrong-token-123"))
    with pytest.raises(PermanentError, match="401"):
        client.send_bot_message(channel(), "hello", "reply-6")


def test_received_messages_are_hidden_then_deleted_or_released(queue_view):
    q, sender = qname(), queue_view.sender
    for t in ("a", "b", "c"):
        sender.send(q, t)
    got = sender.receive(q, 32, visibility_timeout=30)
    assert sorted(m.content for m in got) == ["a", "b", "c"] and sender.receive(q, 32, 30) == []
    assert all(m.inserted_at_ms > 0 and m.dequeue_count == 1 for m in got)
    by_content = {m.content: m for m in got}
    sender.delete(q, by_content["a"])
    sender.release(q, by_content["b"])
    assert [m.content for m in sender.peek(q)] == ["b"] and sender.depth(q) == 2  # "c" is still hidden


def test_a_missing_queue_reads_as_empty(queue_view):
    q = qname()
    assert queue_view.sender.peek(q) == [] and queue_view.sender.receive(q) == [] and queue_view.sender.depth(q) == 0


# ------------------------------------------------------------------ blobs (the daily review exports)
@pytest.fixture(params=["fake", "azurite"])
def blobs(request):
    if request.param == "fake":
        return InMemoryBlobs()
    return BlobStore(request.getfixturevalue("azurite_blob").connection_string)


def container() -> str:
    return f"contract-{uuid.uuid4().hex[:10]}"


def test_a_blob_reads_back_byte_for_byte_and_a_put_overwrites(blobs):
    c = container()  # created by the first put
    data = '{"text": "배송 조회 😀"}\n'.encode() + bytes(range(256))
    blobs.put(c, "2026/12/02.jsonl", data, "application/x-ndjson; charset=utf-8")
    assert blobs.get(c, "2026/12/02.jsonl") == data
    blobs.put(c, "2026/12/02.jsonl", b"")
    assert blobs.get(c, "2026/12/02.jsonl") == b""


def test_missing_blobs_and_containers_read_as_none_and_empty(blobs):
    c = container()
    assert blobs.get(c, "nothing.jsonl") is None and blobs.names(c) == []
    blobs.put(c, "a.jsonl", b"x")
    assert blobs.get(c, "b.jsonl") is None


def test_names_are_sorted_and_filtered_by_prefix(blobs):
    c = container()
    for name in ["2026/12/02.jsonl", "2026/11/30.jsonl", "_state/last-exported-day.json", "2026/12/01.jsonl"]:
        blobs.put(c, name, b"{}")
    assert blobs.names(c) == ["2026/11/30.jsonl", "2026/12/01.jsonl", "2026/12/02.jsonl",
                              "_state/last-exported-day.json"]
    assert blobs.names(c, "2026/12/") == ["2026/12/01.jsonl", "2026/12/02.jsonl"]


def test_an_invalid_container_name_is_permanent(blobs):
    with pytest.raises(PermanentError):
        blobs.put("Not_A_Container", "a.jsonl", b"x")


def test_unreachable_blob_storage_is_transient():
    from devstack.stack import AZURITE_ACCOUNT_KEY, free_port
    cs = (f"DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey={AZURITE_ACCOUNT_KEY};"
          f"BlobEndpoint=http://127.0.0.1:{free_port()}/devstoreaccount1;")
    store = BlobStore(cs, retries=0)
    with pytest.raises(TransientError) as err:
        store.put("exports", "a.jsonl", b"x")
    assert AZURITE_ACCOUNT_KEY not in str(err.value)  # errors name the blob, never the key


def test_blob_store_uses_the_function_identity_without_a_connection_string():
    store = BlobStore("", account_name="stchatbotprod", client_id="00000000-0000-0000-0000-000000000001")
    assert store._service.url.startswith("https://stchatbotprod.blob.core.windows.net")  # no I/O until a call
    assert type(store._service.credential).__name__ == "DefaultAzureCredential"
    with pytest.raises(ValueError):
        BlobStore("")
