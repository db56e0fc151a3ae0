"""Application Insights telemetry: the only module that knows the exporter (opencensus-ext-azure 1.1.x).

Swapping to ``azure-monitor-opentelemetry`` means rewriting this module only; the stages
call the small API below and never see the exporter.

What is sent (Application Insights tables; names are the contract of ``ops/`` queries and the workbook):

- ``requests``: one per stage invocation, named after the stage (:data:`STAGES`), all of one chat
  message in one operation: the intake starts a W3C trace, every queue message carries its
  ``traceparent``, each stage continues it as a child of the previous stage.
- ``dependencies``: intent service, Cosmos DB and SendBird calls, children of their stage's request.
- ``customEvents``: :data:`EVENTS`, with the dimensions of :data:`EVENT_DIMENSIONS` and the
  measurements of :data:`EVENT_MEASUREMENTS` (per-message latencies in ms, so KQL can compute percentiles).
- ``customMetrics``: :data:`METRICS`, pre-aggregated per export interval (``valueSum``, ``valueCount``,
  ``valueMin``, ``valueMax``), dimensions from :data:`METRIC_DIMENSIONS`.

Rules: nothing is created or sent without ``APPLICATIONINSIGHTS_CONNECTION_STRING``; exporting runs on
background threads with bounded queues, never blocks or fails a stage, and its failures are counted
(:attr:`Telemetry.export_failures`, metric ``telemetry_export_failures``); ``TELEMETRY_SAMPLING_RATE``
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
import os
import re
import secrets
import threading
import time
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, Iterator, Literal

log = logging.getLogger(__name__)

PiiMode = Literal["off", "mask", "strict"]

#: (trace_id, span_id) of the stage running in this context, whether sampled or not.
_stage_ids: ContextVar[tuple[str, str] | None] = ContextVar("telemetry_stage_ids", default=None)

#: Request names (one per stage function).
STAGES = ("intake", "intent_stage", "branch_handler", "reply_sender")
#: customEvents names.
EVENTS = ("MessageReceived", "WebhookRejected", "WebhookIgnored", "DuplicateDropped", "MessageSilenced",
          "IntentClassified", "ReplySent", "ReplyDeduplicated", "SendBirdThrottled", "MessagePoisoned")
#: customDimensions that events may carry.
EVENT_DIMENSIONS = ("correlation_id", "message_id", "channel_url", "user_id", "message_type", "language", "text",
                    "intent", "route", "reply_key", "reply_text", "stage", "queue", "reason", "error_type",
                    "status_code", "entities")
#: customMeasurements that events may carry (ms unless named otherwise).
EVENT_MEASUREMENTS = ("confidence", "webhook_delay_ms", "text_length", "intent_latency_ms", "e2e_latency_ms",
                      "gateway_latency_ms", "intent_queue_wait_ms", "handler_queue_wait_ms", "reply_queue_wait_ms",
                      "intent_stage_ms", "handler_stage_ms", "sendbird_ms", "reschedules", "dequeue_count",
                      "retry_after_seconds")
#: customMetrics names (pre-aggregated).
METRICS = ("messages_received", "e2e_latency_ms", "stage_latency_ms", "queue_wait_ms", "intent_confidence",
           "fallback_count", "handoff_count", "retry_count", "poison_count", "sendbird_429_count",
           "intent_service_errors", "intent_breaker_open_count", "telemetry_export_failures")
#: customDimensions of metrics.
METRIC_DIMENSIONS = ("stage", "route", "queue")
#: customDimensions of stage requests.
REQUEST_DIMENSIONS = ("stage", "correlation_id", "message_id", "queue", "dequeue_count", "queue_wait_ms", "route")
#: ``customDimensions.system`` of dependencies.
DEPENDENCY_SYSTEMS = ("intent", "cosmos", "sendbird")

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
                                 "reply_key", "stage", "queue", "error_type", "status_code", "entities"})

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


class _Aggregates:
    """Pre-aggregation of metric values per (name, dimensions) between two exports."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._data: dict[tuple[str, tuple[tuple[str, str], ...]], list[float]] = {}

    def add(self, name: str, value: float, dims: dict[str, str]) -> None:
        key = (name, tuple(sorted(dims.items())))
        with self._lock:
            agg = self._data.get(key)
            if agg is None:
                self._data[key] = [value, 1, value, value]
            else:
                agg[0] += value
                agg[1] += 1
                agg[2] = min(agg[2], value)
                agg[3] = max(agg[3], value)

    def drain(self) -> dict:
        with self._lock:
            data, self._data = self._data, {}
        return data


