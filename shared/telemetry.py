"""Telemetry: what the gateway reports to Application Insights, the PII rules, and the no-op implementation.

The stages talk to :class:`~shared.ports.TelemetryPort`. With ``APPLICATIONINSIGHTS_CONNECTION_STRING`` set,
:func:`from_settings` builds the adapter :class:`shared.clients.appinsights.AppInsightsTelemetry` (the only module
that knows the exporter, opencensus-ext-azure); without it, :class:`NullTelemetry`, which sends nothing, starts no
thread, and never needs an ``if enabled`` in the code that calls it.

What is sent (Application Insights tables; names are the contract of ``ops/`` queries and the workbook):

- ``requests``: one per stage invocation, named after the stage (:data:`STAGES`), all of one chat
  message in one operation: the intake starts a W3C trace, every queue message carries its
  ``traceparent``, each stage continues it as a child of the previous stage.
- ``dependencies``: intent service, Cosmos DB, SendBird and prediction cache (Redis) calls, children of their
  stage's request.
- ``customEvents``: :data:`EVENTS`, with the dimensions of :data:`EVENT_DIMENSIONS` and the
  measurements of :data:`EVENT_MEASUREMENTS` (per-message latencies in ms, so KQL can compute percentiles).
- ``customMetrics``: :data:`METRICS`, pre-aggregated per export interval (``valueSum``, ``valueCount``,
  ``valueMin``, ``valueMax``), dimensions from :data:`METRIC_DIMENSIONS`.

Rules: nothing is created or sent without ``APPLICATIONINSIGHTS_CONNECTION_STRING``; exporting runs on
background threads with bounded queues, never blocks or fails a stage, and its failures are counted
(``export_failures``, metric ``telemetry_export_failures``); ``TELEMETRY_SAMPLING_RATE``
samples traces and events per operation (metrics are not sampled).

PII (``TELEMETRY_PII_MODE``): one redaction path, :class:`Redactor`, for every item that leaves the process
(event properties, log and exception messages with their tracebacks, request and dependency failure
messages). In ``mask`` and ``strict`` mode, user and channel ids become a keyed hash (HMAC-SHA256 with
``TELEMETRY_PII_HASH_KEY``, 16 hex digits: stable for joins, not reversible by hashing guessed ids such as
``customer_1042``); message texts are masked (``mask``: digit runs and e-mails) or dropped (``strict``);
and the raw ids and text of the message being processed (registered by :meth:`Telemetry.sensitive`) are
replaced wherever else they appear, e.g. inside an error reason that quotes them.
Spec: Application Insights data model / ingestion ``/v2.1/track``; W3C Trace Context.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import secrets
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Iterator, Literal, TypeVar

if TYPE_CHECKING:  # pragma: no cover - types only
    from shared.ports import TelemetryPort
    from shared.settings import Settings

log = logging.getLogger(__name__)

PiiMode = Literal["off", "mask", "strict"]


#: Request names (one per stage function): the ``stage`` of every stage's telemetry.
INTAKE, INTENT_STAGE, BRANCH_HANDLER, REPLY_SENDER, REVIEW_STAGE = STAGES = (
    "intake", "intent_stage", "branch_handler", "reply_sender", "review_capture")
#: customEvents names.
EVENTS = ("MessageReceived", "WebhookRejected", "WebhookIgnored", "DuplicateDropped", "MessageSilenced",
          "IntentClassified", "ReplySent", "ReplyDeduplicated", "SendBirdThrottled", "MessagePoisoned")
#: customDimensions that events may carry.
EVENT_DIMENSIONS = ("correlation_id", "message_id", "channel_url", "user_id", "message_type", "language", "text",
                    "intent", "route", "reply_key", "reply_text", "stage", "queue", "reason", "error_type",
                    "status_code", "entities", "model_version")
#: customMeasurements that events may carry (ms unless named otherwise).
EVENT_MEASUREMENTS = ("confidence", "webhook_delay_ms", "text_length", "intent_latency_ms", "e2e_latency_ms",
                      "gateway_latency_ms", "intent_queue_wait_ms", "handler_queue_wait_ms", "reply_queue_wait_ms",
                      "intent_stage_ms", "handler_stage_ms", "sendbird_ms", "reschedules", "dequeue_count",
                      "retry_after_seconds")
#: customMetrics names (pre-aggregated).
METRICS = ("messages_received", "e2e_latency_ms", "stage_latency_ms", "queue_wait_ms", "intent_confidence",
           "fallback_count", "handoff_count", "retry_count", "poison_count", "sendbird_429_count",
           "intent_service_errors", "intent_breaker_open_count", "telemetry_export_failures",
           "intent_cache_lookups")
#: customDimensions of metrics.
METRIC_DIMENSIONS = ("stage", "route", "queue", "outcome")
#: customDimensions of stage requests.
REQUEST_DIMENSIONS = ("stage", "correlation_id", "message_id", "queue", "dequeue_count", "queue_wait_ms", "route")
#: ``customDimensions.system`` of dependencies.
DEPENDENCY_SYSTEMS = ("intent", "cosmos", "sendbird", "redis")

_DIGITS = re.compile(r"\d[\d\- ]{2,}\d")
_EMAIL = re.compile(r"[^\s@]+@[^\s@]+\.[^\s@]+")


#: Raw values (ids, text) of the message the current context processes; see :meth:`Telemetry.sensitive`.
_sensitive: ContextVar[tuple[tuple[str, str], ...]] = ContextVar("telemetry_sensitive", default=())
#: Placeholder of a message text that was removed from a free-text field.
TEXT_PLACEHOLDER = "<text>"


def redact_text(text: str, mode: PiiMode) -> str | None:
    """``off``: as is; ``mask``: digit runs (order/phone numbers) and e-mails masked; ``strict``: dropped."""
    if mode == "off":
        return text
    if mode == "strict":
        return None
    return mask_patterns(text)


def mask_patterns(text: str) -> str:
    """Digit runs of 4+ characters (order, phone numbers) as ``#``, e-mail addresses as ``<email>``."""
    return _EMAIL.sub("<email>", _DIGITS.sub(lambda m: "#" * len(m.group()), text))


