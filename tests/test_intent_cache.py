"""The prediction cache (shared/intent_cache.py, shared/clients/prediction_cache.py): keys, values, TTL, model
versions, and a cache that is down or hung never failing or delaying a message beyond its timeout."""

from __future__ import annotations

import json
import socket
import threading
import time

import pytest
from pytest_httpserver import HTTPServer

from shared import intent_cache as ic
from shared.bootstrap import intent_port
from shared.clients.clu import IntentClient
from shared.clients.prediction_cache import DeploymentVersionProbe, EntraIdCredentialProvider, RedisPredictionCache
from shared.errors import RateLimited, TransientError
from shared.models import Entity, IntentPrediction, IntentScore
from shared.settings import SettingsError, load_settings
from shared.telemetry import NullTelemetry
from tests.support.fakes import FixedModelVersions, InMemoryPredictionCache
from tests.support.samples import sample_values

SECRET = "test-cache-hash-key-0123456789"


def cache_settings(**values: str):
    return load_settings({**sample_values(), "INTENT_CACHE_URL": "redis://127.0.0.1:6399/0",
                          "INTENT_CACHE_HASH_KEY": SECRET, **values}).settings


class VersionedIntent:
    """An intent service answering ``top`` from model ``version``, counting calls; ``entities`` per text."""

    def __init__(self, version: str | None = "model-v1", top: str = "Greeting"):
        self.version, self.top = version, top
        self.entities: dict[str, list[Entity]] = {}
        self.calls: list[str] = []

    def analyze(self, text: str, language: str, participant_id: str, item_id: str,
                request_id: str | None = None) -> IntentPrediction:
        self.calls.append(text)
        return IntentPrediction(query=text, top_intent=self.top, model_version=self.version,
                                intents=[IntentScore(category=self.top, confidence_score=0.91),
                                         IntentScore(category="None", confidence_score=0.09)],
                                entities=self.entities.get(text, []))


class Metrics:
    def __init__(self):
        self.outcomes: list[str] = []

    def metric(self, name, value, **dims):
        assert name == "intent_cache_lookups"
        self.outcomes.append(dims["outcome"])


class Telemetry(NullTelemetry):
    """Telemetry off, but the cache's look-up outcomes recorded (``metrics.outcomes``)."""

    def __init__(self):
        super().__init__()
        self.metrics = Metrics()

    def metric(self, name, value, **dims):
        self.metrics.metric(name, value, **dims)


@pytest.fixture
def parts():
    now = [1000.0]
    cache = InMemoryPredictionCache(clock=lambda: now[0])
    inner, versions, telemetry = VersionedIntent(), FixedModelVersions("model-v1"), Telemetry()
    cached = ic.CachedIntent(inner, cache, versions, cache_settings(), telemetry)
    return cached, inner, cache, versions, telemetry.metrics.outcomes, now


def ask(cached, text="Hello there", language="en"):
    return cached.analyze(text, language, participant_id="u1", item_id="1", request_id="c1")


# ------------------------------------------------------------------------------------------------ key and value
def key(**over):
    fields = dict(endpoint="127.0.0.1", project="retail-bot", deployment="production", model_version="model-v1",
                  language="en", text="Where are my Sneakers?")
    fields.update(over)
    return ic.cache_key(SECRET, **fields)


def test_the_key_is_a_keyed_hash_of_every_part_and_never_the_text():
    k = key()
    assert k.startswith("intent:v1:") and len(k) == len("intent:v1:") + 64
    assert "sneakers" not in k.lower()
    for change in ({"endpoint": "other"}, {"project": "p2"}, {"deployment": "staging"},
                   {"model_version": "model-v2"}, {"language": "ko"}, {"text": "Where are my boots?"},
                   {"text": "where is order 1234"}):
        assert key(**change) != k, change
    assert key(text="where is order 1234") != key(text="where is order 1235")  # digits are kept
    assert ic.cache_key("another-secret-0123456", endpoint="127.0.0.1", project="retail-bot",
                        deployment="production", model_version="model-v1", language="en",
                        text="Where are my Sneakers?") != k


