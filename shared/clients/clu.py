"""Intent service client (:class:`~shared.ports.IntentPort`): Azure AI Language CLU ``analyze-conversations``.

Spec: Microsoft docs, "Query your deployed CLU model", REST api-version
2023-04-01 (``../shared/reference/clu.md``). The same client calls Azure CLU or
the project's own ``intent_service`` by configuration (``INTENT_ENDPOINT``,
``INTENT_API_KEY`` sent as ``Ocp-Apim-Subscription-Key``).

Time budget: connect timeout 1 s, read timeout ``INTENT_TIMEOUT_SECONDS``;
``INTENT_RETRIES`` in-process retries with back-off (0.1 s, 0.2 s, ...) on
connection errors, read timeouts and 502/503/504 (urllib3 ``Retry``). Then:

- exceptions and HTTP answers are classified by the tables of :mod:`shared.clients.errors`: timeouts,
  connection errors, 429 and 5xx -> :class:`~shared.errors.TransientError` (the queue trigger retries the message
  later; 503 while the model loads is one of these); other 4xx (bad key, bad request), 1xx and 3xx ->
  :class:`~shared.errors.PermanentError` (redirects are never followed, so ``Ocp-Apim-Subscription-Key`` never
  reaches another host);
- a 2xx body that is not a CLU conversation result -> :class:`~shared.errors.TransientError`.

Circuit breaker (the ``circuitbreaker`` package, one per worker): after
``INTENT_BREAKER_FAILURES`` transient failures in a row the circuit opens and
calls fail at once with :class:`~shared.errors.RateLimited` (retry after the
remaining open time; the queue stage re-queues the message with that delay) for
``INTENT_BREAKER_RESET_SECONDS``; then calls go through again and the first
result decides. So a dead intent service costs the queue stages milliseconds
per attempt, not the full timeout-and-retries budget. Permanent errors (4xx)
do not count. Calls are not serialized (pybreaker holds a lock around each
call, which limited a worker to one intent call at a time).
"""

from __future__ import annotations

from typing import Any

import requests
from circuitbreaker import CircuitBreaker, CircuitBreakerError
from pydantic import ValidationError
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from shared import timing
from shared.clients.errors import http_status_error, requests_error
from shared.errors import RateLimited, TransientError
from shared.models import Entity, IntentPrediction, IntentScore
from shared.ports import TelemetryPort
from shared.settings import Settings
from shared.telemetry import DISABLED

PATH = "/language/:analyze-conversations"
#: Keep-alive connections kept per worker: at least the intent-stage invocations one worker may run at once
#: (host.json batchSize 16 + newBatchThreshold 48 per instance); beyond it urllib3 opens and drops extra ones.
POOL_SIZE = 64


def parse_clu_response(body: Any, model_version: str | None = None) -> IntentPrediction:
    """Map a CLU ``ConversationResult`` JSON body to :class:`IntentPrediction` (``model_version``: the answer's
    ``x-model-version`` header, which the project's intent service sends and Azure CLU does not).

    List entities' canonical value (``extraInformation`` of kind ``ListKey``) becomes ``Entity.key``.
    Raises ``ValueError`` / ``KeyError`` / ``TypeError`` / ``ValidationError`` on another shape.
    """
    prediction = body["result"]["prediction"]
    entities = []
    for e in prediction.get("entities", []):
        key = next((x.get("key") for x in e.get("extraInformation", []) or []
                    if x.get("extraInformationKind") == "ListKey"), None)
        entities.append(Entity(category=e["category"], text=e["text"], offset=e["offset"], length=e["length"],
                               confidence_score=e.get("confidenceScore", 1.0), key=key))
    intents = sorted((IntentScore(category=i["category"], confidence_score=i["confidenceScore"])
                      for i in prediction.get("intents", [])), key=lambda i: -i.confidence_score)
    return IntentPrediction(query=body["result"].get("query", ""), top_intent=prediction.get("topIntent"),
                            intents=intents, entities=entities, model_version=model_version)