class Telemetry:
    """Telemetry for one worker process. Disabled (every call a no-op) without a connection string."""

    def __init__(self, connection_string: str = "", *, sampling_rate: float = 1.0, pii_mode: PiiMode = "off",
                 pii_hash_key: str = "", export_interval_seconds: float = 15.0, role_name: str = "chatbot-gateway"):
        self.enabled = bool(connection_string)
        self.pii_mode: PiiMode = pii_mode
        self.redactor = Redactor(pii_mode, pii_hash_key)
        self.export_failures = 0
        self._export_failures_reported = 0
        self._aggregates = _Aggregates()
        self._interval = export_interval_seconds
        self._stop = threading.Event()
        if not self.enabled:
            return
        self._setup(connection_string, sampling_rate, export_interval_seconds, role_name)

    # ------------------------------------------------------------------ exporter (opencensus)
    def _setup(self, connection_string: str, sampling_rate: float, interval: float, role_name: str) -> None:
        # The SDK's own usage reporting ("statsbeat") goes to a second, Microsoft-owned endpoint: off unless
        # the operator turns it on explicitly.
        os.environ.setdefault("APPLICATIONINSIGHTS_STATSBEAT_DISABLED_ALL", "true")
        from opencensus.ext.azure.log_exporter import AzureEventHandler, AzureLogHandler
        from opencensus.ext.azure.metrics_exporter import MetricsExporter
        from opencensus.ext.azure.trace_exporter import AzureExporter
        from opencensus.ext.azure.common.transport import TransportStatusCode
        from opencensus.trace.samplers import ProbabilitySampler

        owner = self

        def counting(cls):
            class Counting(cls):  # counts failed transmissions; the library itself swallows them
                def _transmit(self, envelopes):
                    try:
                        result = super()._transmit(envelopes)
                    except Exception:  # noqa: BLE001 - telemetry must never break the app
                        result = TransportStatusCode.DROP
                    if result is not TransportStatusCode.SUCCESS:
                        owner.export_failures += 1
                    return result
            return Counting

        options = dict(connection_string=connection_string, enable_local_storage=False, export_interval=interval)

        def processor(envelope) -> bool:
            envelope.tags["ai.cloud.role"] = role_name
            if envelope.data.baseType != "MetricData" and sampling_rate < 1.0:
                envelope.sampleRate = sampling_rate * 100  # so itemCount scales sampled counts back up
            base = envelope.data.baseData
            if envelope.data.baseType == "RequestData" and not getattr(base, "name", ""):
                base.name = base.properties.get("stage", "stage")
                envelope.tags["ai.operation.name"] = base.name
            if envelope.data.baseType == "RemoteDependencyData":
                base.target = base.properties.pop("target", "")
            return True

        self._trace_exporter = counting(AzureExporter)(**options)
        self._trace_exporter.add_telemetry_processor(processor)
        self._sampler = ProbabilitySampler(rate=sampling_rate)
        self._events = logging.getLogger(f"chatgw.telemetry.events.{id(self):x}")  # one per instance
        self._events.propagate = False
        self._events.setLevel(logging.INFO)
        events = counting(AzureEventHandler)(logging_sampling_rate=1.0, **options)
        events.add_telemetry_processor(processor)
        self._events.addHandler(events)
        self._event_handler = events
        self._sampling_rate = sampling_rate
        self._log_handler = counting(AzureLogHandler)(**options)
        self._log_handler.add_telemetry_processor(processor)
        self._log_handler.setLevel(logging.WARNING)
        self._log_handler.addFilter(_TraceContextFilter())
        redacting = _RedactingFilter(self.redactor)
        self._log_handler.addFilter(redacting)
        self._log_handler.setFormatter(_RedactedFormatter(redacting.attribute))
        logging.getLogger().addHandler(self._log_handler)
        self._metrics = counting(MetricsExporter)(**options)
        self._metrics.add_telemetry_processor(processor)
        threading.Thread(target=self._export_metrics_loop, name="telemetry-metrics", daemon=True).start()

    def _export_metrics_loop(self) -> None:
        while not self._stop.wait(self._interval):
            self.flush_metrics()

    def flush_metrics(self) -> None:
        """Send the pre-aggregated metrics now (also runs every export interval)."""
        if not self.enabled:
            return
        from opencensus.ext.azure.common.protocol import Data, DataPoint, Envelope, MetricData
        from opencensus.ext.azure.common import utils

        new_failures = self.export_failures - self._export_failures_reported
        if new_failures:
            self._export_failures_reported += new_failures
            self._aggregates.add("telemetry_export_failures", new_failures, {})
        envelopes = []
        now = utils.timestamp_to_iso_str(time.time())
        for (name, dims), (total, count, lo, hi) in self._aggregates.drain().items():
            point = DataPoint(ns="chatgw", name=name, value=total, count=count, min=lo, max=hi, kind=1)
            env = Envelope(iKey=self._metrics.options.instrumentation_key, tags=dict(utils.azure_monitor_context),
                           time=now, name="Microsoft.ApplicationInsights.Metric")
            env.data = Data(baseData=MetricData(metrics=[point], properties=dict(dims)), baseType="MetricData")
            envelopes.append(env)
        if envelopes:
            try:
                self._metrics._transmit(self._metrics.apply_telemetry_processors(envelopes))
            except Exception:  # noqa: BLE001
                self.export_failures += 1

    def flush(self, timeout: float = 5.0) -> None:
        """Export everything queued (tests, shutdown). Never raises."""
        if not self.enabled:
            return
        try:
            for exporter in (self._trace_exporter, self._event_handler, self._log_handler):
                _force_flush(exporter._queue, timeout)
            self.flush_metrics()
        except Exception:  # noqa: BLE001
            self.export_failures += 1

    def close(self) -> None:
        """Flush and stop the exporters; detach the log handler. Never raises."""
        self._stop.set()
        if not self.enabled:
            return
        self.flush()
        logging.getLogger().removeHandler(self._log_handler)
        self._events.removeHandler(self._event_handler)
        for closable in (self._event_handler, self._log_handler):
            try:
                closable.close(timeout=2)
            except Exception:  # noqa: BLE001
                pass
        try:
            self._trace_exporter._worker.stop(timeout=2)
        except Exception:  # noqa: BLE001
            pass
        self.enabled = False

    # ------------------------------------------------------------------ traces
    @contextmanager
    def stage(self, name: str, traceparent: str | None, **properties: Any) -> Iterator[Span]:
        """A request (server span) for one stage invocation, continuing ``traceparent``'s trace.

        Yields a :class:`Span` whose ``traceparent`` the stage puts on its next message. Without a
        (valid) ``traceparent`` a new trace starts. An exception marks the request failed and propagates.
        """
        if not self.enabled:
            yield Span(traceparent)
            return
        from opencensus.trace import execution_context
        from opencensus.trace.span import SpanKind
        from opencensus.trace.span_context import SpanContext
        from opencensus.trace.status import Status
        from opencensus.trace.trace_options import TraceOptions
        from opencensus.trace.tracer import Tracer

        ids = parse_traceparent(traceparent)
        trace_id = ids[0] if ids else secrets.token_hex(16)
        sampled = is_sampled(trace_id, self._sampling_rate)
        context = SpanContext(trace_id=trace_id, span_id=ids[1] if ids else None, from_header=bool(ids),
                              trace_options=TraceOptions("1" if sampled else "0"))
        tracer = Tracer(span_context=context, sampler=self._sampler, exporter=self._trace_exporter)
        try:
            with tracer.span(name=name) as span:
                span.span_kind = SpanKind.SERVER
                span_id = getattr(span, "span_id", None) or (ids[1] if ids else secrets.token_hex(8))
                current = Span(f"00-{trace_id}-{span_id}-{'01' if sampled else '00'}", span if sampled else None)
                current.set(stage=name, **properties)
                token = _stage_ids.set((trace_id, span_id))
                try:
                    yield current
                except Exception as exc:
                    span.status = Status(code=2, message=self.redactor.scrub(f"{type(exc).__name__}: {exc}"))
                    raise
                finally:
                    _stage_ids.reset(token)
        finally:
            execution_context.clean()

    @contextmanager
    def dependency(self, system: str, name: str, target: str, dependency_type: str = "HTTP") -> Iterator[Span]:
        """A dependency (client span) of the current stage: ``system`` is one of :data:`DEPENDENCY_SYSTEMS`.

        Yields a :class:`Span`; ``set_status_code(status)`` records an HTTP answer (``resultCode``; success = 2xx/3xx).
        """
        if not self.enabled:
            yield Span(None)
            return
        from opencensus.trace import execution_context
        from opencensus.trace.span import SpanKind
        from opencensus.trace.status import Status

        tracer = execution_context.get_opencensus_tracer()
        if tracer is None or not hasattr(tracer, "span") or _stage_ids.get() is None:
            yield Span(None)
            return
        with tracer.span(name=name) as span:
            span.span_kind = SpanKind.CLIENT
            span.add_attribute("component", dependency_type)
            span.add_attribute("target", target)
            span.add_attribute("system", system)
            try:
                yield Span(None, span)
            except Exception as exc:
                span.status = Status(code=2, message=self.redactor.scrub(f"{type(exc).__name__}: {exc}"))
                raise

    # ------------------------------------------------------------------ events and metrics
    def event(self, name: str, properties: dict[str, Any] | None = None,
              measurements: dict[str, float] | None = None, traceparent: str | None = None) -> None:
        """A custom event in the current (or ``traceparent``'s) operation; ids and text redacted per PII mode."""
        if not self.enabled:
            return
        ids = parse_traceparent(traceparent) or self._current_ids()
        if not self._sampled(ids):
            return
        props = {k: v for k, v in self.redactor.properties(properties or {}).items() if v is not None}
        try:
            self._events.info(name, extra={
                "custom_dimensions": {k: v if isinstance(v, str) else str(v) for k, v in props.items()},
                "custom_measurements": {k: float(v) for k, v in (measurements or {}).items() if v is not None},
                "traceId": ids[0] if ids else "0" * 32, "spanId": ids[1] if ids else "0" * 16,
            })
        except Exception:  # noqa: BLE001
            self.export_failures += 1

    def _sampled(self, ids: tuple[str, str] | None) -> bool:
        """Events follow their operation's sampling decision (same trace id, same answer); without one, random."""
        if ids is None:
            return self._sampling_rate >= 1.0 or secrets.randbelow(1_000_000) < self._sampling_rate * 1_000_000
        return is_sampled(ids[0], self._sampling_rate)

    def metric(self, name: str, value: float, **dimensions: str | None) -> None:
        """Record one value of a pre-aggregated metric (:data:`METRICS`)."""
        if self.enabled:
            self._aggregates.add(name, float(value), {k: str(v) for k, v in dimensions.items() if v is not None})

    def redact_id(self, value: str) -> str:
        """``value`` (a user or channel id) as telemetry stores it in this PII mode."""
        return self.redactor.id(value)

    @staticmethod
    @contextmanager
    def sensitive(*, user_id: str | None = None, channel_url: str | None = None,
                  text: str | None = None) -> Iterator[None]:
        """Register the raw ids and text of the message processed in this context, so that every telemetry
        item emitted meanwhile (logs, exceptions, failure messages, event properties) has them replaced."""
        values = tuple((k, v) for k, v in (("user_id", user_id), ("channel_url", channel_url), ("text", text)) if v)
        token = _sensitive.set(_sensitive.get() + values)
        try:
            yield
        finally:
            _sensitive.reset(token)

    @staticmethod
    def _current_ids() -> tuple[str, str] | None:
        """(trace_id, span_id) of the innermost current span, else of the current stage, else None."""
        from opencensus.trace import execution_context
        span = execution_context.get_current_span()
        tracer = execution_context.get_opencensus_tracer()
        if span is not None and tracer is not None and hasattr(tracer, "span_context") and \
                getattr(span, "span_id", None):
            return tracer.span_context.trace_id, span.span_id
        return _stage_ids.get()