def test_the_key_ignores_only_what_the_model_ignores():
    assert key(text="  WHERE are   my\nsneakers? ") == key()
    assert key(text="Ｗｈｅｒｅ are my sneakers?") == key()  # full-width letters: NFKC
    assert key(text="Where are my sneakers") != key()      # punctuation is seen by the model
    assert ic.normalise("  운동화   보여주세요 ") == "운동화 보여주세요"


def test_the_value_has_no_query_and_round_trips():
    p = VersionedIntent().analyze("Show me shoes", "en", "u", "1")
    raw = ic.encode(p, "model-v1")
    assert "Show me shoes" not in raw
    back = ic.decode(raw, "show me SHOES", "model-v1")
    assert back is not None and back.query == "show me SHOES"
    assert back.model_dump(exclude={"query"}) == p.model_dump(exclude={"query"})
    assert ic.decode(raw, "show me shoes", "model-v2") is None   # stored for another model: a miss
    assert ic.decode("{not json", "x", "model-v1") is None and ic.decode('{"k": "model-v1"}', "x", "model-v1") is None


def test_only_predictions_with_list_entities_are_cacheable():
    p = VersionedIntent().analyze("x", "en", "u", "1")
    category = Entity(category="ProductCategory", text="shoes", offset=8, length=5, key="shoes")
    order = Entity(category="OrderNumber", text="20261119-0042", offset=18, length=13)
    assert ic.cacheable(p) and ic.cacheable(p.model_copy(update={"entities": [category]}))
    assert not ic.cacheable(p.model_copy(update={"entities": [category, order]}))


# ------------------------------------------------------------------------------------------------ the wrapper
def test_a_repeated_utterance_is_answered_from_the_cache(parts):
    cached, inner, cache, _versions, outcomes, _now = parts
    first = ask(cached, "Hello there")
    second = ask(cached, "  hello   THERE ")
    assert inner.calls == ["Hello there"]
    assert second.query == "  hello   THERE " and second.top_intent == first.top_intent
    assert second.intents == first.intents and second.model_version == "model-v1"
    assert outcomes == ["miss", "hit"]
    assert [k for k in cache.values] == [ic.cache_key(SECRET, endpoint="127.0.0.1", project="retail-bot",
                                                      deployment="production", model_version="model-v1",
                                                      language="en", text="Hello there")]


def test_entries_expire_after_the_ttl(parts):
    cached, inner, cache, _versions, outcomes, now = parts
    ask(cached)
    (_value, expires), = cache.values.values()
    assert expires == now[0] + 3600  # INTENT_CACHE_TTL_SECONDS of the sample settings
    now[0] += 3599
    ask(cached)
    now[0] += 2
    ask(cached)
    assert outcomes == ["miss", "hit", "miss"] and len(inner.calls) == 2


def test_a_prediction_with_an_order_number_is_not_stored(parts):
    cached, inner, cache, _versions, outcomes, _now = parts
    inner.entities["where is 20261119-0042"] = [Entity(category="OrderNumber", text="20261119-0042", offset=9,
                                                       length=13)]
    ask(cached, "where is 20261119-0042")
    ask(cached, "where is 20261119-0042")
    assert len(inner.calls) == 2 and cache.values == {} and outcomes == ["miss", "miss"]


def test_a_model_swap_is_never_answered_from_the_cache(parts):
    cached, inner, cache, versions, outcomes, _now = parts
    ask(cached)
    versions.version = inner.version = "model-v2"   # the service now answers with another model
    inner.top = "Help"
    swapped = ask(cached)
    assert swapped.top_intent == "Help" and swapped.model_version == "model-v2"
    assert ask(cached).top_intent == "Help"
    assert outcomes == ["miss", "miss", "hit"] and len(inner.calls) == 2


def test_an_answer_from_a_newer_model_is_stored_under_its_version_and_becomes_current(parts):
    cached, inner, cache, versions, outcomes, _now = parts
    inner.version = "model-v2"   # swapped after the version look-up: the answer says so
    ask(cached)
    assert versions.version == "model-v2" and versions.observed == ["model-v2"]
    assert ask(cached).model_version == "model-v2"
    assert outcomes == ["miss", "hit"] and len(inner.calls) == 1


