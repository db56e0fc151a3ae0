"""Cached intent predictions: an :class:`~shared.ports.IntentPort` that answers repeated utterances from a cache
shared by every instance (Redis) before calling the intent service. On when ``INTENT_CACHE_URL`` is set; the
composition root (:mod:`shared.bootstrap`) wraps the intent client in :class:`CachedIntent`.

**Key.** ``intent:v1:`` + HMAC-SHA256(``INTENT_CACHE_HASH_KEY``, the lines ``endpoint host``, ``project``,
``deployment``, ``model version``, ``language``, ``normalised text``), hex. Keyed, so that nobody who can read Redis
can confirm a guessed text by hashing it; the text itself is never in a key or a value.
The normalisation (:func:`normalise`) is exactly what the project's intent service applies before its model sees
the text (``intent_service.text.normalize_for_model``: NFKC, case folded, whitespace collapsed), so two texts
with one key get the same intents from the same model.

**Value.** JSON: the model version of the key, the version the answer named (None from Azure CLU, which names none;
returned as is on a hit), the top intent, the intents with their scores and the entities, never the query
(restored from the request's text on a hit). Only predictions whose entities are all *list* entities
(a canonical ``key``, e.g. a product category) are stored: a prediction with a free-text entity (order number,
phone number, date) belongs to that text and may be personal data, so it is neither stored nor answered
from the cache. On a hit, list entities keep the text and offsets of the first writer's utterance (same
normalised text; handlers use the entities' key and text, never offsets into the message).

**A model swap is never answered from the cache.** The model version is part of the key, and the version used
is the one the intent service says it answers the deployment with *now* (:class:`~shared.ports.ModelVersions`:
``GET /model`` of the intent service, reused for ``INTENT_CACHE_VERSION_TTL_SECONDS``, default 1 s), not the
version of an old answer. After a swap the old entries are simply never looked up again (they expire with
``INTENT_CACHE_TTL_SECONDS``). Every answer of the service also updates the known version at once. A hit is
served only when the stored entry names the same version (defence in depth). Bound: a worker may answer from
the old model for at most the version TTL after the service switched; with TTL 0 the version is asked for
every message (a cheap call, no inference) and the bound is zero. Where the version cannot be learnt (a failed
look-up), the cache is bypassed: no version, no caching. Azure CLU names no version in its answers; there the
version is its deployment's ``modelId@lastDeployedDateTime`` (see the adapter).

**Never in the way.** A cache failure (down, slow, circuit open) is a miss: the prediction comes from the
service, and each Redis call delays the message by at most the cache timeout (``INTENT_CACHE_TIMEOUT_MS``, 50 ms):
a read, and after a miss a write, which is skipped when the read failed; nothing at all once the adapter's
circuit is open. The version look-up (an HTTP call to the intent service) is bounded by its own 0.5 s timeout and
made at most once per ``INTENT_CACHE_VERSION_TTL_SECONDS`` per worker. Errors of the intent service propagate
unchanged (:class:`~shared.ports.IntentPort`).

**Concurrent misses are coalesced (single-flight, in one process).** While the intent service is answering a
key's miss, other look-ups of the same key in the same worker process do not call it: they wait for that call
(the *leader*) and answer with its prediction, with their own text as the query (exactly what a hit would give).
Only a prediction that :func:`cacheable` accepts is shared this way, so a prediction with a free-text (possibly
personal) entity never reaches another message, let alone another user: its followers each make their own call.
Two more rules keep personal texts apart, and keep their followers from waiting twice (for the leader, then for
their own call):

- a text with a digit or an ``@`` (order, phone or card numbers, dates, e-mail addresses: what personal entities
  are made of) is coalesced only with the same participant's look-ups (the flight is keyed by cache key and
  participant id), never across users. Such a text's followers are then the same user's repeated sends, and
  a personal text's answer time tells nobody whether someone else asked the same thing at the same time;
- a key found not cacheable is remembered in the process (the key only, no text; at most
  :data:`UNCACHEABLE_MEMORY` keys for ``INTENT_CACHE_TTL_SECONDS``): later look-ups of it are not coalesced and
  call at once. The same model version and normalised text give the same prediction, so the memo is exact (the
  version is part of the key). Only the first concurrent burst of a personal text without digits (a learned
  name entity, say) waits for a leader it cannot use.

A follower waits at most the intent client's own timeout (``INTENT_TIMEOUT_SECONDS``); if the leader fails, takes
longer or answered with something not shareable, each follower **asks the intent service itself** (not the
leader's error): a leader's transient failure (one timeout, one connection reset) then does not fail every
message waiting for it, and a customer is answered whenever the service answers anyone. When the service is
really down, the followers' own calls fail like any call (their own errors propagate; the intent client's breaker
bounds the burst). Coalescing does not need Redis: it works too while the cache is down or its circuit is open.
A version bypass (unknown version) is not coalesced. Cross-instance (or cross-process) coalescing is out of
scope: two instances, or two worker processes, missing the same sentence at once still make one call each (a
Redis lock would be needed for that).

Telemetry: metric ``intent_cache_lookups``, one per analysed message, with dimension ``outcome`` = ``hit`` (from
Redis), ``coalesced`` (answered by a concurrent call for the same key; this wins over how Redis answered),
``miss`` (not in Redis), ``error`` (Redis failed: timeout, refused, error), ``breaker_open`` (Redis skipped: the
adapter's circuit is open), each of the last three meaning the intent service was called (also by a follower whose
leader could not share), or ``bypass`` (no version, no cache). Looked up = every outcome but bypass; hit rate =
hit / looked up; intent calls saved = (hit + coalesced) / all outcomes. Dependency ``redis`` (GET/SET) under the
stage; a coalesced message has a ``redis`` GET (unless the circuit is open) and no ``intent`` call. The ops
workbook's prediction cache panel (``ops/queries/24_prediction_cache.kql``) shows these.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import re
import threading
import time
import unicodedata
from collections import OrderedDict
from collections.abc import Callable

from pydantic import ValidationError

from shared import timing
from shared.errors import RateLimited, TransientError
from shared.models import Entity, IntentPrediction, IntentScore
from shared.ports import IntentPort, ModelVersions, PredictionCache, TelemetryPort
from shared.settings import Settings
from shared.telemetry import DISABLED

log = logging.getLogger(__name__)

#: Prefix of every key (bump the version when the key or value layout changes).
KEY_PREFIX = "intent:v1:"
#: The metric of every look-up, with its ``outcome``.
LOOKUP_METRIC = "intent_cache_lookups"
HIT, MISS, ERROR, BREAKER_OPEN, BYPASS, COALESCED = OUTCOMES = (
    "hit", "miss", "error", "breaker_open", "bypass", "coalesced")
#: How many keys found not cacheable a process remembers (their look-ups are not coalesced).
UNCACHEABLE_MEMORY = 4096

_SPACES = re.compile(r"\s+")
#: What personal entities are made of: texts with these are coalesced per participant only.
_MAYBE_PERSONAL = re.compile(r"[\d@]")


def normalise(text: str) -> str:
    """The intent service's own normalisation: NFKC, case folded, whitespace runs as one space, stripped."""
    return _SPACES.sub(" ", unicodedata.normalize("NFKC", text).casefold()).strip()


