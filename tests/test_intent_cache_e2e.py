"""The prediction cache end to end on the local stack: signed webhooks through the real function_app.py (local runner,
Azurite, Cosmos DB stand-in, SendBird stand-in), the intent service with its model lifecycle (CLU authoring API,
retail project trained and deployed to production) and a real redis-server.

A repeated utterance is answered from the cache (its intent stage made no intent-service call, only a Redis one);
after a swap to a model that answers the same sentence differently, the next message gets the new model's answer
(with ``INTENT_CACHE_VERSION_TTL_SECONDS=0``, the version is asked for every message, so there is no window), and
the one after that is a hit again, under the new version.
"""

from __future__ import annotations

import copy
import json
import time
import uuid

import pytest
import requests

from devstack.stack import Azurite, CosmosStandIn, FunctionsRunner, LocalStack, RedisServer, SendBirdStandIn
from tools import webhooks
from tools.gateway_stack import (BOT_USER_ID, CONSOLE_AUTHORING_KEY, LOCAL_API_TOKEN, RETAIL_PROJECT, ROOT,
                                 AuthoringIntentService, ensure_retail_model, gateway_env)

pytestmark = pytest.mark.stack
#: The retail model answers this with None (fallback); the new model learns it as OrderStatus.
SENTENCE = "waiting for ages for my kettle"
REPLY_TIMEOUT = 30.0


@pytest.fixture(scope="module")
def cache_stack(tmp_path_factory):
    logs = tmp_path_factory.mktemp("cache-e2e-logs")
    stack = LocalStack()
    stack.add(Azurite(0, log_dir=logs), "azurite")
    stack.add(CosmosStandIn(0, log_dir=logs), "cosmos")
    stack.add(SendBirdStandIn(0, LOCAL_API_TOKEN, BOT_USER_ID, log_dir=logs), "sendbird")
    stack.add(AuthoringIntentService(ensure_retail_model(), 0, log_dir=logs), "intent")
    stack.add(RedisServer(0, log_dir=logs), "redis")
    stack.start()
    env = gateway_env(stack, {"INTENT_CACHE_VERSION_TTL_SECONDS": "0", "COSMOS_DATABASE": "cache_e2e"})
    runner = FunctionsRunner(ROOT, 0, env, log_dir=logs)
    try:
        runner.start()
        yield stack, runner
    finally:
        runner.stop()
        stack.stop()


def say(runner, standin, text: str) -> dict:
    """Send ``text`` as a new user's message and return the reply's ``data`` (route, intent, timings)."""
    user, mid = f"cache-{uuid.uuid4().hex[:8]}", int(uuid.uuid4().int % 10**15)
    channel = f"cache_ch_{user}"
    body = webhooks.encode(webhooks.message_send_event(user_id=user, text=text, message_id=mid, channel_url=channel,
                                                       bot_user_id=BOT_USER_ID))
    result = webhooks.post(requests.Session(), runner.base_url, body, LOCAL_API_TOKEN)
    assert result.status == 200, result
    deadline = time.monotonic() + REPLY_TIMEOUT
    while time.monotonic() < deadline:
        found = [m for m in standin.control.messages(channel) if m.get("dedup_id") == f"reply-{mid}"]
        if found:
            return json.loads(found[0]["data"])
        time.sleep(0.05)
    raise AssertionError(f"no reply to {mid} within {REPLY_TIMEOUT} s")


def intent_hop(data: dict) -> dict:
    (hop,) = [h for h in data["timings"]["hops"] if h["stage"] == "chat-inbound"]
    return hop["dependency_ms"]


def teach_and_swap(endpoint: str) -> None:
    """The bot team's loop: the sentence joins OrderStatus, a new model is trained, deployed to staging and swapped
    into production (forced: this test is about the cache, not the promotion gate)."""
    from console.clu import AuthoringClient

    client = AuthoringClient(endpoint, CONSOLE_AUTHORING_KEY, "retail-bot", job_timeout=300)
    project = copy.deepcopy(json.loads(RETAIL_PROJECT.read_text(encoding="utf-8")))
    project["assets"]["utterances"] += [
        {"text": t, "language": "en", "intent": "OrderStatus", "dataset": "Train", "entities": []}
        for t in (SENTENCE, "waiting for ages for my order", "been waiting ages for my kettle",
                  "my kettle still has not arrived", "waiting so long for my toaster")]
    client.import_project(project)
    client.wait(client.train("cache-v2", {"kind": "manual"}), "training")
    client.deploy("staging", "cache-v2")
    client.swap("production", "staging", force=True, reason="prediction cache end-to-end test")


def test_a_repeated_utterance_is_served_from_the_cache_and_a_swap_is_never_served_stale(cache_stack):
    stack, runner = cache_stack
    standin = stack["sendbird"]
    first = say(runner, standin, SENTENCE)
    assert first["route"] == "fallback" and first["intent"] == "None", first
    assert "intent" in intent_hop(first) and "redis" in intent_hop(first)          # a miss: the model answered
    again = say(runner, standin, "  Waiting for AGES for my kettle ")
    assert (again["route"], again["intent"]) == (first["route"], first["intent"])
    assert "intent" not in intent_hop(again) and "redis" in intent_hop(again), again  # a hit: no intent call

    teach_and_swap(stack["intent"].base_url)

    after = say(runner, standin, SENTENCE)
    assert after["intent"] == "OrderStatus" and after["route"] == "order_status", after  # the new model, not cached
    assert "intent" in intent_hop(after)
    cached_again = say(runner, standin, SENTENCE)
    assert cached_again["intent"] == "OrderStatus" and "intent" not in intent_hop(cached_again), cached_again
