"""One contract for user-state stores: the in-memory fake and Cosmos DB (on the stand-in) must both pass it."""

from __future__ import annotations

import threading
import uuid

import pytest

from shared.clients.cosmos import COUNTERS, CosmosStateStore, connect
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


# --------------------------------------------------------------------------- versions: writes without a read
def counts(store) -> tuple[int, int]:
    """(reads, writes) the store did so far: the fake counts them, the Cosmos adapter's client counts requests."""
    if isinstance(store, InMemoryStateStore):
        return store.reads, store.writes
    snap = COUNTERS.snapshot().get(store_container(store), {})
    return snap.get("read", 0), snap.get("writes", 0)


def store_container(store) -> str:
    return store._target.rstrip("/").split("/")[-1]


def admit(message_id: int):
    return lambda s: s.admit(message_id, f"corr-{message_id}", 1_000, limit=20, channel_url="ch")


def answer(message_id: int, text: str = "hello"):
    def mutate(s):
        turn = s.turn_for(message_id)
        turn.status, turn.reply_key, turn.reply_text = "answered", "greeting.hello", text
        s.language = "en"
        return turn.seq
    return mutate


def test_the_version_after_a_write_keeps_the_turns_the_next_stage_needs(store):
    u = user()
    for mid in (1, 2):
        store.update(u, "ch", admit(mid))
    store.update(u, "ch", lambda s: setattr(s.turn_for(1), "status", "sent"))
    _, version = store.update_versioned(u, "ch", admit(3), keep_turn=3)
    assert store.trusts(version)
    kept = {t["message_id"]: i for t, i in zip(version.doc["turns"], version.indexes, strict=True)}
    assert kept == {2: 1, 3: 2}  # the final turn 1 is left out; positions are the stored ones
    assert "recent_message_ids" not in version.doc and version.state().turn_for(3).seq == 3
    forged = version.model_copy(update={"doc": {**version.doc, "pending_slot": "order_number"}})
    assert not store.trusts(forged)


def test_a_write_on_a_version_needs_no_read(store):
    u = user()
    _, version = store.update_versioned(u, "ch", admit(1), keep_turn=1)
    reads, writes = counts(store)
    seq, after = store.update_versioned(u, "ch", answer(1), base=version, keep_turn=1)
    assert seq == 1 and counts(store) == (reads, writes + 1)
    # and on the version that write returned, again without a read
    store.update_versioned(u, "ch", lambda s: setattr(s.turn_for(1), "status", "sent"), base=after)
    assert counts(store) == (reads, writes + 2)
    state = store.get_or_create(u, "ch")
    assert state.language == "en" and state.turn_for(1).status == "sent" and state.turn_for(1).reply_text == "hello"
    assert state.next_seq == 2 and list(state.recent_message_ids) == ["1"]


def test_a_stale_version_falls_back_to_a_read_and_keeps_the_other_writers_change(store):
    u = user()
    _, version = store.update_versioned(u, "ch", admit(1), keep_turn=1)
    store.update(u, "ch", lambda s: setattr(s, "ops_note", "vip customer"))  # another writer, after the version
    store.update(u, "ch", admit(2))
    reads, _ = counts(store)
    assert store.update_versioned(u, "ch", answer(1), base=version)[0] == 1
    assert counts(store)[0] == reads + 1  # the conditional write failed (412), then one read-modify-write
    state = store.get_or_create(u, "ch")
    assert getattr(state, "ops_note", None) == "vip customer" and state.turn_for(1).status == "answered"
    assert [t.message_id for t in state.turns] == [1, 2]


def test_decisions_not_to_write_and_changes_a_version_cannot_express_are_taken_on_a_read(store):
    u = user()
    _, version = store.update_versioned(u, "ch", admit(1), keep_turn=1)
    store.update(u, "ch", lambda s: setattr(s, "language", "ko"))  # the version is stale now
    reads, writes = counts(store)
    seen = store.update_versioned(u, "ch", lambda s: s.language, base=version)[0]  # changes nothing
    assert seen == "ko" and counts(store) == (reads + 1, writes)  # answered from the stored document
    _, version = store.update_versioned(u, "ch", lambda s: None, keep_turn=1)
    store.update_versioned(u, "ch", admit(2), base=version)  # adds a turn: not expressible on the partial copy
    assert [t.message_id for t in store.get_or_create(u, "ch").turns] == [1, 2]
    tampered = version.model_copy(update={"etag": "forged"})
    store.update_versioned(u, "ch", answer(1), base=tampered)  # not trusted: read-modify-write
    assert store.get_or_create(u, "ch").turn_for(1).status == "answered"


def test_a_bounded_history_is_written_as_a_patch_and_stays_bounded(store):
    u = user()
    for mid in range(1, 8):
        store.update(u, "ch", lambda s, mid=mid: s.admit(mid, None, 1_000, limit=5, channel_url="ch"))
    state = store.get_or_create(u, "ch")
    assert [t.message_id for t in state.turns] == [3, 4, 5, 6, 7] and state.next_seq == 8
    assert len(state.recent_message_ids) == 7


def test_a_deferred_change_is_written_with_the_next_one_in_one_write(store):
    u = user()
    _, version = store.update_versioned(u, "ch", admit(1), keep_turn=1)
    reads, writes = counts(store)
    seq, deferred = store.defer(version, answer(1))
    assert seq == 1 and counts(store) == (reads, writes)  # no I/O
    assert deferred.unwritten and store.trusts(deferred) and deferred.state().turn_for(1).reply_text == "hello"
    assert store.get_or_create(u, "ch").turn_for(1).status == "received"  # not written yet
    reads, writes = counts(store)
    store.update_versioned(u, "ch", lambda s: setattr(s.turn_for(1), "status", "sent"), base=deferred)
    assert counts(store) == (reads, writes + 1)
    state = store.get_or_create(u, "ch")
    assert state.turn_for(1).status == "sent" and state.turn_for(1).reply_text == "hello" and state.language == "en"
    assert store.defer(version, lambda s: None) is None  # nothing to defer
    tampered = deferred.model_copy(update={"unwritten": [{"op": "set", "path": "/language", "value": "ko"}]})
    assert not store.trusts(tampered) and store.defer(tampered, answer(1)) is None