def test_an_entry_naming_another_version_is_not_served(parts):
    cached, inner, cache, versions, outcomes, _now = parts
    ask(cached)
    (k, (value, expires)), = cache.values.items()
    cache.values[k] = (value.replace('"k":"model-v1"', '"k":"model-v0"'), expires)
    assert ask(cached).model_version == "model-v1" and len(inner.calls) == 2 and outcomes == ["miss", "miss"]


def test_an_answer_without_a_version_is_stored_under_the_looked_up_one_and_returned_as_it_came(parts):
    cached, inner, cache, versions, outcomes, _now = parts
    versions.version, inner.version = "clu-model@2026-12-01T10:00:00Z", None   # Azure CLU
    ask(cached)
    hit = ask(cached)
    assert outcomes == ["miss", "hit"] and len(inner.calls) == 1 and hit.model_version is None
    versions.version = "clu-model@2026-12-03T16:00:00Z"                         # redeployed
    ask(cached)
    assert outcomes[-1] == "miss" and len(inner.calls) == 2


def test_an_unknown_model_version_bypasses_the_cache(parts):
    cached, inner, cache, versions, outcomes, _now = parts
    versions.version = None
    inner.version = None  # Azure CLU reports no version
    ask(cached)
    ask(cached)
    assert len(inner.calls) == 2 and cache.gets == 0 and cache.values == {} and outcomes == ["bypass", "bypass"]


def test_a_cache_that_is_down_is_a_miss_and_nothing_is_written(parts):
    cached, inner, cache, versions, outcomes, _now = parts
    cache.fail_with = TransientError("redis down")
    assert ask(cached).top_intent == "Greeting"
    assert len(inner.calls) == 1 and cache.sets == 0 and outcomes == ["error"]


def test_errors_of_the_intent_service_propagate(parts):
    cached, inner, _cache, _versions, outcomes, _now = parts

    def fail(*a, **k):
        raise TransientError("intent service down")
    inner.analyze = fail
    with pytest.raises(TransientError, match="intent service down"):
        ask(cached)


# ------------------------------------------------------------------------------------------------ single-flight
class GatedIntent(VersionedIntent):
    """:class:`VersionedIntent` whose first call waits in the model until the test sets ``release`` (``entered`` is
    set once it is there) and then raises ``fail_first`` if given; with ``barrier``, every call first waits for the
    barrier's other parties (proves calls were in the model at the same time). ``returned``: participant ->
    the prediction the model gave that participant's call."""

    def __init__(self):
        super().__init__()
        self.entered, self.release = threading.Event(), threading.Event()
        self.fail_first: Exception | None = None
        self.barrier: threading.Barrier | None = None
        self.participants: list[str] = []
        self.returned: dict[str, IntentPrediction] = {}
        self._lock = threading.Lock()

    def analyze(self, text, language, participant_id, item_id, request_id=None):
        with self._lock:
            first = not self.participants
            self.participants.append(participant_id)
        if self.barrier is not None:
            self.barrier.wait(5)
        if first:
            self.entered.set()
            assert self.release.wait(5), "the test never released the first call"
            if self.fail_first is not None:
                raise self.fail_first
        prediction = super().analyze(text, language, participant_id, item_id, request_id)
        self.returned[participant_id] = prediction
        return prediction


class Call(threading.Thread):
    """``cached.analyze(text, ...)`` for ``participant`` on its own thread; :meth:`outcome` joins it and gives the
    prediction (or raises what the call raised)."""

    def __init__(self, cached, text, participant, language="en"):
        super().__init__(daemon=True)
        self.cached, self.text, self.participant, self.language = cached, text, participant, language
        self.value: IntentPrediction | None = None
        self.error: BaseException | None = None
        self.start()

    def run(self):
        try:
            self.value = self.cached.analyze(self.text, self.language, participant_id=self.participant, item_id="1",
                                             request_id=f"c-{self.participant}")
        except BaseException as exc:  # re-raised by outcome()
            self.error = exc

    def outcome(self) -> IntentPrediction:
        self.join(5)
        assert not self.is_alive(), "the call did not finish"
        if self.error is not None:
            raise self.error
        assert self.value is not None
        return self.value


