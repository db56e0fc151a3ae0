"""Build the Azure Monitor workbook ``ops/workbook.json`` from the KQL files in ``ops/queries/``.

The ``.kql`` files are the source: one query per file, in file-name order, each starting with a ``//`` line
saying what it shows, followed by ``// @key: value`` directives for the workbook (stripped from the query
the workbook runs):

- ``@title``: the panel title (required);
- ``@panel``: the visualization: ``table``, ``timechart``, ``barchart``, ``piechart``, ``areachart``,
  ``linechart``, ``scatterchart``, ``tiles`` (required);
- ``@section``: start a new section (a markdown heading, with the notes of :data:`SECTION_NOTES`) before this panel;
- ``@width``: ``customWidth`` in percent (panels of width 50 sit side by side);
- ``@size``: the item ``size`` (0 medium, 1 small, 2 large, 3 tiny; default 0);
- ``@tree``: ``id_column, parent_column, expander_column``: show the grid as a tree.

Usage (from the repository root)::

    python ops/build_workbook.py                       # rewrite ops/workbook.json
    python ops/build_workbook.py --check               # exit 1 if ops/workbook.json is stale
    python ops/build_workbook.py --resource-id /subscriptions/.../components/NAME --output wb.json
    python ops/build_workbook.py --arm --resource-id /subscriptions/.../components/NAME --output workbook.arm.json

Only the standard library; deterministic output (stable ids), so ``workbook.json`` diffs stay readable.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import uuid
from pathlib import Path

OPS = Path(__file__).resolve().parent
QUERIES = OPS / "queries"
WORKBOOK = OPS / "workbook.json"

SCHEMA = "https://github.com/Microsoft/Application-Insights-Workbooks/blob/master/schema/workbook.json"
RESOURCE_TYPE = "microsoft.insights/components"
VISUALIZATIONS = {"table", "timechart", "barchart", "piechart", "areachart", "linechart", "scatterchart", "tiles"}
DIRECTIVES = {"title", "panel", "section", "width", "size", "tree"}
DAY_MS = 24 * 3600 * 1000
_NS = uuid.UUID("6f1f3f0e-7c55-4d8e-9a43-2b8f0c1d2e3f")  # stable ids: uuid5(_NS, name)

INTRO = """# Chatbot gateway operations

Telemetry of `cloud_RoleName == "chatbot-gateway"` (opencensus-ext-azure, see `shared/telemetry.py`): one **operation** per
chat message, with one request per stage (`intake`, `intent_stage`, `branch_handler`, `reply_sender`), dependencies
(`intent`, `cosmos`, `sendbird`), custom events and pre-aggregated custom metrics.

