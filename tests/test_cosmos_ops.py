"""Cosmos DB work per message (issue 13, section 1): what the gateway asks of Cosmos DB, counted at its client.

- the counters themselves (:func:`shared.clients.cosmos.op_kind`, :class:`~shared.clients.cosmos.CosmosCounters`);
- the user-state container's indexing policy: the same in the code (local stack) and in Bicep, and stored by the
  stand-in;
- through the real local stack (the functions runner, Azurite, the Cosmos DB stand-in, the intent service, the
  SendBird stand-in): each message of a conversation costs at most :data:`MAX_OPS` operations, :data:`MAX_WRITES`
  of them writes, on the user-state container (counted by the runner's own Cosmos client; 3 and 2 by design).
"""

from __future__ import annotations

import json
import re
import time
import uuid
from pathlib import Path

import pytest
import requests

from shared.clients.cosmos import STATE_INDEXING_POLICY, CosmosCounters, load_counts, op_kind
from tests.support.samples import ROOT

#: Per message on the happy path: the admission (read + write, with the chain's send claim); the handler decides on
#: the admission's version and writes nothing; the reply sender sends and writes the answer and the "sent" mark at
#: once, on that version (no read). The issue's bound is 4 operations, 2 writes: this design makes 3.
MAX_OPS, MAX_WRITES = 4, 2


def test_requests_are_classified_by_container_and_kind():
    docs = "https://h:1/dbs/chatbot/colls/user_state/docs"
    assert op_kind("GET", docs + "/u-1", {}) == ("user_state", "read")
    assert op_kind("PATCH", docs + "/u-1", {}) == ("user_state", "patch")
    assert op_kind("PUT", docs + "/u-1", {}) == ("user_state", "replace")
    assert op_kind("POST", docs, {"x-ms-documentdb-isquery": "True"}) == ("user_state", "query")
    assert op_kind("POST", docs, {"x-ms-documentdb-is-upsert": "True"}) == ("user_state", "upsert")
    assert op_kind("POST", docs, {}) == ("user_state", "create")
    assert op_kind("DELETE", docs + "/u-1", {}) == ("user_state", "delete")
    assert op_kind("GET", "https://h:1/dbs/chatbot/colls/user_state", {}) is None  # metadata
    assert op_kind("GET", "https://h:1/", {}) is None


def test_counters_sum_per_container_and_across_processes(tmp_path):
    c = CosmosCounters()
    c.count("user_state", "read", 0, 900)
    c.count("user_state", "patch", 300, 900)
    assert c.snapshot() == {"user_state": {"read": 1, "patch": 1, "operations": 2, "writes": 1, "request_bytes": 300,
                                           "written_bytes": 300, "response_bytes": 1800}}
    (tmp_path / "cosmos-ops-1.json").write_text(json.dumps(c.snapshot()))
    (tmp_path / "cosmos-ops-2.json").write_text(json.dumps({"user_state": {"operations": 3, "writes": 1}}))
    assert load_counts(tmp_path)["user_state"]["operations"] == 5


def test_the_state_container_indexes_only_what_is_queried_in_code_and_bicep():
    """Only ``channel_url`` and ``updated_at_ms`` (the console's queries); not the turns, not the rest."""
    assert STATE_INDEXING_POLICY["excludedPaths"][0] == {"path": "/*"}
    assert {p["path"] for p in STATE_INDEXING_POLICY["includedPaths"]} == {"/channel_url/?", "/updated_at_ms/?"}
    bicep = (ROOT / "infra" / "main.bicep").read_text()
    block = bicep[bicep.index("resource cosmosStateContainer"):bicep.index("resource cosmosReviewContainer")]
    assert re.findall(r"path: '([^']+)'", block) == [
        "/channel_url/?", "/updated_at_ms/?", "/*", '/"_etag"/?', "/channel_url", "/updated_at_ms"]
    assert "indexingMode: 'consistent'" in block and "order: 'descending'" in block