@pytest.fixture
def gated(parts):
    cached, _inner, cache, versions, outcomes, now = parts
    inner = GatedIntent()
    cached.inner = inner
    return cached, inner, cache, outcomes


def lead_and_follow(cached, inner, texts_by_participant: dict[str, str]):
    """The first participant's call enters the model and waits there; the others look up while it does, and the
    function returns once they all wait for it (the model is not released)."""
    (leader, text), *others = texts_by_participant.items()
    calls = {leader: Call(cached, text, leader)}
    assert inner.entered.wait(5)
    calls.update({p: Call(cached, t, p) for p, t in others})
    assert cached.flights.wait_for_followers(len(others), 5)
    return calls


def test_concurrent_misses_of_one_sentence_make_one_intent_call(gated):
    cached, inner, cache, outcomes = gated
    calls = lead_and_follow(cached, inner, {"u1": "Hello there", "u2": "hello   THERE", "u3": "Hello there",
                                            "u4": " HELLO there "})
    inner.release.set()
    got = {p: c.outcome() for p, c in calls.items()}
    assert inner.participants == ["u1"] and inner.calls == ["Hello there"]
    assert sorted(outcomes) == ["coalesced"] * 3 + ["miss"]
    assert got["u1"] is inner.returned["u1"]
    for p, c in calls.items():                          # each with its own text, otherwise what a hit would give
        assert got[p].query == c.text
        assert got[p].model_dump(exclude={"query"}) == got["u1"].model_dump(exclude={"query"})
    assert got["u2"].intents is not got["u1"].intents   # copies: a handler changing one changes no other
    assert len(cache.values) == 1 and len(cached.flights) == 0
    assert ask(cached, "Hello there").top_intent == "Greeting" and outcomes[-1] == "hit"


def test_different_sentences_or_languages_are_not_coalesced(gated):
    cached, inner, _cache, outcomes = gated
    inner.barrier = threading.Barrier(3)                # all three calls must be in the model at once
    inner.release.set()
    calls = [Call(cached, "Hello there", "u1"), Call(cached, "Hello there!", "u2"),
             Call(cached, "Hello there", "u3", language="ko")]
    for c in calls:
        c.outcome()
    assert sorted(inner.participants) == ["u1", "u2", "u3"] and outcomes == ["miss"] * 3


def test_a_prediction_with_a_personal_entity_is_never_shared_with_a_waiting_message(gated):
    cached, inner, cache, outcomes = gated
    text = "please call me Alice Kim"                    # a learned name entity: no digit gives it away
    inner.entities[text] = [Entity(category="PersonName", text="Alice Kim", offset=15, length=9)]
    calls = lead_and_follow(cached, inner, {"alice": text, "bob": text, "carol": text})
    inner.release.set()
    got = {p: c.outcome() for p, c in calls.items()}
    # the waiting messages asked the service themselves: each got the prediction of its own call
    assert sorted(inner.participants) == ["alice", "bob", "carol"] and inner.participants[0] == "alice"
    assert all(got[p] is inner.returned[p] for p in got)
    assert outcomes == ["miss"] * 3 and cache.values == {} and len(cached.flights) == 0
    # the key is now known not to be shareable: concurrent look-ups call at once, nobody waits
    inner.barrier = threading.Barrier(2)
    again = [Call(cached, text, "dave"), Call(cached, text, "erin")]
    assert [c.outcome().query for c in again] == [text, text]
    assert sorted(inner.participants[3:]) == ["dave", "erin"] and outcomes == ["miss"] * 5