def cache_key(secret: str, *, endpoint: str, project: str, deployment: str, model_version: str, language: str,
              text: str) -> str:
    """The Redis key of ``text``'s prediction (see module docstring): :data:`KEY_PREFIX` + 64 hex digits."""
    fields = (endpoint, project, deployment, model_version, language, normalise(text))
    digest = hmac.new(secret.encode("utf-8"), "\n".join(fields).encode("utf-8"), hashlib.sha256).hexdigest()
    return KEY_PREFIX + digest


def cacheable(prediction: IntentPrediction) -> bool:
    """Whether ``prediction`` may be stored: its entities are all list entities (see module docstring)."""
    return all(e.key is not None for e in prediction.entities)


def encode(prediction: IntentPrediction, key_version: str) -> str:
    """The stored value of ``prediction``, found under a key with ``key_version``: JSON without the query."""
    return json.dumps({"k": key_version, "v": prediction.model_version, "top": prediction.top_intent,
                       "intents": [i.model_dump() for i in prediction.intents],
                       "entities": [e.model_dump() for e in prediction.entities]},
                      ensure_ascii=False, separators=(",", ":"))


def decode(raw: str, query: str, key_version: str) -> IntentPrediction | None:
    """The prediction stored as ``raw`` with ``query`` as its query; None when ``raw`` is not one, or was stored
    for another model version than ``key_version`` (ignored: a miss)."""
    try:
        data = json.loads(raw)
        if data["k"] != key_version:
            return None
        return IntentPrediction(query=query, top_intent=data["top"], model_version=data["v"],
                                intents=[IntentScore.model_validate(i) for i in data["intents"]],
                                entities=[Entity.model_validate(e) for e in data["entities"]])
    except (ValueError, KeyError, TypeError, ValidationError):
        return None


