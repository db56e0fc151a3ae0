"""Application Insights adapter of :class:`~shared.ports.TelemetryPort`: the only module that knows the exporter
(opencensus-ext-azure 1.1.x). Swapping to ``azure-monitor-opentelemetry`` means rewriting this module only.

What is sent, the names, sampling and PII rules: :mod:`shared.telemetry`. Spec: Application Insights data model,
ingestion ``/v2.1/track``; W3C Trace Context.

Exporting runs on the exporters' background threads with bounded queues; it never blocks or fails a stage.
Failed transmissions are counted (:attr:`AppInsightsTelemetry.export_failures`, metric ``telemetry_export_failures``).
"""

from __future__ import annotations

import logging
import os
import secrets
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

# The SDK's own usage reporting ("statsbeat") goes to a second, Microsoft-owned endpoint: off unless the operator
# turns it on explicitly. Must be set before the exporters are imported.
os.environ.setdefault("APPLICATIONINSIGHTS_STATSBEAT_DISABLED_ALL", "true")

from opencensus.ext.azure.common import utils  # noqa: E402
from opencensus.ext.azure.common.protocol import Data, DataPoint, Envelope, MetricData  # noqa: E402
from opencensus.ext.azure.common.transport import TransportStatusCode  # noqa: E402
from opencensus.ext.azure.log_exporter import AzureEventHandler, AzureLogHandler  # noqa: E402
from opencensus.ext.azure.metrics_exporter import MetricsExporter  # noqa: E402
from opencensus.ext.azure.trace_exporter import AzureExporter  # noqa: E402
from opencensus.common.schedule import QueueEvent  # noqa: E402
from opencensus.trace import execution_context  # noqa: E402
from opencensus.trace.samplers import ProbabilitySampler  # noqa: E402
from opencensus.trace.span import SpanKind  # noqa: E402
from opencensus.trace.span_context import SpanContext  # noqa: E402
from opencensus.trace.status import Status  # noqa: E402
from opencensus.trace.trace_options import TraceOptions  # noqa: E402
from opencensus.trace.tracer import Tracer  # noqa: E402

from shared.telemetry import (  # noqa: E402
    PiiMode, Redactor, Span, is_sampled, parse_traceparent, redacting_log_handler, sensitive, stage_ids,
)


class _CountingTransmit:
    """Mixin for the exporters: counts failed transmissions on ``owner`` (the library itself swallows them)."""

    owner: "AppInsightsTelemetry"

    def _transmit(self, envelopes: Any) -> Any:
        try:
            result = super()._transmit(envelopes)  # type: ignore[misc]
        except Exception:  # noqa: BLE001 - telemetry must never break the app
            result = TransportStatusCode.DROP
        if result is not TransportStatusCode.SUCCESS:
            self.owner.export_failures += 1
        return result


class _TraceExporter(_CountingTransmit, AzureExporter):
    pass


class _EventHandler(_CountingTransmit, AzureEventHandler):
    pass


class _LogHandler(_CountingTransmit, AzureLogHandler):
    pass


class _MetricsExporter(_CountingTransmit, MetricsExporter):
    pass


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

    def drain(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], list[float]]:
        with self._lock:
            data, self._data = self._data, {}
        return data


class _Processor:
    """Telemetry processor of every exporter: role name, sample rate, request names, dependency targets."""

    def __init__(self, role_name: str, sampling_rate: float):
        self._role, self._rate = role_name, sampling_rate

    def __call__(self, envelope: Any) -> bool:
        envelope.tags["ai.cloud.role"] = self._role
        if envelope.data.baseType != "MetricData" and self._rate < 1.0:
            envelope.sampleRate = self._rate * 100  # so itemCount scales sampled counts back up
        base = envelope.data.baseData
        if envelope.data.baseType == "RequestData" and not getattr(base, "name", ""):
            base.name = base.properties.get("stage", "stage")
            envelope.tags["ai.operation.name"] = base.name
        if envelope.data.baseType == "RemoteDependencyData":
            base.target = base.properties.pop("target", "")
        return True