def test_texts_with_digits_are_coalesced_only_within_one_participant(gated):
    cached, inner, cache, outcomes = gated
    text = "where is 20261119-0042"
    inner.entities[text] = [Entity(category="OrderNumber", text="20261119-0042", offset=9, length=13)]
    inner.barrier = threading.Barrier(3)                 # three users: three calls in the model at the same time
    inner.release.set()
    calls = {p: Call(cached, text, p) for p in ("alice", "bob", "carol")}
    assert all(c.outcome() is inner.returned[p] for p, c in calls.items())
    assert outcomes == ["miss"] * 3 and cache.values == {}
    # the same user sending a text with a digit twice at once: one call when its prediction may be shared
    inner2 = GatedIntent()
    cached2 = ic.CachedIntent(inner2, InMemoryPredictionCache(), FixedModelVersions("model-v1"), cache_settings())
    twice = {"u1": Call(cached2, "I want 2 pairs of sneakers", "u1")}
    assert inner2.entered.wait(5)
    twice["again"] = Call(cached2, "I want 2 pairs of sneakers", "u1")
    assert cached2.flights.wait_for_followers(1, 5)
    other = Call(cached2, "I want 2 pairs of sneakers", "u2")   # another user: not coalesced, its own call
    other.outcome()
    inner2.release.set()
    assert twice["u1"].outcome().top_intent == twice["again"].outcome().top_intent == "Greeting"
    assert sorted(inner2.participants) == ["u1", "u2"]


def test_the_memo_of_unshareable_sentences_expires_with_the_cache_ttl(parts):
    cached, inner, _cache, _versions, _outcomes, _now = parts
    now = [0.0]
    cached = ic.CachedIntent(inner, InMemoryPredictionCache(), FixedModelVersions("model-v1"), cache_settings(),
                             clock=lambda: now[0])
    inner.entities["order 1234"] = [Entity(category="OrderNumber", text="1234", offset=6, length=4)]
    ask(cached, "order 1234")
    k = cached._key("model-v1", "en", "order 1234")
    assert cached._known_uncacheable(k)
    now[0] = 3600
    assert not cached._known_uncacheable(k)


def test_if_the_leader_fails_each_waiting_message_asks_the_service_itself(gated):
    cached, inner, _cache, outcomes = gated
    inner.fail_first = TransientError("intent service reset the connection")
    calls = lead_and_follow(cached, inner, {"u1": "Hello there", "u2": "Hello there", "u3": "hello there"})
    inner.release.set()
    with pytest.raises(TransientError, match="reset the connection"):
        calls["u1"].outcome()
    assert calls["u2"].outcome().top_intent == "Greeting" and calls["u3"].outcome().query == "hello there"
    assert sorted(inner.participants) == ["u1", "u2", "u3"] and outcomes == ["miss"] * 3
    assert len(cached.flights) == 0
    assert ask(cached).top_intent == "Greeting" and outcomes[-1] == "hit"   # a follower's answer was stored


def test_a_waiting_message_waits_at_most_the_intent_timeout_then_asks_itself(gated):
    cached, inner, _cache, outcomes = gated
    assert cached.wait_seconds == cache_settings().intent_timeout_seconds   # the default bound
    cached.wait_seconds = 0.05
    leader = Call(cached, "Hello there", "u1")
    assert inner.entered.wait(5)
    follower = Call(cached, "Hello there", "u2")
    assert follower.outcome().top_intent == "Greeting"   # answered while the leader is still in the model
    assert leader.is_alive() and inner.participants == ["u1", "u2"]
    inner.release.set()
    assert leader.outcome().top_intent == "Greeting"
    assert outcomes == ["miss", "miss"] and len(cached.flights) == 0


def test_misses_are_coalesced_while_the_cache_is_down(gated):
    cached, inner, cache, outcomes = gated
    cache.fail_with = TransientError("redis down")
    calls = lead_and_follow(cached, inner, {"u1": "Hello there", "u2": "Hello there"})
    inner.release.set()
    assert [c.outcome().top_intent for c in calls.values()] == ["Greeting", "Greeting"]
    assert inner.participants == ["u1"] and sorted(outcomes) == ["coalesced", "error"] and cache.values == {}


def test_an_unknown_version_is_not_coalesced(gated):
    cached, inner, _cache, outcomes = gated
    cached.versions.version = None
    inner.barrier = threading.Barrier(2)
    inner.release.set()
    for c in [Call(cached, "Hello there", "u1"), Call(cached, "Hello there", "u2")]:
        c.outcome()
    assert sorted(inner.participants) == ["u1", "u2"] and outcomes == ["bypass", "bypass"]


