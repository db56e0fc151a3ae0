"""The Cosmos DB stand-in (devstack/cosmos_server.js) driven by azure-cosmos."""

from __future__ import annotations

import http.client
import ssl
import uuid

import pytest
from azure.core import MatchConditions
from azure.cosmos import PartitionKey, exceptions

pytestmark = pytest.mark.stack  # needs node_modules; starts the Cosmos stand-in


@pytest.fixture(scope="module")
def database(cosmos_client):
    db = cosmos_client.create_database_if_not_exists(f"db-{uuid.uuid4().hex[:8]}")
    yield db
    cosmos_client.delete_database(db.id)


@pytest.fixture(scope="module")
def container(database):
    return database.create_container_if_not_exists("conversations", partition_key=PartitionKey(path="/user_id"))


def _id() -> str:
    return uuid.uuid4().hex


def test_database_and_container_exist(cosmos_client, database, container):
    props = container.read()
    assert props["partitionKey"]["paths"] == ["/user_id"]
    assert database.id in [d["id"] for d in cosmos_client.list_databases()]
    assert "conversations" in [c["id"] for c in database.list_containers()]


def test_create_read_replace_with_etag(container):
    doc_id = _id()
    created = container.create_item({"id": doc_id, "user_id": "u1", "turn": 1})
    etag1 = created["_etag"]
    assert etag1

    read = container.read_item(doc_id, partition_key="u1")
    assert read["turn"] == 1 and read["_etag"] == etag1

    replaced = container.replace_item(
        doc_id, {"id": doc_id, "user_id": "u1", "turn": 2},
        etag=etag1, match_condition=MatchConditions.IfNotModified,
    )
    assert replaced["_etag"] != etag1

    with pytest.raises(exceptions.CosmosAccessConditionFailedError) as err:
        container.replace_item(
            doc_id, {"id": doc_id, "user_id": "u1", "turn": 3},
            etag=etag1, match_condition=MatchConditions.IfNotModified,
        )
    assert err.value.status_code == 412
    assert container.read_item(doc_id, partition_key="u1")["turn"] == 2


def test_read_missing_document_is_404(container):
    with pytest.raises(exceptions.CosmosResourceNotFoundError) as err:
        container.read_item(_id(), partition_key="u1")
    assert err.value.status_code == 404


def test_read_with_wrong_partition_key_is_404(container):
    doc_id = _id()
    container.create_item({"id": doc_id, "user_id": "u-right"})
    with pytest.raises(exceptions.CosmosResourceNotFoundError):
        container.read_item(doc_id, partition_key="u-wrong")


def test_read_after_delete_is_404(container):
    doc_id = _id()
    container.create_item({"id": doc_id, "user_id": "u2"})
    container.delete_item(doc_id, partition_key="u2")
    with pytest.raises(exceptions.CosmosResourceNotFoundError):
        container.read_item(doc_id, partition_key="u2")


def test_create_duplicate_is_409(container):
    doc_id = _id()
    container.create_item({"id": doc_id, "user_id": "u3"})
    with pytest.raises(exceptions.CosmosResourceExistsError) as err:
        container.create_item({"id": doc_id, "user_id": "u3"})
    assert err.value.status_code == 409


def test_upsert_creates_then_replaces(container):
    doc_id = _id()
    first = container.upsert_item({"id": doc_id, "user_id": "u4", "v": 1})
    second = container.upsert_item({"id": doc_id, "user_id": "u4", "v": 2})
    assert first["_etag"] != second["_etag"]
    assert container.read_item(doc_id, partition_key="u4")["v"] == 2


def test_query_with_parameters(container):
    user = f"q-{_id()[:6]}"
    for i in range(5):
        container.create_item({"id": _id(), "user_id": user, "n": i})
    rows = list(container.query_items(
        "SELECT c.n FROM c WHERE c.user_id = @u AND c.n >= @min ORDER BY c.n",
        parameters=[{"name": "@u", "value": user}, {"name": "@min", "value": 2}],
        partition_key=user,
    ))
    assert [r["n"] for r in rows] == [2, 3, 4]
    cross = list(container.query_items(
        "SELECT VALUE COUNT(1) FROM c WHERE c.user_id = @u",
        parameters=[{"name": "@u", "value": user}],
        enable_cross_partition_query=True,
    ))
    assert cross == [5]


def test_server_keeps_connections_alive(cosmos_standin):
    conn = http.client.HTTPSConnection(
        cosmos_standin.host, cosmos_standin.port, timeout=5, context=ssl._create_unverified_context()
    )
    try:
        for _ in range(2):  # two requests over the same connection
            conn.request("GET", "/")
            resp = conn.getresponse()
            resp.read()
            assert resp.getheader("connection") == "keep-alive"
    finally:
        conn.close()
