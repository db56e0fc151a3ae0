"""Opening the database and containers when ``COSMOS_CREATE_IF_MISSING`` is set (the local stack): several worker
processes and instances do it at once on their first message, and none may fail because another one won the race."""

from __future__ import annotations

import threading
import uuid

from azure.cosmos import exceptions as cosmos_errors

from shared.clients.cosmos import cosmos_client, open_container
from shared.settings import load_settings
from tests.support.samples import sample_values


class _RacyDatabase:
    """``create_container_if_not_exists`` as the SDK does it (read, then create on a 404) when another process
    created the container in between: the first call raises 409."""

    def __init__(self) -> None:
        self.calls = 0

    def create_container_if_not_exists(self, name, **_kwargs):
        self.calls += 1
        if self.calls == 1:
            raise cosmos_errors.CosmosResourceExistsError(message="conflict")
        return f"container {name}"


class _RacyClient:
    def __init__(self) -> None:
        self.db = _RacyDatabase()
        self.calls = 0

    def create_database_if_not_exists(self, _name):
        self.calls += 1
        if self.calls == 1:
            raise cosmos_errors.CosmosResourceExistsError(message="conflict")
        return self.db


def test_a_database_or_container_created_concurrently_by_another_process_is_opened():
    settings = load_settings({**sample_values(), "COSMOS_CREATE_IF_MISSING": "true"}).settings
    client = _RacyClient()
    assert open_container(client, settings, "user-state", "/user_id") == "container user-state"  # type: ignore[arg-type]
    assert (client.calls, client.db.calls) == (2, 2)


def test_processes_opening_one_new_container_at_once_all_get_it(cosmos):
    """Against the Cosmos DB stand-in: eight clients (as eight worker processes would) open the same new database and
    container at the same moment; every one gets the container, and it is usable."""
    values = {**sample_values(), "COSMOS_ENDPOINT": cosmos.endpoint, "COSMOS_DATABASE": f"race-{uuid.uuid4().hex[:8]}",
              "COSMOS_CREATE_IF_MISSING": "true"}
    settings = load_settings(values).settings
    name, start = f"state-{uuid.uuid4().hex[:8]}", threading.Barrier(8)
    results: list[object] = []

    def open_one() -> None:
        client = cosmos_client(settings)
        start.wait(10)
        try:
            results.append(open_container(client, settings, name, "/user_id"))
        except Exception as exc:  # noqa: BLE001 - recorded and asserted below
            results.append(exc)

    threads = [threading.Thread(target=open_one) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(results) == 8 and not [r for r in results if isinstance(r, Exception)], results
    results[0].upsert_item({"id": "u1", "user_id": "u1"})  # type: ignore[attr-defined]
    assert results[-1].read_item("u1", partition_key="u1")["id"] == "u1"  # type: ignore[attr-defined]