# ------------------------------------------------------------------------------------------------ real adapter
class SilentServer:
    """Accepts TCP connections and never answers (a hung Redis); counts connections."""

    def __init__(self):
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.accepted: list[socket.socket] = []
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted.append(conn)

    def close(self):
        self.sock.close()
        for c in self.accepted:
            c.close()


@pytest.fixture
def silent_redis():
    server = SilentServer()
    yield server
    server.close()


def test_a_hung_redis_delays_a_message_by_one_timeout_then_the_circuit_skips_it(silent_redis):
    adapter = RedisPredictionCache(f"redis://127.0.0.1:{silent_redis.port}/0", timeout_seconds=0.05,
                                   breaker_failures=3, breaker_reset_seconds=60)
    inner, telemetry = VersionedIntent(), Telemetry()
    cached = ic.CachedIntent(inner, adapter, FixedModelVersions("model-v1"), cache_settings(), telemetry)
    took = []
    for _ in range(5):
        t0 = time.perf_counter()
        assert ask(cached).top_intent == "Greeting"
        took.append(time.perf_counter() - t0)
    assert len(inner.calls) == 5
    assert all(t < 0.5 for t in took), took              # one 50 ms timeout each, far below any message budget
    assert all(t >= 0.04 for t in took[:3]), took         # they did wait for Redis (then gave up)
    assert adapter.breaker.opened                          # 3 failures opened the circuit:
    assert len(silent_redis.accepted) <= 3                 # the last two messages did not touch the network
    assert telemetry.metrics.outcomes == ["error"] * 3 + ["breaker_open"] * 2   # counted apart
    with pytest.raises(RateLimited, match="circuit open") as raised:
        adapter.get("k")
    assert 1 <= raised.value.retry_after_seconds <= 60
    adapter.close()


def test_a_redis_that_is_down_gives_the_prediction_of_the_service():
    with socket.create_server(("127.0.0.1", 0)) as s:
        port = s.getsockname()[1]   # a port nobody listens on once closed
    adapter = RedisPredictionCache(f"redis://127.0.0.1:{port}/0", timeout_seconds=0.05)
    inner = VersionedIntent()
    cached = ic.CachedIntent(inner, adapter, FixedModelVersions("model-v1"), cache_settings())
    assert ask(cached).top_intent == "Greeting" and len(inner.calls) == 1
    with pytest.raises(TransientError):
        adapter.set("k", "v", 10)


# ------------------------------------------------------------------------------------------------ model versions
def probe_settings(httpserver: HTTPServer):
    return cache_settings(INTENT_ENDPOINT=httpserver.url_for("/"))


def test_the_version_comes_from_the_deployments_list_and_is_reused_for_its_ttl(httpserver: HTTPServer):
    deployments = {"deployments": [
        {"projectName": "retail-bot", "deploymentName": "staging", "modelVersion": "m-staging"},
        {"projectName": "retail-bot", "deploymentName": "production", "modelVersion": "m-prod"}]}
    httpserver.expect_request("/model", method="GET").respond_with_json(deployments)
    now = [0.0]
    probe = DeploymentVersionProbe(probe_settings(httpserver), ttl_seconds=1.0, clock=lambda: now[0])
    assert probe.current() == "m-prod"
    now[0] = 0.9
    assert probe.current() == "m-prod" and probe.lookups == 1
    probe.observe("m-next")                 # a prediction answered by a newer model
    assert probe.current() == "m-next" and probe.lookups == 1
    now[0] = 2.0
    assert probe.current() == "m-prod" and probe.lookups == 2


def test_a_single_model_service_gives_its_version_header(httpserver: HTTPServer):
    httpserver.expect_request("/model").respond_with_json({"version": "x"}, headers={"x-model-version": "m-1"})
    assert DeploymentVersionProbe(probe_settings(httpserver), ttl_seconds=0).current() == "m-1"