def hash_id(value: str, key: str) -> str:
    """The keyed hash of a user or channel id: HMAC-SHA256(key, UTF-8 value), first 16 hex digits."""
    return hmac.new(key.encode("utf-8"), value.encode("utf-8"), hashlib.sha256).hexdigest()[:16]


class Redactor:
    """Applies the PII mode to everything that leaves the process (see the module docstring)."""

    ID_KEYS = ("user_id", "channel_url")
    TEXT_KEYS = ("text", "reply_text")
    #: Structural properties the code sets from its own vocabulary or generated ids: never scrubbed.
    STRUCTURAL_KEYS = frozenset({"correlation_id", "message_id", "message_type", "language", "intent", "route",
                                 "reply_key", "stage", "queue", "error_type", "status_code", "entities",
                                 "model_version"})

    def __init__(self, mode: PiiMode = "off", key: str = ""):
        self.mode: PiiMode = mode
        self._key = key

    def id(self, value: str) -> str:
        """A user or channel id as stored: as is (``off``), else :func:`hash_id`."""
        return value if self.mode == "off" else hash_id(value, self._key)

    def properties(self, properties: dict[str, Any]) -> dict[str, Any]:
        """Ids hashed, texts masked or dropped, every other string property scrubbed."""
        if self.mode == "off":
            return dict(properties)
        out: dict[str, Any] = {}
        for k, v in properties.items():
            if not isinstance(v, str) or k in self.STRUCTURAL_KEYS:
                out[k] = v
            elif k in self.ID_KEYS:
                out[k] = self.id(v)
            elif k in self.TEXT_KEYS:
                out[k] = redact_text(v, self.mode)
            else:
                out[k] = self.scrub(v)
        return out

    def scrub(self, value: str) -> str:
        """Free text (a log line, an error reason): the current message's raw ids and text replaced, then
        digit runs and e-mails masked. ``off``: unchanged."""
        if self.mode == "off" or not value:
            return value
        for kind, raw in sorted(_sensitive.get(), key=lambda kv: -len(kv[1])):
            if raw and raw in value:
                value = value.replace(raw, TEXT_PLACEHOLDER if kind == "text" else f"<{kind}:{self.id(raw)}>")
        return mask_patterns(value)


