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

Telemetry: metric ``intent_cache_lookups`` with dimension ``outcome`` = ``hit`` / ``miss`` / ``error`` /
``bypass`` (hit rate = hit / (hit + miss + error)), dependency ``redis`` (GET/SET) under the stage.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import re
import unicodedata

from pydantic import ValidationError

from shared.errors import TransientError
from shared.models import Entity, IntentPrediction, IntentScore
from shared.ports import IntentPort, ModelVersions, PredictionCache, TelemetryPort
from shared.settings import Settings
from shared.telemetry import DISABLED

log = logging.getLogger(__name__)

#: Prefix of every key (bump the version when the key or value layout changes).
KEY_PREFIX = "intent:v1:"
#: The metric of every look-up, with its ``outcome``.
LOOKUP_METRIC = "intent_cache_lookups"
HIT, MISS, ERROR, BYPASS = OUTCOMES = ("hit", "miss", "error", "bypass")

_SPACES = re.compile(r"\s+")


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


class CachedIntent:
    """:class:`~shared.ports.IntentPort` answering from ``cache`` when it can, else from ``inner``.

    ``versions``: the deployment's current model version; ``settings``: ``INTENT_CACHE_HASH_KEY``,
    ``INTENT_CACHE_TTL_SECONDS`` and the intent service's endpoint, project and deployment.
    """

    def __init__(self, inner: IntentPort, cache: PredictionCache, versions: ModelVersions, settings: Settings,
                 telemetry: TelemetryPort = DISABLED):
        self.inner, self.cache, self.versions = inner, cache, versions
        self._telemetry = telemetry
        self._secret = settings.intent_cache_hash_key
        self._ttl = settings.intent_cache_ttl_seconds
        self._scope = {"endpoint": settings.intent_endpoint.host or "", "project": settings.intent_project_name,
                       "deployment": settings.intent_deployment_name}

    def analyze(self, text: str, language: str, participant_id: str, item_id: str,
                request_id: str | None = None) -> IntentPrediction:
        """:meth:`shared.ports.IntentPort.analyze`, from the cache on a hit (see module docstring)."""
        version = self.versions.current()
        if version is None:
            self._count(BYPASS)
            return self.inner.analyze(text, language, participant_id, item_id, request_id)
        cache_healthy = True
        try:
            raw = self.cache.get(self._key(version, language, text))
        except TransientError as exc:
            log.info("prediction cache unavailable, asking the intent service: %s", exc)
            raw, cache_healthy = None, False
        hit = decode(raw, text, version) if raw is not None else None
        if hit is not None:
            self._count(HIT)
            return hit
        self._count(MISS if cache_healthy else ERROR)
        prediction = self.inner.analyze(text, language, participant_id, item_id, request_id)
        self.versions.observe(prediction.model_version)
        if cache_healthy and cacheable(prediction):
            self._store(prediction, prediction.model_version or version, language, text)
        return prediction

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
        self._telemetry.metric("intent_cache_lookups", 1, outcome=outcome)