def test_azure_clu_gives_its_deployments_model_and_deploy_time(httpserver: HTTPServer):
    httpserver.expect_request("/model").respond_with_data("", status=404)
    httpserver.expect_request(
        "/language/authoring/analyze-conversations/projects/retail-bot/deployments/production",
        query_string={"api-version": "2023-04-01"}, headers={"Ocp-Apim-Subscription-Key": "clu-key-0123"},
    ).respond_with_json({"deploymentName": "production", "modelId": "retail-2026-12-01",
                         "lastTrainedDateTime": "2026-12-01T09:00:00Z", "lastDeployedDateTime": "2026-12-01T10:00:00Z"})
    s = cache_settings(INTENT_ENDPOINT=httpserver.url_for("/"), INTENT_API_KEY="clu-key-0123")
    assert DeploymentVersionProbe(s, ttl_seconds=0).current() == "retail-2026-12-01@2026-12-01T10:00:00Z"


@pytest.mark.parametrize("respond", [
    lambda r: r.respond_with_data("nope", status=404),           # neither /model nor a CLU deployment
    lambda r: r.respond_with_json({"deployments": []}),          # deployment missing
    lambda r: r.respond_with_data("not json", status=200),
])
def test_an_unknown_version_is_none(httpserver: HTTPServer, respond):
    respond(httpserver.expect_request("/model"))
    assert DeploymentVersionProbe(probe_settings(httpserver), ttl_seconds=0).current() is None


def test_with_ttl_zero_the_version_is_asked_for_every_message(httpserver: HTTPServer):
    httpserver.expect_request("/model").respond_with_json({}, headers={"x-model-version": "m-1"})
    probe = DeploymentVersionProbe(probe_settings(httpserver), ttl_seconds=0)
    for _ in range(3):
        probe.current()
    assert probe.lookups == 3


# ------------------------------------------------------------------------------------------------ settings, root
@pytest.mark.parametrize("values, fragment", [
    ({"INTENT_CACHE_URL": "http://127.0.0.1:6379"}, "redis:// or rediss://"),
    ({"INTENT_CACHE_URL": "redis://cache.example.net:6380"}, "rediss:// (TLS)"),
    ({"INTENT_CACHE_URL": "rediss://cache.example.net:10000"}, "INTENT_CACHE_PRINCIPAL_ID"),
    ({"INTENT_CACHE_HASH_KEY": "short"}, "INTENT_CACHE_HASH_KEY"),
    ({"INTENT_CACHE_TIMEOUT_MS": "5000"}, "INTENT_CACHE_TIMEOUT_MS"),
])
def test_bad_cache_settings_are_refused_at_start_up(values, fragment):
    with pytest.raises(SettingsError, match=fragment.replace("(", r"\(").replace(")", r"\)")):
        cache_settings(**values)


def test_azure_settings_with_entra_id_are_accepted():
    s = cache_settings(INTENT_CACHE_URL="rediss://cache.example.net:10000",
                       INTENT_CACHE_PRINCIPAL_ID="00000000-0000-0000-0000-000000000001")
    assert s.intent_cache_principal_id.endswith("1")


def test_the_composition_root_wraps_the_client_only_when_the_cache_is_configured():
    plain = load_settings(sample_values()).settings
    assert isinstance(intent_port(plain, _null()), IntentClient)
    wrapped = intent_port(cache_settings(), _null())
    assert isinstance(wrapped, ic.CachedIntent) and isinstance(wrapped.inner, IntentClient)


def _null():
    from shared.telemetry import DISABLED
    return DISABLED


def test_entra_id_tokens_are_reused_until_five_minutes_before_they_expire():
    class Token:
        def __init__(self, n):
            self.token, self.expires_on = f"t{n}", 3600

    class Credential:
        calls = 0

        def get_token(self, scope):
            assert scope == "https://redis.azure.com/.default"
            Credential.calls += 1
            return Token(Credential.calls)

    now = [0.0]
    provider = EntraIdCredentialProvider("principal-oid", Credential(), clock=lambda: now[0])
    assert provider.get_credentials() == ("principal-oid", "t1")
    now[0] = 3299
    assert provider.get_credentials() == ("principal-oid", "t1")
    now[0] = 3300
    assert provider.get_credentials() == ("principal-oid", "t2")