class _Flight:
    """One key's call in progress: its leader sets :attr:`result` (a shareable prediction, or None) and then
    :attr:`done`."""

    __slots__ = ("done", "result", "followers")

    def __init__(self) -> None:
        self.done = threading.Event()
        self.result: IntentPrediction | None = None
        self.followers = 0


class SingleFlight:
    """The calls in progress in this process, one per key (thread-safe). Holds only keys being answered now:
    at most one per thread of the pool."""

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._flights: dict[str, _Flight] = {}

    def join(self, key: str) -> tuple[_Flight, bool]:
        """The flight of ``key`` and whether the caller leads it (no flight was in progress: the caller must
        :meth:`land` it, also when its call fails)."""
        with self._changed:
            flight = self._flights.get(key)
            if flight is None:
                flight = self._flights[key] = _Flight()
                return flight, True
            flight.followers += 1
            self._changed.notify_all()
            return flight, False

    def land(self, key: str, flight: _Flight, result: IntentPrediction | None) -> None:
        """End ``flight``: later look-ups of ``key`` start a new one; its followers get ``result`` (None: they call
        themselves)."""
        with self._changed:
            if self._flights.get(key) is flight:
                del self._flights[key]
            flight.result = result
            flight.done.set()
            self._changed.notify_all()

    def wait_for_followers(self, count: int, timeout: float) -> bool:
        """Whether, within ``timeout`` seconds, the flights in progress have ``count`` followers in all (tests)."""
        with self._changed:
            return self._changed.wait_for(lambda: sum(f.followers for f in self._flights.values()) >= count,
                                          timeout)

    def __len__(self) -> int:
        with self._changed:
            return len(self._flights)


