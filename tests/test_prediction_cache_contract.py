"""Contract of :class:`shared.ports.PredictionCache`: the in-memory fake and the Redis adapter against a real
``redis-server`` (Debian package, started on a free loopback port, memory only) pass the same tests."""

from __future__ import annotations

import time
import uuid

import pytest

from devstack.stack import RedisServer
from shared.clients.prediction_cache import RedisPredictionCache
from shared.intent_cache import CachedIntent
from tests.support.fakes import FixedModelVersions, InMemoryPredictionCache
from tests.test_intent_cache import VersionedIntent, ask, cache_settings


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory):
    with RedisServer(0, log_dir=tmp_path_factory.mktemp("redis-logs")) as server:
        yield server


@pytest.fixture(params=["fake", "redis"])
def cache(request):
    if request.param == "fake":
        yield InMemoryPredictionCache()
        return
    adapter = RedisPredictionCache(request.getfixturevalue("redis_server").url, timeout_seconds=0.5)
    yield adapter
    adapter.close()


def key() -> str:
    return f"intent:v1:test-{uuid.uuid4().hex}"


def test_a_missing_key_is_none(cache):
    assert cache.get(key()) is None


def test_a_value_is_read_back_unchanged(cache):
    k, value = key(), '{"v":"m1","top":"ProductSearch","entities":[{"text":"운동화"}]}'
    cache.set(k, value, 60)
    assert cache.get(k) == value


def test_set_replaces_the_value(cache):
    k = key()
    cache.set(k, "one", 60)
    cache.set(k, "two", 60)
    assert cache.get(k) == "two"


def test_a_value_expires_after_its_ttl(cache):
    k, other = key(), key()
    cache.set(k, "short", 1)
    cache.set(other, "long", 60)
    time.sleep(1.3)
    assert cache.get(k) is None and cache.get(other) == "long"


def test_the_wrapper_answers_a_repeated_utterance_from_either(cache):
    inner = VersionedIntent(version=f"model-{uuid.uuid4().hex[:8]}")
    cached = CachedIntent(inner, cache, FixedModelVersions(inner.version), cache_settings())
    ask(cached, "Do you have running shoes?")
    again = ask(cached, "do you have running shoes?")
    assert len(inner.calls) == 1 and again.query == "do you have running shoes?"


def test_redis_holds_no_text(redis_server):
    import redis

    adapter = RedisPredictionCache(redis_server.url, timeout_seconds=0.5)
    inner = VersionedIntent(version=f"model-{uuid.uuid4().hex[:8]}")
    ask(CachedIntent(inner, adapter, FixedModelVersions(inner.version), cache_settings()), "My secret sentence")
    client = redis.Redis.from_url(redis_server.url, decode_responses=True)
    dump = [(k, client.get(k), client.ttl(k)) for k in client.scan_iter("intent:v1:*")]
    assert dump and all("secret" not in k.lower() and "secret" not in (v or "").lower() for k, v, _ in dump)
    assert all(0 < ttl <= 3600 for k, _, ttl in dump if not k.startswith("intent:v1:test-"))
    adapter.close()