Counts from `customEvents`, `requests` and `dependencies` are **sampled** when `TELEMETRY_SAMPLING_RATE` < 1 (whole operations
are kept or dropped; nothing is scaled up); `customMetrics` are never sampled. Queries live in `ops/queries/*.kql`."""

SECTION_NOTES = {
    "Conversation lookup": (
        "Enter a **User id** or a **Correlation id** in the parameters above (widen the time range if needed).\n\n"
        "The user id is the id as stored: the raw SendBird user id with `TELEMETRY_PII_MODE` `off`; with `mask` or "
        "`strict`, `user_id` and `channel_url` are a keyed hash (HMAC-SHA256 with the app's `TELEMETRY_PII_HASH_KEY`, "
        "16 hex digits), which KQL cannot compute: get it with `python -m tools.pii_id <raw id>`. The correlation id is "
        "the one the webhook answer "
        "returns (`correlation_id`) and every queue message carries; it is never hashed."),
    "Errors and poison messages": (
        "A failed request is one failed attempt: the queue retries it until `maxDequeueCount`, then the message is "
        "poisoned (`MessagePoisoned`, `poison_count`)."),
    "Dependencies": (
        "Dependency `success` reflects exceptions only (timeouts, connection errors); HTTP error answers such as "
        "SendBird 429 or intent service 503 are recorded as events and metrics, not as failed dependencies."),
    "Prediction cache": (
        "Repeated utterances answered without the intent service (`shared/intent_cache.py`, on when `INTENT_CACHE_URL` "
        "is set): from Redis (**hits**) or from a concurrent call for the same sentence in the same worker process "
        "(**coalesced**). One `intent_cache_lookups` point per analysed message; *looked up* excludes `bypass` (the "
        "model version was unknown, the cache was not used). `error` and `breaker_open` are messages answered by the "
        "intent service because Redis failed or its circuit was open: they cost at most one cache timeout (50 ms) "
        "each, nothing once the circuit is open."),
    "Telemetry pipeline": (
        "`telemetry_export_failures` is reported by a worker after an export to Application Insights failed; "
        "if a worker's metric points stop arriving, its exports are failing right now."),
}


def _id(name: str) -> str:
    return str(uuid.uuid5(_NS, name))


def parse_kql(path: Path) -> tuple[dict[str, str], str, str]:
    """``(directives, description, query)`` of one ``.kql`` file; the query keeps the description line."""
    text = path.read_text(encoding="utf-8")
    lines = text.rstrip("\n").split("\n")
    if not lines or not lines[0].startswith("// "):
        raise ValueError(f"{path.name}: must start with a '// ' comment line saying what it shows")
    description = lines[0][3:].strip()
    directives: dict[str, str] = {}
    body: list[str] = [lines[0]]
    for line in lines[1:]:
        m = re.fullmatch(r"//\s*@(\w+):\s*(.*?)\s*", line)
        if m:
            key = m.group(1)
            if key not in DIRECTIVES:
                raise ValueError(f"{path.name}: unknown directive @{key}")
            directives[key] = m.group(2)
        else:
            body.append(line)
    for key in ("title", "panel"):
        if not directives.get(key):
            raise ValueError(f"{path.name}: missing // @{key}: directive")
    if directives["panel"] not in VISUALIZATIONS:
        raise ValueError(f"{path.name}: unknown @panel {directives['panel']!r}")
    return directives, description, "\n".join(body)


def query_files() -> list[Path]:
    return sorted(QUERIES.glob("*.kql"))


def markdown_item(name: str, text: str) -> dict:
    return {"type": 1, "content": {"json": text}, "name": name}


def parameters_item() -> dict:
    minutes = [15, 30, 60, 4 * 60, 12 * 60, 24 * 60, 2 * 24 * 60, 3 * 24 * 60, 7 * 24 * 60, 14 * 24 * 60, 30 * 24 * 60]
    return {
        "type": 9,
        "content": {
            "version": "KqlParameterItem/1.0",
            "crossComponentResources": [],
            "parameters": [
                {
                    "id": _id("param:TimeRange"), "version": "KqlParameterItem/1.0", "name": "TimeRange",
                    "label": "Time range", "type": 4, "isRequired": True, "value": {"durationMs": 4 * 3600 * 1000},
                    "typeSettings": {"selectableValues": [{"durationMs": m * 60 * 1000} for m in minutes],
                                     "allowCustom": True},
                },
                {
                    "id": _id("param:UserId"), "version": "KqlParameterItem/1.0", "name": "UserId",
                    "label": "User id (raw or hashed)", "type": 1, "isRequired": False, "value": "",
                    "description": "SendBird user id, or its 16-hex SHA-256 prefix as stored with "
                                   "TELEMETRY_PII_MODE mask/strict; both are matched.",
                },
                {
                    "id": _id("param:CorrelationId"), "version": "KqlParameterItem/1.0", "name": "CorrelationId",
                    "label": "Correlation id", "type": 1, "isRequired": False, "value": "",
                    "description": "The correlation_id of one chat message (webhook answer, queue messages, events).",
                },
            ],
            "style": "pills",
            "queryType": 0,
            "resourceType": RESOURCE_TYPE,
        },
        "name": "parameters",
    }


def query_item(path: Path, directives: dict[str, str], query: str) -> dict:
    content: dict = {
        "version": "KqlItem/1.0",
        "query": query,
        "size": int(directives.get("size", "0")),
        "title": directives["title"],
        "timeContext": {"durationMs": DAY_MS},
        "timeContextFromParameter": "TimeRange",
        "queryType": 0,
        "resourceType": RESOURCE_TYPE,
        "visualization": directives["panel"],
    }
    if "tree" in directives:
        id_col, parent_col, expander = (c.strip() for c in directives["tree"].split(","))
        content["gridSettings"] = {
            "formatters": [{"columnMatch": id_col, "formatter": 5}, {"columnMatch": parent_col, "formatter": 5}],
            "hierarchySettings": {"idColumn": id_col, "parentColumn": parent_col, "treeType": 0,
                                  "expanderColumn": expander, "expandTopLevel": True},
        }
    item: dict = {"type": 3, "content": content, "name": f"query - {path.stem}"}
    if "width" in directives:
        item["customWidth"] = directives["width"]
    return item


def build(resource_ids: list[str] | None = None) -> dict:
    items: list[dict] = [markdown_item("intro", INTRO), parameters_item()]
    for path in query_files():
        directives, _description, query = parse_kql(path)
        section = directives.get("section")
        if section:
            note = SECTION_NOTES.get(section)
            items.append(markdown_item(f"section - {section}", f"## {section}" + (f"\n\n{note}" if note else "")))
        items.append(query_item(path, directives, query))
    return {"version": "Notebook/1.0", "items": items, "fallbackResourceIds": list(resource_ids or []),
            "$schema": SCHEMA}


def render(workbook: dict) -> str:
    return json.dumps(workbook, indent=2, ensure_ascii=False) + "\n"


def arm_template(workbook: dict, resource_id: str) -> dict:
    """An ARM template with one ``Microsoft.Insights/workbooks`` resource linked to the Application Insights resource."""
    return {
        "$schema": "https://schema.management.azure.com/schemas/2019-04-01/deploymentTemplate.json#",
        "contentVersion": "1.0.0.0",
        "parameters": {
            "workbookDisplayName": {"type": "string", "defaultValue": "Chatbot gateway operations"},
            "workbookSourceId": {"type": "string", "defaultValue": resource_id},
            "workbookId": {"type": "string", "defaultValue": "[newGuid()]"},
        },
        "resources": [{
            "type": "Microsoft.Insights/workbooks",
            "apiVersion": "2022-04-01",
            "name": "[parameters('workbookId')]",
            "location": "[resourceGroup().location]",
            "kind": "shared",
            "properties": {
                "displayName": "[parameters('workbookDisplayName')]",
                "category": "workbook",
                "sourceId": "[parameters('workbookSourceId')]",
                "serializedData": json.dumps(workbook, ensure_ascii=False),
            },
        }],
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--check", action="store_true", help="fail if ops/workbook.json differs from the .kql files")
    ap.add_argument("--resource-id", help="Application Insights resource id (fallbackResourceIds / ARM sourceId)")
    ap.add_argument("--arm", action="store_true", help="write an ARM template instead (needs --resource-id)")
    ap.add_argument("--output", type=Path, help="output file (default ops/workbook.json; '-' for stdout)")
    args = ap.parse_args(argv)
    workbook = build([args.resource_id] if args.resource_id and not args.arm else None)
    if args.check:
        if not WORKBOOK.exists() or WORKBOOK.read_text(encoding="utf-8") != render(workbook):
            print(f"{WORKBOOK} is stale: run python ops/build_workbook.py", file=sys.stderr)
            return 1
        return 0
    if args.arm:
        if not args.resource_id:
            ap.error("--arm needs --resource-id")
        text = json.dumps(arm_template(workbook, args.resource_id), indent=2, ensure_ascii=False) + "\n"
    else:
        text = render(workbook)
    out = args.output or (None if args.arm else WORKBOOK)
    if out is None or str(out) == "-":
        sys.stdout.write(text)
    else:
        out.write_text(text, encoding="utf-8")
        print(f"wrote {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