class CachedIntent:
    """:class:`~shared.ports.IntentPort` answering from ``cache`` when it can, else from ``inner``, with concurrent
    misses of one key coalesced into one call of ``inner`` (see module docstring).

    ``versions``: the deployment's current model version; ``settings``: ``INTENT_CACHE_HASH_KEY``,
    ``INTENT_CACHE_TTL_SECONDS``, ``INTENT_TIMEOUT_SECONDS`` (a follower's longest wait, unless ``wait_seconds``)
    and the intent service's endpoint, project and deployment; ``clock``: monotonic seconds (the memo of keys
    found not cacheable).
    """

    def __init__(self, inner: IntentPort, cache: PredictionCache, versions: ModelVersions, settings: Settings,
                 telemetry: TelemetryPort = DISABLED, *, wait_seconds: float | None = None,
                 clock: Callable[[], float] = time.monotonic):
        self.inner, self.cache, self.versions = inner, cache, versions
        self._telemetry = telemetry
        self._secret = settings.intent_cache_hash_key
        self._ttl = settings.intent_cache_ttl_seconds
        self._scope = {"endpoint": settings.intent_endpoint.host or "", "project": settings.intent_project_name,
                       "deployment": settings.intent_deployment_name}
        self.wait_seconds = settings.intent_timeout_seconds if wait_seconds is None else wait_seconds
        self.flights = SingleFlight()
        self._clock = clock
        self._uncacheable: OrderedDict[str, float] = OrderedDict()   # key -> until (monotonic)
        self._memo_lock = threading.Lock()

    def analyze(self, text: str, language: str, participant_id: str, item_id: str,
                request_id: str | None = None) -> IntentPrediction:
        """:meth:`shared.ports.IntentPort.analyze`, from the cache on a hit, from a concurrent call for the same
        key when one is in progress in this process (see module docstring)."""
        version = self.versions.current()
        if version is None:
            self._count(BYPASS)
            return self.inner.analyze(text, language, participant_id, item_id, request_id)
        key = self._key(version, language, text)
        cache_healthy, missed = True, MISS
        try:
            raw = self.cache.get(key)
        except TransientError as exc:
            log.info("prediction cache unavailable, asking the intent service: %s", exc)
            raw, cache_healthy = None, False
            missed = BREAKER_OPEN if isinstance(exc, RateLimited) else ERROR
        hit = decode(raw, text, version) if raw is not None else None
        if hit is not None:
            self._count(HIT)
            return hit
        if self._known_uncacheable(key):
            self._count(missed)
            return self._ask(key, version, text, language, participant_id, item_id, request_id, cache_healthy)
        flight_key = f"{key}\n{participant_id}" if _MAYBE_PERSONAL.search(normalise(text)) else key
        flight, leader = self.flights.join(flight_key)
        if leader:
            self._count(missed)
            shared: IntentPrediction | None = None
            try:
                prediction = self._ask(key, version, text, language, participant_id, item_id, request_id,
                                       cache_healthy)
                shared = prediction if cacheable(prediction) else None
            finally:
                self.flights.land(flight_key, flight, shared)
            return prediction
        with timing.waiting(timing.INTENT_COALESCED):  # model time in the hop, not gateway overhead
            landed = flight.done.wait(self.wait_seconds)
        if landed and flight.result is not None:
            self._count(COALESCED)
            return flight.result.model_copy(update={"query": text}, deep=True)
        log.info("coalesced intent call %s; asking the intent service",
                 "could not be shared" if flight.done.is_set() else f"still running after {self.wait_seconds} s")
        self._count(missed)
        return self._ask(key, version, text, language, participant_id, item_id, request_id, cache_healthy)

    def _ask(self, key: str, version: str, text: str, language: str, participant_id: str, item_id: str,
             request_id: str | None, cache_healthy: bool) -> IntentPrediction:
        """The intent service's prediction, stored when it may be (a key found not cacheable is remembered)."""
        prediction = self.inner.analyze(text, language, participant_id, item_id, request_id)
        self.versions.observe(prediction.model_version)
        if not cacheable(prediction):
            self._remember_uncacheable(key)
        elif cache_healthy:
            self._store(prediction, prediction.model_version or version, language, text)
        return prediction

    def _known_uncacheable(self, key: str) -> bool:
        with self._memo_lock:
            until = self._uncacheable.get(key)
            if until is None:
                return False
            if until <= self._clock():
                del self._uncacheable[key]
                return False
            return True

    def _remember_uncacheable(self, key: str) -> None:
        with self._memo_lock:
            self._uncacheable[key] = self._clock() + self._ttl
            self._uncacheable.move_to_end(key)
            while len(self._uncacheable) > UNCACHEABLE_MEMORY:
                self._uncacheable.popitem(last=False)

    def _key(self, version: str, language: str, text: str) -> str:
        return cache_key(self._secret, model_version=version, language=language, text=text, **self._scope)

    def _store(self, prediction: IntentPrediction, version: str, language: str, text: str) -> None:
        """Stored under the version that answered (after a swap: the new one; Azure CLU names none: the looked-up
        one). Failures are ignored."""
        try:
            self.cache.set(self._key(version, language, text), encode(prediction, version), self._ttl)
        except TransientError as exc:
            log.info("prediction cache write failed: %s", exc)

    def _count(self, outcome: str) -> None:
        self._telemetry.metric("intent_cache_lookups", 1, outcome=outcome)  # a literal: tests/test_ops_queries.py