class _RedactingFilter(logging.Filter):
    """On the Application Insights log handler: renders each record's message and traceback in the emitting
    thread (where :data:`_sensitive` is set), scrubbed, into an attribute of the record; the handler's
    :class:`_RedactedFormatter` sends that instead. Other handlers (the console) see the record unchanged."""

    def __init__(self, redactor: Redactor):
        super().__init__()
        self._redactor = redactor
        self._plain = logging.Formatter()
        self.attribute = f"redacted_message_{id(self):x}"  # one per handler: records are shared by handlers

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        if record.exc_info:
            text += "\n" + self._plain.formatException(record.exc_info)
        setattr(record, self.attribute, self._redactor.scrub(text))
        dims = getattr(record, "custom_dimensions", None)
        if isinstance(dims, dict):
            record.custom_dimensions = self._redactor.properties(dims)
        return True


class _RedactedFormatter(logging.Formatter):
    """Formats a record as its :class:`_RedactingFilter` rendered it."""

    def __init__(self, attribute: str):
        super().__init__()
        self._attribute = attribute

    def format(self, record: logging.LogRecord) -> str:
        redacted = getattr(record, self._attribute, None)
        return redacted if redacted is not None else super().format(record)


def new_traceparent() -> str:
    """A new W3C ``traceparent`` (version 00, random trace and span ids, sampled)."""
    return f"00-{secrets.token_hex(16)}-{secrets.token_hex(8)}-01"


def parse_traceparent(value: str | None) -> tuple[str, str] | None:
    """``(trace_id, span_id)`` of a W3C ``traceparent``, or None when it is missing or malformed."""
    m = re.fullmatch(r"00-([0-9a-f]{32})-([0-9a-f]{16})-[0-9a-f]{2}", value or "")
    if not m or set(m.group(1)) == {"0"} or set(m.group(2)) == {"0"}:
        return None
    return m.group(1), m.group(2)


def is_sampled(trace_id: str, rate: float) -> bool:
    """The sampling decision of a whole operation: the lower 64 bits of the trace id against ``rate``
    (the rule of opencensus' ProbabilitySampler, so requests, dependencies and events agree)."""
    return rate >= 1.0 or int(trace_id[16:], 16) <= rate * 0xFFFFFFFFFFFFFFFF


@dataclass
class Span:
    """The current stage's span. ``traceparent`` is what the next queue message must carry."""

    traceparent: str | None
    _span: Any = None

    def set_status_code(self, status: int) -> None:
        """HTTP status of an HTTP-triggered stage: the request's ``resultCode``; success = 2xx/3xx."""
        if self._span is not None:
            self._span.add_attribute("http.status_code", status)

    def set(self, **properties: Any) -> None:
        if self._span is not None:
            for k, v in properties.items():
                if v is not None:
                    self._span.add_attribute(k, v if isinstance(v, (str, int, float, bool)) else str(v))



class _StageIds:
    """(trace_id, span_id) of the stage running in this context, whether sampled or not."""

    def __init__(self) -> None:
        self._var: ContextVar[tuple[str, str] | None] = ContextVar("telemetry_stage_ids", default=None)

    @contextmanager
    def __call__(self, trace_id: str, span_id: str) -> Iterator[None]:
        token = self._var.set((trace_id, span_id))
        try:
            yield
        finally:
            self._var.reset(token)

    def current(self) -> tuple[str, str] | None:
        return self._var.get()


stage_ids = _StageIds()