class AppInsightsTelemetry:
    """Telemetry for one worker process, exported to the Application Insights resource of ``connection_string``."""

    enabled = True

    def __init__(self, connection_string: str, *, sampling_rate: float = 1.0, pii_mode: PiiMode = "off",
                 pii_hash_key: str = "", export_interval_seconds: float = 15.0, role_name: str = "chatbot-gateway"):
        self._redactor = Redactor(pii_mode, pii_hash_key)
        self.export_failures = 0
        self._export_failures_reported = 0
        self._aggregates = _Aggregates()
        self._interval = export_interval_seconds
        self._stop = threading.Event()
        self._sampling_rate = sampling_rate
        self._sampler = ProbabilitySampler(rate=sampling_rate)
        processor = _Processor(role_name, sampling_rate)
        options = dict(connection_string=connection_string, enable_local_storage=False,
                       export_interval=export_interval_seconds)
        self._trace_exporter = self._owned(_TraceExporter(**options), processor)
        self._event_handler = self._owned(_EventHandler(logging_sampling_rate=1.0, **options), processor)
        self._events = logging.getLogger(f"chatgw.telemetry.events.{id(self):x}")  # one per instance
        self._events.propagate = False
        self._events.setLevel(logging.INFO)
        self._events.addHandler(self._event_handler)
        self._log_handler = redacting_log_handler(self._owned(_LogHandler(**options), processor), self._redactor,
                                                  current_ids=self._current_ids)
        logging.getLogger().addHandler(self._log_handler)
        self._metrics = self._owned(_MetricsExporter(**options), processor)
        threading.Thread(target=self._export_metrics_loop, name="telemetry-metrics", daemon=True).start()

    def _owned(self, exporter: Any, processor: _Processor) -> Any:
        exporter.owner = self
        exporter.add_telemetry_processor(processor)
        return exporter

    @property
    def redactor(self) -> Redactor:
        return self._redactor

    # ------------------------------------------------------------------ export
    def _export_metrics_loop(self) -> None:
        while not self._stop.wait(self._interval):
            self.flush_metrics()

    def flush_metrics(self) -> None:
        """Send the pre-aggregated metrics now (also runs every export interval)."""
        new_failures = self.export_failures - self._export_failures_reported
        if new_failures:
            self._export_failures_reported += new_failures
            self._aggregates.add("telemetry_export_failures", new_failures, {})
        now = utils.timestamp_to_iso_str(time.time())
        envelopes = [self._metric_envelope(name, dict(dims), agg, now)
                     for (name, dims), agg in self._aggregates.drain().items()]
        if envelopes:
            try:
                self._metrics._transmit(self._metrics.apply_telemetry_processors(envelopes))
            except Exception:  # noqa: BLE001
                self.export_failures += 1

    def _metric_envelope(self, name: str, dims: dict[str, str], agg: list[float], now: str) -> Envelope:
        total, count, lo, hi = agg
        point = DataPoint(ns="chatgw", name=name, value=total, count=count, min=lo, max=hi, kind=1)
        env = Envelope(iKey=self._metrics.options.instrumentation_key, tags=dict(utils.azure_monitor_context),
                       time=now, name="Microsoft.ApplicationInsights.Metric")
        env.data = Data(baseData=MetricData(metrics=[point], properties=dims), baseType="MetricData")
        return env

    def flush(self, timeout: float = 5.0) -> None:
        """Export everything queued (tests, shutdown). Never raises."""
        try:
            for exporter in (self._trace_exporter, self._event_handler, self._log_handler):
                _force_flush(exporter._queue, timeout)
            self.flush_metrics()
        except Exception:  # noqa: BLE001
            self.export_failures += 1

    def close(self) -> None:
        """Flush and stop the exporters; detach the log handler. Never raises."""
        if self._stop.is_set():
            return
        self._stop.set()
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

    # ------------------------------------------------------------------ traces
    @contextmanager
    def stage(self, name: str, traceparent: str | None, **properties: Any) -> Iterator[Span]:
        """A request (server span) for one stage invocation, continuing ``traceparent``'s trace.

        Yields a :class:`~shared.telemetry.Span` whose ``traceparent`` the stage puts on its next message. Without
        a (valid) ``traceparent`` a new trace starts. An exception marks the request failed and propagates.
        """
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
                with stage_ids(trace_id, span_id), self._failure_status(span):
                    yield current
        finally:
            execution_context.clean()

    @contextmanager
    def _failure_status(self, span: Any) -> Iterator[None]:
        try:
            yield
        except Exception as exc:
            span.status = Status(code=2, message=self._redactor.scrub(f"{type(exc).__name__}: {exc}"))
            raise

    @contextmanager
    def dependency(self, system: str, name: str, target: str, dependency_type: str = "HTTP") -> Iterator[Span]:
        """A dependency (client span) of the current stage: ``system`` is one of
        :data:`~shared.telemetry.DEPENDENCY_SYSTEMS`. ``set_status_code(status)`` on the yielded span records an
        HTTP answer (``resultCode``; success = 2xx/3xx)."""
        tracer = execution_context.get_opencensus_tracer()
        if tracer is None or not hasattr(tracer, "span") or not _in_stage():
            yield Span(None)
            return
        with tracer.span(name=name) as span:
            span.span_kind = SpanKind.CLIENT
            span.add_attribute("component", dependency_type)
            span.add_attribute("target", target)
            span.add_attribute("system", system)
            with self._failure_status(span):
                yield Span(None, span)

    # ------------------------------------------------------------------ events and metrics
    def event(self, name: str, properties: dict[str, Any] | None = None,
              measurements: dict[str, float] | None = None, traceparent: str | None = None) -> None:
        """A custom event in the current (or ``traceparent``'s) operation; ids and text redacted per PII mode."""
        ids = parse_traceparent(traceparent) or self._current_ids()
        if not self._sampled(ids):
            return
        props = {k: v for k, v in self._redactor.properties(properties or {}).items() if v is not None}
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
        """Record one value of a pre-aggregated metric (:data:`~shared.telemetry.METRICS`)."""
        self._aggregates.add(name, float(value), {k: str(v) for k, v in dimensions.items() if v is not None})

    def redact_id(self, value: str) -> str:
        """``value`` (a user or channel id) as telemetry stores it in this PII mode."""
        return self._redactor.id(value)

    sensitive = staticmethod(sensitive)

    @staticmethod
    def _current_ids() -> tuple[str, str] | None:
        """(trace_id, span_id) of the innermost current span, else of the current stage, else None."""
        span = execution_context.get_current_span()
        tracer = execution_context.get_opencensus_tracer()
        if span is not None and tracer is not None and hasattr(tracer, "span_context") and \
                getattr(span, "span_id", None):
            return tracer.span_context.trace_id, span.span_id
        return stage_ids.current()


def _in_stage() -> bool:
    return stage_ids.current() is not None


def _force_flush(queue: Any, timeout: float) -> None:
    """Make an exporter's worker send what it holds now.

    opencensus' ``Queue.flush`` returns at once when its queue is empty, even while the worker thread
    holds items in a batch it is still filling (up to the export interval), so we always post the
    flush event the worker answers to.
    """
    event = QueueEvent("flush")
    queue.put(event, block=True, timeout=timeout)
    event.wait(timeout)