@pytest.mark.stack
def test_the_stand_in_stores_the_indexing_policy(cosmos):
    from shared.clients.cosmos import connect
    from shared.settings import load_settings
    from tests.support.samples import sample_values
    values = {**sample_values(), "COSMOS_ENDPOINT": cosmos.endpoint, "COSMOS_DATABASE": "indexing",
              "COSMOS_CREATE_IF_MISSING": "true"}
    container = connect(load_settings(values).settings)
    policy = container.read()["indexingPolicy"]
    assert policy["excludedPaths"] == STATE_INDEXING_POLICY["excludedPaths"]
    assert policy["includedPaths"] == STATE_INDEXING_POLICY["includedPaths"]


# --------------------------------------------------------------------------- through the real local stack
@pytest.fixture(scope="module")
def counting_gateway(stack_settings, stack_logs, tmp_path_factory):
    """Another runner of the real app writing its Cosmos DB counters to a directory, on queues of its own (an
    Azurite of its own: runners sharing queues are competing consumers) and its own Cosmos database."""
    from devstack.stack import Azurite, FunctionsRunner
    counts = tmp_path_factory.mktemp("cosmos-ops")
    with Azurite(0, log_dir=stack_logs) as azurite:
        env = {**stack_settings, "AzureWebJobsStorage": azurite.connection_string, "COSMOS_DATABASE": "cosmos-ops",
               "COSMOS_OP_COUNTS_DIR": str(counts)}
        runner = FunctionsRunner(ROOT, 0, env, log_dir=stack_logs).start()
        try:
            yield runner, counts
        finally:
            runner.stop()


def state_counts(counts: Path) -> dict[str, int]:
    """The runner's counts on the user-state container, once two reads 0.6 s apart agree (each process writes
    them every 0.5 s)."""
    last = load_counts(counts).get("user_state", {})
    for _ in range(20):
        time.sleep(0.6)
        now = load_counts(counts).get("user_state", {})
        if now == last:
            return now
        last = now
    raise AssertionError("the runner's Cosmos DB counters kept changing")


def wait_sent(container, user: str, message_id: int, timeout: float = 20.0) -> None:
    """Until the turn of ``message_id`` is marked sent in the user's document (the reply sender's last write)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            doc = container.read_item(user, partition_key=user)
            if any(t["message_id"] == message_id and t["status"] == "sent" for t in doc["turns"]):
                return
        except Exception:  # noqa: BLE001 - not created yet
            pass
        time.sleep(0.1)
    raise AssertionError(f"message {message_id} of {user} not marked sent within {timeout} s")


@pytest.mark.stack
def test_a_message_costs_at_most_four_operations_and_two_writes(counting_gateway, cosmos, sendbird_standin):
    from tools import webhooks
    from tools.gateway_stack import LOCAL_API_TOKEN
    runner, counts = counting_gateway
    container = cosmos.client().get_database_client("cosmos-ops").get_container_client("user_state")
    http = requests.Session()
    per_message = []
    for _ in range(2):  # a new user (document created), then messages on an existing document
        user, channel = f"ops-{uuid.uuid4().hex[:8]}", f"sendbird_group_channel_{uuid.uuid4().hex[:8]}"
        for i, text in enumerate(("hello", "what can you do?", "thanks, bye")):
            before = state_counts(counts)
            mid = int(uuid.uuid4().int % 10**12)
            body = webhooks.encode(webhooks.message_send_event(user_id=user, text=text, message_id=mid,
                                                               channel_url=channel))
            assert webhooks.post(http, runner.base_url, body, LOCAL_API_TOKEN).status == 200
            sendbird_standin.control.wait_for_messages(i + 1, timeout=20, channel_url=channel)
            wait_sent(container, user, mid)
            after = state_counts(counts)
            per_message.append({k: after.get(k, 0) - before.get(k, 0) for k in ("operations", "writes", "read")})
    assert all(m["operations"] <= MAX_OPS and m["writes"] <= MAX_WRITES for m in per_message), per_message
    assert all(m == {"operations": 3, "writes": 2, "read": 1} for m in per_message), per_message