@contextmanager
def sensitive(*, user_id: str | None = None, channel_url: str | None = None,
              text: str | None = None) -> Iterator[None]:
    """Register the raw ids and text of the message processed in this context, so that every telemetry item
    emitted meanwhile (logs, exceptions, failure messages, event properties) has them replaced."""
    values = tuple((k, v) for k, v in (("user_id", user_id), ("channel_url", channel_url), ("text", text)) if v)
    token = _sensitive.set(_sensitive.get() + values)
    try:
        yield
    finally:
        _sensitive.reset(token)


class _TraceContextFilter(logging.Filter):
    """Stamps log records with the current operation id, so traces join their request in the portal."""

    def __init__(self, current_ids: Callable[[], tuple[str, str] | None]):
        super().__init__()
        self._current_ids = current_ids

    def filter(self, record: logging.LogRecord) -> bool:
        ids = self._current_ids()
        record.traceId, record.spanId = ids if ids else ("0" * 32, "0" * 16)
        return True


H = TypeVar("H", bound=logging.Handler)


def redacting_log_handler(handler: H, redactor: Redactor, *,
                          current_ids: Callable[[], tuple[str, str] | None]) -> H:
    """``handler`` (an exporter's log handler) set up to send WARNING and above, stamped with the operation
    ids and redacted by ``redactor`` (message and traceback rendered in the emitting thread)."""
    handler.setLevel(logging.WARNING)
    handler.addFilter(_TraceContextFilter(current_ids))
    redacting = _RedactingFilter(redactor)
    handler.addFilter(redacting)
    handler.setFormatter(_RedactedFormatter(redacting.attribute))
    return handler


class NullTelemetry:
    """The :class:`~shared.ports.TelemetryPort` when telemetry is off: every call does nothing (spans still carry
    the incoming ``traceparent`` on, so a chain keeps its trace ids). Also the default of plain stage code and
    the telemetry of unit tests."""

    enabled = False
    export_failures = 0

    def __init__(self, pii_mode: PiiMode = "off", pii_hash_key: str = ""):
        self._redactor = Redactor(pii_mode, pii_hash_key)

    @property
    def redactor(self) -> Redactor:
        return self._redactor

    @contextmanager
    def stage(self, name: str, traceparent: str | None, **properties: Any) -> Iterator[Span]:
        yield Span(traceparent)

    @contextmanager
    def dependency(self, system: str, name: str, target: str, dependency_type: str = "HTTP") -> Iterator[Span]:
        yield Span(None)

    def event(self, name: str, properties: dict[str, Any] | None = None,
              measurements: dict[str, float] | None = None, traceparent: str | None = None) -> None:
        return None

    def metric(self, name: str, value: float, **dimensions: str | None) -> None:
        return None

    sensitive = staticmethod(sensitive)

    def redact_id(self, value: str) -> str:
        return self._redactor.id(value)

    def flush(self, timeout: float = 5.0) -> None:
        return None

    def close(self) -> None:
        return None


#: Telemetry off: the default for plain stage code and unit tests.
DISABLED = NullTelemetry()


def create(connection_string: str = "", *, sampling_rate: float = 1.0, pii_mode: PiiMode = "off",
           pii_hash_key: str = "", export_interval_seconds: float = 15.0,
           role_name: str = "chatbot-gateway") -> "TelemetryPort":
    """Application Insights telemetry for ``connection_string``, or :class:`NullTelemetry` when it is empty."""
    if not connection_string:
        return NullTelemetry(pii_mode, pii_hash_key)
    from shared.clients.appinsights import AppInsightsTelemetry
    return AppInsightsTelemetry(connection_string, sampling_rate=sampling_rate, pii_mode=pii_mode,
                                pii_hash_key=pii_hash_key, export_interval_seconds=export_interval_seconds,
                                role_name=role_name)


def from_settings(settings: "Settings") -> "TelemetryPort":
    """The worker's telemetry, configured from :class:`~shared.settings.Settings`."""
    return create(settings.applicationinsights_connection_string, sampling_rate=settings.telemetry_sampling_rate,
                  pii_mode=settings.telemetry_pii_mode, pii_hash_key=settings.telemetry_pii_hash_key,
                  export_interval_seconds=settings.telemetry_export_interval_seconds)
