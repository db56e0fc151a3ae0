"""Summaries of recorded Application Insights envelopes (from the local ingestion sink).

``counts(envelopes)``: requests by name, dependencies by system, events and metrics by name.
``operation_tree(envelopes, operation_id)``: the requests and dependencies of one operation as an
indented tree (parent/child by ``ai.operation.parentId``), with durations and the events in it.
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict


def _base(e: dict) -> dict:
    return e["data"]["baseData"]


def _kind(e: dict) -> str:
    return e["data"]["baseType"]


def _ms(duration: str) -> float:
    """Application Insights duration ``d.hh:mm:ss.ffffff`` or ``hh:mm:ss.ffffff`` -> ms."""
    m = re.fullmatch(r"(?:(\d+)\.)?(\d+):(\d+):(\d+(?:\.\d+)?)", duration)
    if not m:
        return 0.0
    days, h, mins, secs = m.groups()
    return ((int(days or 0) * 24 + int(h)) * 3600 + int(mins) * 60 + float(secs)) * 1000


def counts(envelopes: list[dict]) -> dict[str, Counter]:
    out: dict[str, Counter] = {"requests": Counter(), "dependencies": Counter(), "events": Counter(),
                               "metrics": Counter(), "traces": Counter()}
    for e in envelopes:
        kind, b = _kind(e), _base(e)
        if kind == "RequestData":
            out["requests"][b.get("name")] += 1
        elif kind == "RemoteDependencyData":
            out["dependencies"][b.get("properties", {}).get("system", b.get("type"))] += 1
        elif kind == "EventData":
            out["events"][b.get("name")] += 1
        elif kind == "MetricData":
            for point in b.get("metrics", []):
                out["metrics"][point["name"]] += point.get("count") or 1
        elif kind in ("MessageData", "ExceptionData"):
            out["traces"][kind] += 1
    return out


def operation_tree(envelopes: list[dict], operation_id: str) -> list[str]:
    """Indented lines: each request/dependency under its parent, events under the span they belong to."""
    items = [e for e in envelopes if e.get("tags", {}).get("ai.operation.id") == operation_id]
    spans = [e for e in items if _kind(e) in ("RequestData", "RemoteDependencyData")]
    children: dict[str | None, list[dict]] = defaultdict(list)
    ids = {_base(e)["id"] for e in spans}
    for e in sorted(spans, key=lambda e: e["time"]):
        parent = e["tags"].get("ai.operation.parentId")
        children[parent if parent in ids else None].append(e)
    events_by_span: dict[str, list[str]] = defaultdict(list)
    for e in items:
        if _kind(e) == "EventData":
            span = e["tags"].get("ai.operation.parentId", "").strip("|").split(".")[-2:-1]
            events_by_span[span[0] if span else ""].append(_base(e)["name"])
    lines: list[str] = []

    def walk(e: dict, depth: int) -> None:
        b = _base(e)
        label = (f"{b['name']}" if _kind(e) == "RequestData"
                 else f"{b.get('properties', {}).get('system', b.get('type'))}: {b['name']}")
        extra = ""
        if _kind(e) == "RequestData" and "queue_wait_ms" in b.get("properties", {}):
            extra = f", waited {b['properties']['queue_wait_ms']} ms in {b['properties'].get('queue')}"
        events = events_by_span.get(b["id"])
        lines.append("  " * depth + ("└─ " if depth else "") + f"{label} ({_ms(b['duration']):.1f} ms{extra})"
                     + (f"  events: {', '.join(events)}" if events else ""))
        for child in children.get(b["id"], []):
            walk(child, depth + 1)

    for root in children.get(None, []):
        walk(root, 0)
    return lines
