"""Telemetry against a local ingestion sink: operation trees across queue hops, events, metrics, PII modes,
failure counting, and the whole chain through the running gateway."""

from __future__ import annotations

import json
import re
import threading
from contextlib import contextmanager
import time
import uuid

import pytest

from devstack.telemetry_sink import TelemetrySink
from shared import timing
from shared.telemetry import EVENTS, METRICS, new_traceparent, parse_traceparent, redact_text
from shared.telemetry import create as Telemetry  # the factory: Application Insights, or no-op without a connection string


@pytest.fixture
def sink():
    with TelemetrySink() as s:
        yield s


def kinds(envelopes, base_type):
    return [e for e in envelopes if e["data"]["baseType"] == base_type]


def metric_names(envelopes) -> set[str]:
    return {e["data"]["baseData"]["metrics"][0]["name"] for e in kinds(envelopes, "MetricData")}


def wait_envelopes(fetch, predicate, timeout=15.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = fetch()
        if predicate(got):
            return got
        time.sleep(0.1)
    raise AssertionError(f"telemetry not recorded within {timeout} s; got {len(fetch())} envelopes")


def test_disabled_without_connection_string_sends_nothing_and_starts_no_threads():
    before = threading.active_count()
    tel = Telemetry("")
    with tel.stage("intake", None) as span:
        tel.event("MessageReceived", {"text": "hi"})
        tel.metric("e2e_latency_ms", 5)
    tel.flush()
    assert not tel.enabled and span.traceparent is None and threading.active_count() == before


def test_stages_form_one_operation_tree_with_dependencies(sink):
    tel = Telemetry(sink.connection_string, export_interval_seconds=0.3)
    try:
        with tel.stage("intake", None) as a:
            pass
        with tel.stage("intent_stage", a.traceparent) as b:
            with timing.dependency(tel, "intent", "POST /language/:analyze-conversations", "127.0.0.1:5088"):
                pass
        with tel.stage("branch_handler", b.traceparent):
            pass
        tel.flush()
        got = wait_envelopes(sink.envelopes, lambda e: len(kinds(e, "RequestData")) == 3
                             and kinds(e, "RemoteDependencyData"))
    finally:
        tel.close()
    requests = {e["data"]["baseData"]["name"]: e for e in kinds(got, "RequestData")}
    trace_id = parse_traceparent(a.traceparent)[0]
    assert {e["tags"]["ai.operation.id"] for e in got if e["data"]["baseType"] != "MetricData"} == {trace_id}
    assert "ai.operation.parentId" not in requests["intake"]["tags"]
    assert requests["intent_stage"]["tags"]["ai.operation.parentId"] == requests["intake"]["data"]["baseData"]["id"]
    assert requests["branch_handler"]["tags"]["ai.operation.parentId"] == \
        requests["intent_stage"]["data"]["baseData"]["id"]
    [dep] = kinds(got, "RemoteDependencyData")
    assert dep["tags"]["ai.operation.parentId"] == requests["intent_stage"]["data"]["baseData"]["id"]
    assert dep["data"]["baseData"]["target"] == "127.0.0.1:5088"
    assert all(e["tags"]["ai.cloud.role"] == "chatbot-gateway" for e in got)


def test_events_and_pre_aggregated_metrics(sink):
    tel = Telemetry(sink.connection_string, export_interval_seconds=60)
    tp = new_traceparent()
    tel.event("ReplySent", {"route": "greeting", "user_id": "u-1"}, {"e2e_latency_ms": 42.0}, traceparent=tp)
    for v in (10, 30, 20):
        tel.metric("e2e_latency_ms", v, route="greeting")
    tel.flush()
    got = wait_envelopes(sink.envelopes, lambda e: kinds(e, "EventData") and kinds(e, "MetricData"))
    [event] = kinds(got, "EventData")
    assert event["data"]["baseData"]["name"] == "ReplySent"
    assert event["data"]["baseData"]["measurements"] == {"e2e_latency_ms": 42.0}
    assert event["tags"]["ai.operation.id"] == parse_traceparent(tp)[0]
    [metric] = kinds(got, "MetricData")
    point = metric["data"]["baseData"]["metrics"][0]
    assert (point["name"], point["value"], point["count"], point["min"], point["max"]) == \
        ("e2e_latency_ms", 60.0, 3, 10.0, 30.0)
    assert metric["data"]["baseData"]["properties"] == {"route": "greeting"}


@pytest.mark.parametrize("mode", ["mask", "strict"])
def test_pii_modes_redact_ids_and_text(sink, mode):
    tel = Telemetry(sink.connection_string, pii_mode=mode)
    tel.event("MessageReceived", {"user_id": "customer_1042", "channel_url": "ch-9",
                                  "text": "order 20261119-0042, call 010-1234-5678 or me@example.com"})
    tel.flush()
    [event] = kinds(wait_envelopes(sink.envelopes, lambda e: kinds(e, "EventData")), "EventData")
    props = event["data"]["baseData"]["properties"]
    assert re.fullmatch("[0-9a-f]{16}", props["user_id"]) and props["channel_url"] != "ch-9"
    if mode == "mask":
        assert "20261119" not in props["text"] and "1234" not in props["text"] and "example.com" not in props["text"]
        assert props["text"].startswith("order ")
    else:
        assert "text" not in props


def test_text_masking_keeps_short_numbers():
    assert redact_text("2 pairs of size 270", "mask") == "2 pairs of size 270"
    assert redact_text("order 20261119-0042", "mask") == "order " + "#" * 13


def test_export_failures_are_counted_never_raised():
    tel = Telemetry("InstrumentationKey=00000000-0000-0000-0000-000000000000;IngestionEndpoint=http://127.0.0.1:9/")
    tel.event("MessageReceived", {"text": "hi"})
    tel.metric("e2e_latency_ms", 1)
    tel.flush(timeout=5)
    assert tel.export_failures >= 1
    tel.close()


@pytest.mark.parametrize("rate", [0.0, 0.5])
def test_sampling_is_decided_once_per_operation(sink, rate):
    """Every stage of one message follows the intake's decision; rate 0 sends no traces or events."""
    tel = Telemetry(sink.connection_string, sampling_rate=rate)
    decisions = {}
    for _ in range(20):
        with tel.stage("intake", None) as a:
            tel.event("MessageReceived", {"text": "hi"})
        with tel.stage("intent_stage", a.traceparent) as b:
            tel.event("IntentClassified", {"text": "hi"})
        assert parse_traceparent(a.traceparent)[0] == parse_traceparent(b.traceparent)[0]
        assert a.traceparent[-2:] == b.traceparent[-2:]
        decisions[parse_traceparent(a.traceparent)[0]] = a.traceparent.endswith("-01")
    tel.flush()
    time.sleep(1.5)
    per_op: dict[str, int] = {}
    for e in sink.envelopes():
        if e["data"]["baseType"] in ("RequestData", "EventData"):
            per_op[e["tags"]["ai.operation.id"]] = per_op.get(e["tags"]["ai.operation.id"], 0) + 1
    assert set(per_op) == {t for t, sampled in decisions.items() if sampled}
    assert all(n == 4 for n in per_op.values())  # all or nothing: 2 requests + 2 events
    if rate == 0.0:
        assert per_op == {}
    tel.close()


# ------------------------------------------------------------------ through the running gateway
PII_KEY = "test-pii-hash-key-0123456789abcdef"

@contextmanager
def gateway_with_sink(stack_settings, stack_logs, database: str, pii_mode: str):
    """Another runner of the real app, exporting telemetry to an in-process sink, on queues of its own (an Azurite of
    its own: runners sharing queues are competing consumers, so a message this runner accepted could be handled,
    and its telemetry sent, by the session's other runner) and its own Cosmos database."""
    from devstack.stack import Azurite, FunctionsRunner
    from tests.support.samples import ROOT
    with TelemetrySink() as sink, Azurite(0, log_dir=stack_logs) as azurite:
        env = {**stack_settings, "AzureWebJobsStorage": azurite.connection_string,
               "COSMOS_DATABASE": database, "APPLICATIONINSIGHTS_CONNECTION_STRING":
               sink.connection_string, "TELEMETRY_EXPORT_INTERVAL_SECONDS": "0.5", "TELEMETRY_PII_MODE": pii_mode,
               "TELEMETRY_PII_HASH_KEY": PII_KEY}
        runner = FunctionsRunner(ROOT, 0, env, log_dir=stack_logs).start()
        try:
            yield runner, sink
        finally:
            runner.stop()


@pytest.fixture(scope="module")
def telemetry_gateway(stack_settings, stack_logs):
    """The real app in PII mode mask, exporting to an in-process sink."""
    with gateway_with_sink(stack_settings, stack_logs, "telemetry", "mask") as gw:
        yield gw


@pytest.mark.stack
def test_one_message_is_one_operation_from_webhook_to_reply(telemetry_gateway, sendbird_standin):
    import requests as http

    from tools import webhooks
    from tools.gateway_stack import LOCAL_API_TOKEN
    runner, sink = telemetry_gateway
    channel, user = f"sendbird_group_channel_{uuid.uuid4().hex[:8]}", f"tel-{uuid.uuid4().hex[:6]}"
    mid = int(uuid.uuid4().int % 10**12)
    body = webhooks.encode(webhooks.message_send_event(user_id=user, text="where is my order 20261119-0042?",
                                                       message_id=mid, channel_url=channel))
    r = webhooks.post(http.Session(), runner.base_url, body, LOCAL_API_TOKEN)
    assert r.status == 200
    sendbird_standin.control.wait_for_messages(1, timeout=20, channel_url=channel)

    def chain(envs):
        ops = {e["tags"].get("ai.operation.id") for e in kinds(envs, "EventData")
               if e["data"]["baseData"]["properties"].get("correlation_id") == r.body["correlation_id"]}
        if len(ops) != 1:
            return None
        op = ops.pop()
        return [e for e in envs if e["tags"].get("ai.operation.id") == op]

    def stage_deps(c):
        """{(dependency system, stage name)} of an operation's envelopes."""
        names = {x["data"]["baseData"]["id"]: x["data"]["baseData"]["name"] for x in kinds(c, "RequestData")}
        return {(e["data"]["baseData"]["properties"]["system"], names.get(e["tags"].get("ai.operation.parentId")))
                for e in kinds(c, "RemoteDependencyData")}

    # the happy path's Cosmos DB work: the admission (intent stage) and the reply sender's one write of the answer
    # and the sent mark; the branch handler's write is deferred to the latter's (README, Cosmos DB work per message)
    expected = {("intent", "intent_stage"), ("cosmos", "intent_stage"), ("sendbird", "reply_sender"),
                ("cosmos", "reply_sender")}
    got = wait_envelopes(sink.envelopes, lambda e: (c := chain(e)) is not None
                         and {"intake", "intent_stage", "branch_handler", "reply_sender"}
                         <= {x["data"]["baseData"]["name"] for x in kinds(c, "RequestData")}
                         and "ReplySent" in {x["data"]["baseData"]["name"] for x in kinds(c, "EventData")}
                         and expected <= stage_deps(c), timeout=30)
    op = chain(got)
    requests = {e["data"]["baseData"]["name"]: e for e in kinds(op, "RequestData")}
    ids = {n: e["data"]["baseData"]["id"] for n, e in requests.items()}
    parent = {n: e["tags"].get("ai.operation.parentId") for n, e in requests.items()}
    assert parent["intent_stage"] == ids["intake"]
    assert parent["branch_handler"] == ids["intent_stage"]
    assert parent["reply_sender"] == ids["branch_handler"]
    deps = stage_deps(op)
    assert expected <= deps
    assert None not in {stage for _, stage in deps}, "every dependency's parent is one of the stages' requests"
    events = {e["data"]["baseData"]["name"]: e["data"]["baseData"] for e in kinds(op, "EventData")}
    assert {"MessageReceived", "IntentClassified", "ReplySent"} <= set(events) <= set(EVENTS)
    sent = events["ReplySent"]
    assert sent["measurements"]["e2e_latency_ms"] > 0 and sent["properties"]["route"]
    # PII mode "mask": ids hashed, order number masked, in every event
    for e in events.values():
        assert e["properties"].get("user_id") != user
    assert "20261119" not in events["IntentClassified"]["properties"]["text"]
    # Metrics are exported by their own timer, independently of the envelopes waited for above: wait for them too
    # (waiting only for the chain's envelopes made this flaky on a busy machine).
    wanted = {"e2e_latency_ms", "stage_latency_ms", "queue_wait_ms", "intent_confidence"}
    got = wait_envelopes(sink.envelopes, lambda e: wanted <= metric_names(e), timeout=30)
    assert wanted <= metric_names(got) <= set(METRICS)


# ------------------------------------------------------------------ PII: one redaction path


def test_pii_ids_are_a_keyed_hash_not_a_plain_sha256():
    import hashlib

    from shared.telemetry import Redactor, hash_id
    a, b = Redactor("mask", "key-one-0123456789"), Redactor("mask", "key-two-0123456789")
    assert a.id("customer_1042") == hash_id("customer_1042", "key-one-0123456789") != b.id("customer_1042")
    assert a.id("customer_1042") != hashlib.sha256(b"customer_1042").hexdigest()[:16]
    assert re.fullmatch("[0-9a-f]{16}", a.id("customer_1042")) and Redactor("off").id("x") == "x"


@pytest.mark.parametrize("mode", ["mask", "strict"])
def test_logs_exceptions_and_failed_requests_are_scrubbed_of_the_messages_ids_and_text(sink, mode):
    import logging
    tel = Telemetry(sink.connection_string, pii_mode=mode, pii_hash_key=PII_KEY, export_interval_seconds=0.3)
    user, channel, text = "customer_1042", "sendbird_group_channel_777", "my secret question about order 55"
    log = logging.getLogger("tests.pii")
    try:
        with tel.sensitive(user_id=user, channel_url=channel, text=text):
            log.warning("attempt failed for %s in %s: %s", user, channel, text)
            try:
                raise ValueError(f"SendBird rejected the message: channel {channel} of {user} said {text!r}")
            except ValueError:
                log.exception("poisoned")
            with pytest.raises(RuntimeError):
                with tel.stage("intent_stage", None, correlation_id="c-1"):
                    raise RuntimeError(f"intent service answered 400 for {user}: {text}")
            tel.event("MessagePoisoned", {"user_id": user, "channel_url": channel,
                                          "reason": f"failed 5 times; last error: {channel} {text} 010-1234-5678"})
        tel.flush()
        got = wait_envelopes(sink.envelopes, lambda e: len(kinds(e, "MessageData")) >= 1
                             and kinds(e, "ExceptionData") and kinds(e, "RequestData") and kinds(e, "EventData"))
        raw = json.dumps(got, ensure_ascii=False)
        for secret in (user, channel, text, "010-1234-5678"):
            assert secret not in raw, secret
        assert tel.redact_id(user) in raw  # the keyed hash stands in for the id, so failures can still be joined
        [msg] = [e for e in kinds(got, "MessageData") if "attempt failed" in e["data"]["baseData"]["message"]]
        assert "<text>" in msg["data"]["baseData"]["message"]
    finally:
        tel.close()
    # the console still gets the raw record (only what leaves the process is redacted)


@pytest.fixture(scope="module")
def strict_gateway(stack_settings, stack_logs):
    """The real app in PII mode strict, exporting to an in-process sink."""
    with gateway_with_sink(stack_settings, stack_logs, "telemetry-strict", "strict") as gw:
        yield gw


@pytest.mark.stack
def test_strict_mode_sends_no_raw_id_or_text_anywhere(strict_gateway, sendbird_standin):
    """A conversation in strict mode, including a reply SendBird rejects with an error that quotes the channel
    (poisoned: MessagePoisoned, an error log): no raw user id, channel URL or message text in anything the
    ingestion sink received."""
    import requests as http

    from tools import webhooks
    from tools.gateway_stack import LOCAL_API_TOKEN
    runner, sink = strict_gateway
    channel, user = f"sendbird_group_channel_{uuid.uuid4().hex[:8]}", f"customer_{uuid.uuid4().hex[:6]}"
    texts = ["hello there", "where is my order 20261119-0042?", "주문한 상품 배송 조회 좀 해주세요"]
    session = http.Session()
    sendbird_standin.control.clear_faults()
    for i, text in enumerate(texts):
        if i == len(texts) - 1:  # the last reply is refused by SendBird with a reason that quotes the channel
            sendbird_standin.control.add_faults([{"status": 400, "code": 400201, "times": 1,
                                                  "message": f"Channel \"{channel}\" of user {user} not found."}])
        body = webhooks.encode(webhooks.message_send_event(user_id=user, text=text, channel_url=channel,
                                                           message_id=int(uuid.uuid4().int % 10**12)))
        assert webhooks.post(session, runner.base_url, body, LOCAL_API_TOKEN).status == 200
        if i < len(texts) - 1:
            sendbird_standin.control.wait_for_messages(i + 1, timeout=20, channel_url=channel)

    def poisoned(envs):
        return [e for e in kinds(envs, "EventData") if e["data"]["baseData"]["name"] == "MessagePoisoned"]
    got = wait_envelopes(sink.envelopes, lambda e: poisoned(e) and kinds(e, "MessageData")
                         and len([x for x in kinds(e, "EventData") if x["data"]["baseData"]["name"] == "ReplySent"]) >= 2,
                         timeout=40)
    time.sleep(1.5)  # one more export interval: whatever else the chain emitted
    got = sink.envelopes()
    raw = json.dumps(got, ensure_ascii=False)
    for secret in (user, channel, *texts, "20261119-0042"):
        assert secret not in raw, f"{secret!r} reached Application Insights"
    sendbird_standin.control.clear_faults()