class IntentClient:
    """Calls the intent service. One instance (one HTTP connection pool) per worker."""

    def __init__(self, settings: Settings, telemetry: TelemetryPort = DISABLED):
        self._telemetry = telemetry
        self._url = str(settings.intent_endpoint).rstrip("/") + PATH
        self._target = settings.intent_endpoint.host or ""
        self._params = {"api-version": settings.intent_api_version}
        self._project = settings.intent_project_name
        self._deployment = settings.intent_deployment_name
        self._timeout = (min(1.0, settings.intent_timeout_seconds), settings.intent_timeout_seconds)
        self._session = requests.Session()
        self._session.trust_env = False  # no per-request proxy/netrc look-ups (profiled: ~12% of runner CPU)
        retry = Retry(total=settings.intent_retries, connect=settings.intent_retries, read=settings.intent_retries,
                      status=settings.intent_retries, status_forcelist=(502, 503, 504),
                      allowed_methods=frozenset({"POST"}), backoff_factor=0.1,
                      respect_retry_after_header=False, raise_on_status=False)
        self._session.mount("http://", HTTPAdapter(max_retries=retry, pool_maxsize=POOL_SIZE))
        self._session.mount("https://", HTTPAdapter(max_retries=retry, pool_maxsize=POOL_SIZE))
        self._session.headers["Content-Type"] = "application/json"
        if settings.intent_api_key:
            self._session.headers["Ocp-Apim-Subscription-Key"] = settings.intent_api_key
        self.breaker = CircuitBreaker(failure_threshold=settings.intent_breaker_failures,
                                      recovery_timeout=settings.intent_breaker_reset_seconds,
                                      expected_exception=TransientError, name="intent-service")
        self._guarded_post = self.breaker.decorate(self._post)

    def analyze(self, text: str, language: str, participant_id: str, item_id: str,
                request_id: str | None = None) -> IntentPrediction:
        """Classify one utterance.

        ``language`` is a BCP-47 code (``ko``/``en``); ``participant_id`` the
        SendBird user id; ``item_id`` the SendBird message id; ``request_id``
        is sent as ``Apim-Request-Id`` (the correlation id). Offsets of returned
        entities are in text elements (``stringIndexType=TextElement_V8``).
        """
        body = {
            "kind": "Conversation",
            "analysisInput": {"conversationItem": {"id": item_id, "participantId": participant_id,
                                                   "text": text, "language": language}},
            "parameters": {"projectName": self._project, "deploymentName": self._deployment,
                           "stringIndexType": "TextElement_V8"},
        }
        headers = {"Apim-Request-Id": request_id} if request_id else None
        try:
            return self._guarded_post(body, headers)
        except CircuitBreakerError as exc:
            self._telemetry.metric("intent_breaker_open_count", 1)
            wait = max(1.0, self.breaker.open_remaining)
            raise RateLimited(f"intent service circuit open after {self.breaker.failure_count} failures: "
                              f"failing fast for {wait:.0f} s more", wait) from exc

    def _post(self, body: dict, headers: dict | None) -> IntentPrediction:
        try:
            with timing.dependency(self._telemetry, "intent", "POST /language/:analyze-conversations",
                                   self._target) as dep:
                resp = self._session.post(self._url, params=self._params, json=body, headers=headers,
                                          timeout=self._timeout, allow_redirects=False)
                dep.set_status_code(resp.status_code)
        except requests.RequestException as exc:
            raise requests_error(exc, "intent service") from exc
        error = http_status_error(resp.status_code)
        if error is not None:
            raise error(f"intent service answered ({resp.status_code}): {resp.text[:200]}")
        try:
            return parse_clu_response(resp.json(), resp.headers.get("x-model-version") or None)
        except (ValueError, KeyError, TypeError, ValidationError) as exc:
            raise TransientError(f"intent service answered an unexpected body: {exc}") from exc
