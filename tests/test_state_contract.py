"""One contract for user-state stores: the in-memory fake and Cosmos DB (on the stand-in) must both pass it."""

from __future__ import annotations

import threading
import uuid

import pytest

from shared.clients.cosmos import CosmosStateStore, connect
from shared.errors import TransientError
from shared.settings import load_settings
from shared.state import Turn
from tests.support.samples import sample_values
from tests.support.fakes import InMemoryStateStore


@pytest.fixture(params=["in-memory", "cosmos"])
def store(request):
    if request.param == "in-memory":
        return InMemoryStateStore()
    cosmos = request.getfixturevalue("cosmos")
    values = {**sample_values(), "COSMOS_ENDPOINT": cosmos.endpoint, "COSMOS_DATABASE": "contract"}
    return CosmosStateStore(connect(load_settings(values).settings))


def user() -> str:
    return f"user-{uuid.uuid4().hex[:8]}"


def test_get_or_create_creates_once(store):
    u = user()
    first = store.get_or_create(u, "ch-1")
    assert first.user_id == u and first.channel_url == "ch-1" and first.turns == []
    store.update(u, "ch-1", lambda s: setattr(s, "language", "en"))
    assert store.get_or_create(u, "ch-2").language == "en"  # not re-created


def test_update_persists_and_returns_the_mutate_result(store):
    u = user()
    result = store.update(u, "ch-1", lambda s: (setattr(s, "pending_slot", "order_number"), "done")[1])
    assert result == "done"
    assert store.get_or_create(u, "ch-1").pending_slot == "order_number"


def test_user_ids_with_reserved_characters(store):
    u = f"team/{uuid.uuid4().hex[:6]}?#x"
    store.update(u, "ch", lambda s: setattr(s, "language", "ko"))
    state = store.get_or_create(u, "ch")
    assert state.user_id == u and state.language == "ko"


def test_concurrent_updates_lose_nothing(store):
    u = user()
    store.get_or_create(u, "ch")
    errors = []

    def add(i):
        try:
            store.update(u, "ch", lambda s: s.record_turn(Turn(message_id=i, at_ms=i, route="greeting"), 100))
        except TransientError as exc:
            errors.append(exc)

    threads = [threading.Thread(target=add, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # each conflict means another writer succeeded, so 8 writers never exhaust 8 attempts
    assert errors == []
    assert {t.message_id for t in store.get_or_create(u, "ch").turns} == set(range(8))


def test_mutate_runs_again_on_a_concurrent_change(store):
    u = user()
    store.get_or_create(u, "ch")
    calls = []

    def mutate(s):
        calls.append(s.language)
        if len(calls) == 1:  # another writer wins the race between our read and our write
            store.update(u, "ch", lambda other: setattr(other, "language", "en"))
        s.pending_slot = "product_category"

    store.update(u, "ch", mutate)
    final = store.get_or_create(u, "ch")
    assert calls == [None, "en"]  # second attempt saw the other writer's change
    assert final.language == "en" and final.pending_slot == "product_category"


def test_fields_written_by_another_writer_survive_our_updates(store):
    u = user()
    store.update(u, "ch", lambda s: setattr(s, "ops_note", "vip customer"))
    store.update(u, "ch", lambda s: setattr(s, "language", "ko"))
    state = store.get_or_create(u, "ch")
    assert state.language == "ko" and getattr(state, "ops_note", None) == "vip customer"