def _force_flush(queue, timeout: float) -> None:
    """Make an exporter's worker send what it holds now.

    opencensus' ``Queue.flush`` returns at once when its queue is empty, even while the worker thread
    holds items in a batch it is still filling (up to the export interval), so we always post the
    flush event the worker answers to.
    """
    from opencensus.common.schedule import QueueEvent
    event = QueueEvent("flush")
    queue.put(event, block=True, timeout=timeout)
    event.wait(timeout)


class _TraceContextFilter(logging.Filter):
    """Stamps log records with the current operation id, so traces join their request in the portal."""

    def filter(self, record: logging.LogRecord) -> bool:
        ids = Telemetry._current_ids()
        record.traceId, record.spanId = ids if ids else ("0" * 32, "0" * 16)
        return True


#: A disabled instance: the default for plain stage code and unit tests.
DISABLED = Telemetry()


def from_settings(settings) -> Telemetry:
    """The worker's telemetry, configured from :class:`~shared.settings.Settings`."""
    return Telemetry(settings.applicationinsights_connection_string, sampling_rate=settings.telemetry_sampling_rate,
                     pii_mode=settings.telemetry_pii_mode, pii_hash_key=settings.telemetry_pii_hash_key,
                     export_interval_seconds=settings.telemetry_export_interval_seconds)


_current: Telemetry = DISABLED


def set_current(telemetry: Telemetry) -> None:
    """Make ``telemetry`` the one the client modules report dependencies to."""
    global _current
    _current = telemetry


def current() -> Telemetry:
    return _current