def test_a_failing_credential_is_a_miss_not_an_error(silent_redis):
    class Failing(EntraIdCredentialProvider):
        def get_credentials(self):
            raise RuntimeError("no managed identity endpoint")

    adapter = RedisPredictionCache(f"redis://127.0.0.1:{silent_redis.port}/0", timeout_seconds=0.05,
                                   credential_provider=Failing("oid", None))
    inner = VersionedIntent()
    cached = ic.CachedIntent(inner, adapter, FixedModelVersions("model-v1"), cache_settings())
    assert ask(cached).top_intent == "Greeting" and len(inner.calls) == 1
    adapter.close()


def test_the_entra_id_token_is_renewed_in_the_background():
    class Token:
        def __init__(self, n, expires_on):
            self.token, self.expires_on = f"t{n}", expires_on

    got = threading.Event()

    class Credential:
        calls = 0

        def get_token(self, scope):
            Credential.calls += 1
            got.set()
            return Token(Credential.calls, 3600)

    stop = threading.Event()
    provider = EntraIdCredentialProvider("oid", Credential(), clock=lambda: 0.0)
    thread = provider.keep_fresh(stop)
    assert got.wait(5)
    stop.set()
    thread.join(5)
    assert not thread.is_alive()
    assert provider.get_credentials() == ("oid", "t1") and Credential.calls == 1   # no call on the connection path


def test_the_ops_queries_know_every_outcome_and_no_other():
    import re
    from pathlib import Path

    queries = sorted((Path(__file__).resolve().parents[1] / "ops" / "queries").glob("*prediction_cache*.kql"))
    text = "\n".join(q.read_text(encoding="utf-8") for q in queries)
    assert "intent_cache_lookups" in text
    compared = set(re.findall(r'outcome == "(\w+)"', text))
    for group in re.findall(r"outcome in \(([^)]*)\)", text):
        compared |= set(re.findall(r'"(\w+)"', group))
    assert compared <= set(ic.OUTCOMES), compared - set(ic.OUTCOMES)
    assert set(ic.OUTCOMES) - {"miss"} <= compared   # misses are what is left


class TimedCall(Call):
    """A :class:`Call` inside a stage's timing scope (:func:`shared.timing.scope`), as the intent stage runs it."""

    def run(self):
        from shared import timing

        with timing.scope() as totals:
            super().run()
        self.totals = dict(totals)


def test_a_coalesced_look_up_s_wait_is_timed_as_model_time_not_as_an_intent_call(gated):
    """The hop of a message answered by another message's call records the wait under ``intent_coalesced`` (the
    benchmark counts it as model time, not gateway overhead) and no ``intent`` call of its own."""
    from shared import timing

    cached, inner, _cache, outcomes = gated
    leader = TimedCall(cached, "Hello there", "u1")
    assert inner.entered.wait(5), "the leader did not reach the model"
    follower = TimedCall(cached, "Hello there", "u2")
    assert cached.flights.wait_for_followers(1, 5), "the follower did not join the leader's call"
    inner.release.set()
    leader.outcome(), follower.outcome()
    assert sorted(outcomes) == ["coalesced", "miss"]
    assert timing.INTENT_COALESCED in follower.totals and follower.totals[timing.INTENT_COALESCED] >= 0
    assert timing.INTENT_COALESCED not in leader.totals


def test_the_benchmark_counts_coalesced_look_ups_apart():
    from bench.harness import cache_figures

    def reply(deps):
        return [{"data": json.dumps({"timings": {"hops": [{"stage": "chat-inbound", "dependency_ms": deps}]}})}]

    figures = cache_figures({"a": reply({"redis": 1, "intent": 5}), "b": reply({"redis": 1}),
                             "c": reply({"redis": 1, "intent_coalesced": 40}), "d": reply({"intent": 5})})
    assert (figures["messages"], figures["lookups"], figures["hits"], figures["coalesced"],
            figures["intent_calls"]) == (4, 3, 2, 1, 2)
