"""The ops queries and workbook (``ops/``) against the telemetry the code declares and emits.

1. every event, metric and request name, every customDimensions / customMeasurements key (and the
   ``system`` / ``route`` values) a query uses is one ``shared/telemetry.py`` and the stages declare;
2. every declared event and metric is emitted somewhere in ``shared/`` or ``functions/`` (and nothing
   undeclared is emitted);
3. ``ops/workbook.json`` is exactly what ``ops/build_workbook.py`` generates from the ``.kql`` files, and
   has the shape the workbook import expects;
4. a lexical sanity check of every ``.kql`` file;
5. Kusto's own parser and semantic analyser (Kusto.Language, npm ``@kusto/language-service-next``, run by
   ``ops/kql/check_kql.js`` through ``node``) accepts every ``.kql`` file and every query of the generated workbook
   (workbook parameters substituted) against the Application Insights schema ``ops/kql/appinsights_schema.json``:
   no diagnostic of severity error.

The KQL "parser" of 1. is lexical: comments are dropped, string literals are masked, and every
``name == ...`` / ``customDimensions.X`` reference is attributed to the nearest table name before it
(the queries are written so that this holds: each sub-pipeline names its table first).
"""

from __future__ import annotations

import ast
import importlib.util
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from shared import telemetry as tel
from shared.routes import routes

ROOT = Path(__file__).resolve().parents[1]
OPS = ROOT / "ops"
QUERY_FILES = sorted((OPS / "queries").glob("*.kql"))
TABLES = ("requests", "dependencies", "customEvents", "customMetrics", "traces", "exceptions")
SOURCE_FILES = sorted([*(ROOT / "shared").rglob("*.py"), *(ROOT / "functions").rglob("*.py")])


def _load_builder():
    spec = importlib.util.spec_from_file_location("ops_build_workbook", OPS / "build_workbook.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


builder = _load_builder()


# ---------------------------------------------------------------------------------------------- KQL lexing
class KqlSyntaxError(ValueError):
    pass


def lex(text: str) -> tuple[str, str]:
    """``(code, masked)``: ``code`` is ``text`` with ``//`` comments blanked; ``masked`` also blanks the contents
    of string literals (quotes kept). Both have the length of ``text``, so positions line up.
    Raises :class:`KqlSyntaxError` for an unterminated string."""
    code, masked = list(text), list(text)
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c == "/" and text.startswith("//", i):
            j = text.find("\n", i)
            j = n if j < 0 else j
            for k in range(i, j):
                code[k] = masked[k] = " "
            i = j
        elif c in "\"'" or (c == "@" and i + 1 < n and text[i + 1] in "\"'"):
            verbatim = c == "@"
            start = i + 1 if verbatim else i
            quote = text[start]
            j = start + 1
            while True:
                if j >= n or text[j] == "\n":
                    line = text.count("\n", 0, i) + 1
                    raise KqlSyntaxError(f"unterminated string on line {line}")
                if not verbatim and text[j] == "\\":
                    j += 2
                    continue
                if text[j] == quote:
                    if verbatim and j + 1 < n and text[j + 1] == quote:
                        j += 2
                        continue
                    break
                j += 1
            for k in range(start + 1, j):
                masked[k] = " "
            i = j + 1
        else:
            i += 1
    return "".join(code), "".join(masked)


def sanity_problems(text: str) -> list[str]:
    """Lexical problems of one query file (empty when it looks sane)."""
    problems = []
    if "\t" in text:
        problems.append("contains a tab")
    if not text.startswith("// "):
        problems.append("does not start with a '// ' comment line")
    if not text.endswith("\n"):
        problems.append("does not end with a newline")
    try:
        code, masked = lex(text)
    except KqlSyntaxError as exc:
        return [*problems, str(exc)]
    stack: list[tuple[str, int]] = []
    pairs = {")": "(", "]": "[", "}": "{"}
    for pos, ch in enumerate(masked):
        if ch in "([{":
            stack.append((ch, pos))
        elif ch in ")]}":
            if not stack or stack[-1][0] != pairs[ch]:
                problems.append(f"unbalanced {ch!r} on line {text.count(chr(10), 0, pos) + 1}")
                return problems
            stack.pop()
    if stack:
        ch, pos = stack[-1]
        problems.append(f"unclosed {ch!r} from line {text.count(chr(10), 0, pos) + 1}")
    first = next((line.strip() for line in code.split("\n") if line.strip()), "")
    if not re.match(rf"^(let\s|({'|'.join(TABLES)})\b)", first):
        problems.append(f"first statement does not start with a table name or 'let': {first[:40]!r}")
    if "chatbot-gateway" not in code:
        problems.append('does not filter cloud_RoleName == "chatbot-gateway"')
    return problems


_STR = r"""(?:"(?:[^"\\\n]|\\.)*"|'(?:[^'\\\n]|\\.)*')"""
_NAME_CMP = re.compile(
    r"(?<![\w.])name\s*(?P<op>==|!=|=~|!~|!in~|in~|!in\b|in\b|!has\b|has\b|!contains\b|contains\b|startswith\b|"
    r"endswith\b)\s*(?:\((?P<list>[^()]*)\)|(?P<one>" + _STR + r")|(?P<ident>\w+))")
_BAG_KEY = re.compile(r"(?<![\w.])(?P<bag>customDimensions|customMeasurements)\s*(?:\.\s*(?P<dot>\w+)|"
                      r"\[\s*(?P<idx>" + _STR + r")\s*\])")
_VALUE_CMP = re.compile(r"customDimensions\s*\.\s*(?P<key>system|route)\s*\)\s*(?:==|=~|!=)\s*(?P<val>" + _STR + ")")
_TABLE = re.compile(rf"(?<![\w.])({'|'.join(TABLES)})(?!\w)")


def _literal(token: str) -> str:
    return token[1:-1]


def references(text: str) -> list[tuple[str, str, str]]:
    """``(table, kind, value)`` of every schema reference in one query: kind ``name``, ``dim``, ``measure``,
    ``system`` or ``route``. A reference that no table precedes, or a ``name`` compared with something
    that is not a string literal, comes back with table ``?`` / kind ``name?``."""
    code, masked = lex(text)
    tables = [(m.start(), m.group(1)) for m in _TABLE.finditer(masked)]

    def table_at(pos: int) -> str:
        before = [t for p, t in tables if p < pos]
        return before[-1] if before else "?"

    refs = []
    for m in _NAME_CMP.finditer(code):
        if masked[m.start()] != "n":  # inside a string literal
            continue
        table = table_at(m.start())
        if m.group("one"):
            refs.append((table, "name", _literal(m.group("one"))))
        elif m.group("ident"):
            refs.append((table, "name?", m.group("ident")))
        else:
            items = [s.strip() for s in m.group("list").split(",") if s.strip()]
            for item in items:
                if re.fullmatch(_STR, item):
                    refs.append((table, "name", _literal(item)))
                else:
                    refs.append((table, "name?", item))
    for m in _BAG_KEY.finditer(code):
        if masked[m.start()] == " ":
            continue
        key = m.group("dot") or _literal(m.group("idx"))
        refs.append((table_at(m.start()), "dim" if m.group("bag") == "customDimensions" else "measure", key))
    for m in _VALUE_CMP.finditer(code):
        if masked[m.start()] == " ":
            continue
        refs.append((table_at(m.start()), m.group("key"), _literal(m.group("val"))))
    return refs


# ---------------------------------------------------------------------------------------------- what the code declares
def _parse(path: Path) -> ast.AST:
    return ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


def _calls(attr_names: set[str]):
    for path in SOURCE_FILES:
        for node in ast.walk(_parse(path)):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in attr_names:
                yield path, node


def _string_constants(node: ast.AST) -> set[str]:
    """The literal string values an expression can take: a constant, or either branch of ``a if c else b``."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return {node.value}
    if isinstance(node, ast.IfExp):
        return _string_constants(node.body) | _string_constants(node.orelse)
    return set()


def request_dimensions() -> set[str]:
    """customDimensions of requests: ``stage`` (set by ``Telemetry.stage``) plus the keyword arguments of every
    ``telemetry.stage(...)`` call, plus what stage code adds through ``span.set(...)``."""
    dims = {"stage"}
    for _path, call in _calls({"stage", "set"}):
        if call.func.attr == "stage" and len(call.args) >= 2 or call.func.attr == "set" and \
                isinstance(call.func.value, ast.Name) and call.func.value.id == "span":
            dims |= {kw.arg for kw in call.keywords if kw.arg}
    return dims


def dependency_dimensions() -> set[str]:
    """customDimensions of dependencies: attributes the adapter's ``dependency`` adds, minus those the telemetry
    processor moves out of ``properties`` (``target``)."""
    tree = _parse(ROOT / "shared" / "clients" / "appinsights.py")
    method = next(n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and n.name == "dependency")
    added = {c.args[0].value for c in ast.walk(method) if isinstance(c, ast.Call) and isinstance(c.func, ast.Attribute)
             and c.func.attr == "add_attribute" and isinstance(c.args[0], ast.Constant)}
    popped = {c.args[0].value for c in ast.walk(tree) if isinstance(c, ast.Call) and isinstance(c.func, ast.Attribute)
              and c.func.attr == "pop" and isinstance(c.func.value, ast.Attribute)
              and c.func.value.attr == "properties" and c.args and isinstance(c.args[0], ast.Constant)}
    return added - popped


def dependency_systems() -> set[str]:
    """The ``system`` of every ``timing.dependency(telemetry, "<system>", ...)`` call."""
    return {call.args[1].value for _p, call in _calls({"dependency"})
            if isinstance(call.func.value, ast.Name) and call.func.value.id == "timing"
            and len(call.args) > 1 and isinstance(call.args[1], ast.Constant)}


def emitted() -> dict[str, set[str]]:
    """Literal names passed to ``<x>.event(...)``, ``<x>.metric(...)`` and ``self._aggregates.add(...)``."""
    out: dict[str, set[str]] = {"event": set(), "metric": set()}
    for _path, call in _calls({"event", "metric", "add"}):
        if not call.args:
            continue
        if call.func.attr == "add":
            if not (isinstance(call.func.value, ast.Attribute) and call.func.value.attr == "_aggregates"):
                continue
            kind = "metric"
        else:
            kind = call.func.attr
        out[kind] |= _string_constants(call.args[0])
    return out


def allowed() -> dict[tuple[str, str], set[str]]:
    return {
        ("customEvents", "name"): set(tel.EVENTS),
        ("customEvents", "dim"): set(tel.EVENT_DIMENSIONS),
        ("customEvents", "measure"): set(tel.EVENT_MEASUREMENTS),
        ("customEvents", "route"): {r.name for r in routes()},
        ("customMetrics", "name"): set(tel.METRICS),
        ("customMetrics", "dim"): set(tel.METRIC_DIMENSIONS),
        ("customMetrics", "route"): {r.name for r in routes()},
        ("requests", "name"): set(tel.STAGES),
        ("requests", "dim"): request_dimensions(),
        ("dependencies", "dim"): dependency_dimensions(),
        ("dependencies", "system"): dependency_systems(),
    }


def schema_problems(text: str, rules: dict[tuple[str, str], set[str]]) -> list[str]:
    problems = []
    for table, kind, value in references(text):
        if table == "?":
            problems.append(f"{kind} {value!r} is not preceded by any table name")
        elif kind == "name?":
            problems.append(f"{table}: name compared with {value!r}, not a string literal")
        elif (table, kind) not in rules:
            problems.append(f"{table}: {kind} {value!r} is not part of the declared schema of {table}")
        elif value not in rules[(table, kind)]:
            problems.append(f"{table}: {kind} {value!r} not in {sorted(rules[(table, kind)])}")
    return problems


# ---------------------------------------------------------------------------------------------- 1. schema
def test_there_are_queries_for_every_panel_of_the_issue():
    names = {p.stem for p in QUERY_FILES}
    assert len(QUERY_FILES) >= 15, names
    texts = "\n".join(p.read_text(encoding="utf-8") for p in QUERY_FILES)
    for needle in ("ReplySent", "e2e_latency_ms", "queue_wait_ms", "IntentClassified", "MessagePoisoned",
                   "SendBirdThrottled", "sendbird_429_count", "handoff_count", "intent_service_errors",
                   "telemetry_export_failures", "{UserId}", "{CorrelationId}"):
        assert needle in texts, needle


@pytest.mark.parametrize("path", QUERY_FILES, ids=lambda p: p.name)
def test_query_uses_only_declared_names_and_keys(path):
    text = path.read_text(encoding="utf-8")
    if set(_TABLE.findall(lex(text)[1])) - {"traces", "exceptions"}:
        assert references(text), "no schema reference found: the parser or the query is broken"
    assert schema_problems(text, allowed()) == []


def test_code_derived_schema_is_what_the_dashboards_expect():
    assert {"stage", "correlation_id", "message_id", "queue", "dequeue_count", "queue_wait_ms"} <= request_dimensions()
    assert dependency_dimensions() == {"component", "system"}
    assert dependency_systems() == {"intent", "cosmos", "sendbird", "redis"}


@pytest.mark.parametrize("kql, fragment", [
    ('customEvents\n| where name == "ReplySend"', "'ReplySend' not in"),
    ('customEvents\n| where name in ("ReplySent", "Nope")', "'Nope' not in"),
    ('requests\n| where name == "ReplySent"', "'ReplySent' not in"),
    ('customMetrics\n| where name == "ReplySent"', "'ReplySent' not in"),
    ('customMetrics\n| extend u = tostring(customDimensions.user_id)', "'user_id' not in"),
    ('customEvents\n| extend x = customDimensions["no_such_key"]', "'no_such_key' not in"),
    ('customEvents\n| extend x = todouble(customMeasurements.latency)', "'latency' not in"),
    ('customMetrics\n| extend x = customMeasurements.e2e_latency_ms', "not part of the declared schema"),
    ('dependencies\n| where tostring(customDimensions.system) == "memcached"', "'memcached' not in"),
    ('customEvents\n| where tostring(customDimensions.route) == "order-status"', "'order-status' not in"),
    ('let n = "ReplySent";\ncustomEvents\n| where name == n', "not a string literal"),
    ('print x = customDimensions.stage', "not preceded by any table"),
])
def test_schema_check_catches_undeclared_names(kql, fragment):
    problems = schema_problems(kql, allowed())
    assert any(fragment in p for p in problems), problems


def test_schema_check_ignores_strings_and_comments():
    kql = ('// customEvents | where name == "Bogus"\ncustomEvents\n'
           '| where name == "ReplySent" and tostring(customDimensions.reason) != "name == \\"x\\" customDimensions.y"')
    assert schema_problems(kql, allowed()) == []
    assert ("customEvents", "dim", "reason") in references(kql)


# ---------------------------------------------------------------------------------------------- 2. emitted
def test_every_declared_event_and_metric_is_emitted():
    got = emitted()
    assert set(tel.EVENTS) - got["event"] == set(), "declared but never emitted"
    assert set(tel.METRICS) - got["metric"] == set(), "declared but never emitted"


def test_nothing_undeclared_is_emitted():
    got = emitted()
    assert got["event"] - set(tel.EVENTS) == set()
    assert got["metric"] - set(tel.METRICS) == set()


# ---------------------------------------------------------------------------------------------- 3. workbook
def test_workbook_json_is_generated_from_the_queries():
    committed = (OPS / "workbook.json").read_text(encoding="utf-8")
    assert committed == builder.render(builder.build()), "stale: run python ops/build_workbook.py"
    assert builder.main(["--check"]) == 0


def test_workbook_is_importable():
    wb = json.loads((OPS / "workbook.json").read_text(encoding="utf-8"))
    assert wb["version"] == "Notebook/1.0" and isinstance(wb["items"], list)
    assert set(wb) == {"version", "items", "fallbackResourceIds", "$schema"}
    names = [item["name"] for item in wb["items"]]
    assert len(names) == len(set(names)), "item names must be unique"
    assert {item["type"] for item in wb["items"]} == {1, 3, 9}
    [params] = [item for item in wb["items"] if item["type"] == 9]
    assert params["content"]["version"] == "KqlParameterItem/1.0"
    declared = {p["name"]: p for p in params["content"]["parameters"]}
    assert declared["TimeRange"]["type"] == 4 and declared["TimeRange"]["isRequired"]
    assert declared["UserId"]["type"] == 1 and declared["CorrelationId"]["type"] == 1
    assert all(p["version"] == "KqlParameterItem/1.0" and p["id"] for p in declared.values())
    queries = [item for item in wb["items"] if item["type"] == 3]
    assert len(queries) == len(QUERY_FILES)
    for item in queries:
        c = item["content"]
        assert c["version"] == "KqlItem/1.0" and c["query"].strip() and c["title"], item["name"]
        assert c["queryType"] == 0 and c["resourceType"] == "microsoft.insights/components", item["name"]
        assert isinstance(c["size"], int) and c["visualization"] in builder.VISUALIZATIONS, item["name"]
        assert c["timeContextFromParameter"] == "TimeRange", item["name"]
        used = set(re.findall(r"\{(\w+)(?::\w+)?\}", c["query"]))
        assert used <= set(declared), (item["name"], used)
        assert "// @" not in c["query"], "directives must not reach the workbook"
    for item in wb["items"]:
        if item["type"] == 1:
            assert item["content"]["json"].strip()


def test_every_query_file_is_one_workbook_item():
    wb = builder.build()
    by_name = {item["name"]: item for item in wb["items"] if item["type"] == 3}
    for path in QUERY_FILES:
        _directives, _description, query = builder.parse_kql(path)
        assert by_name[f"query - {path.stem}"]["content"]["query"] == query


def test_lookup_matches_the_user_id_as_stored():
    """In PII mode mask/strict the stored id is a keyed hash (HMAC) that KQL cannot compute: the lookup compares
    with the pasted id as is, and ``python -m tools.pii_id`` prints the stored form with the app's own code."""
    from shared.telemetry import Redactor, hash_id
    from tools import pii_id
    lookup = [p for p in QUERY_FILES if "lookup" in p.stem]
    assert len(lookup) >= 2
    for path in lookup:
        text = path.read_text(encoding="utf-8")
        assert "{UserId}" in text and "{CorrelationId}" in text
        assert "tostring(customDimensions.user_id) == user_param" in text and "hash_sha256" not in text
    key = "k" * 32
    assert Redactor("strict", key).id("customer_1042") == hash_id("customer_1042", key) == \
        pii_id.stored_id("customer_1042", {"TELEMETRY_PII_MODE": "strict", "TELEMETRY_PII_HASH_KEY": key})
    assert pii_id.stored_id("customer_1042", {"TELEMETRY_PII_MODE": "off"}) == "customer_1042"


def test_builder_rejects_files_without_description_or_directives(tmp_path):
    bad = tmp_path / "x.kql"
    bad.write_text("customEvents\n| take 1\n", encoding="utf-8")
    with pytest.raises(ValueError, match="comment line"):
        builder.parse_kql(bad)
    bad.write_text("// something\n// @panel: table\ncustomEvents\n", encoding="utf-8")
    with pytest.raises(ValueError, match="@title"):
        builder.parse_kql(bad)
    bad.write_text("// something\n// @title: T\n// @panel: donut\ncustomEvents\n", encoding="utf-8")
    with pytest.raises(ValueError, match="@panel"):
        builder.parse_kql(bad)


# ---------------------------------------------------------------------------------------------- 4. sanity
@pytest.mark.parametrize("path", QUERY_FILES, ids=lambda p: p.name)
def test_query_file_is_sane(path):
    text = path.read_text(encoding="utf-8")
    assert sanity_problems(text) == []
    builder.parse_kql(path)  # directives valid


@pytest.mark.parametrize("kql, fragment", [
    ('// x\ncustomEvents\n| where (name == "ReplySent"\n', "unclosed '('"),
    ('// x\ncustomEvents\n| where name == "ReplySent)\n', "unterminated string"),
    ('// x\ncustomEvents\n| where name == "ReplySent")\n', "unbalanced ')'"),
    ('// x\ncustomEvents\n|\twhere name == "ReplySent"\n', "tab"),
    ('// x\n| where name == "ReplySent"\n', "first statement"),
    ('customEvents\n| take 1\n', "comment line"),
])
def test_sanity_check_catches_broken_kql(kql, fragment):
    assert any(fragment in p for p in sanity_problems(kql)), sanity_problems(kql)


# ---------------------------------------------------------------------------------------------- 5. Kusto.Language
KQL_DIR = OPS / "kql"
KQL_CHECK = KQL_DIR / "check_kql.js"
KUSTO_PACKAGE = "@kusto/language-service-next"


def run_kusto_check(*paths: Path) -> dict:
    """The JSON report of ``node ops/kql/check_kql.js --json PATHS`` (exit 0: no errors, 1: errors)."""
    node = shutil.which("node")
    if node is None or not (KQL_DIR / "node_modules" / KUSTO_PACKAGE / "package.json").exists():
        pytest.fail("the Kusto check needs node and ops/kql/node_modules: run `make install` "
                    "(npm ci --prefix ops/kql)")
    proc = subprocess.run([node, str(KQL_CHECK), "--json", *map(str, paths)], capture_output=True, text=True,
                          timeout=300, cwd=ROOT)
    assert proc.returncode in (0, 1), f"check_kql.js failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}"
    report = json.loads(proc.stdout)
    assert proc.returncode == (1 if report["errors"] else 0), report
    return report


def kusto_errors(report: dict, source: str | None = None, item: str | None = None) -> list[dict]:
    return [d for d in report["diagnostics"] if d["severity"] == "Error"
            and (source is None or d["source"] == source) and (item is None or d["item"] == item)]


def describe(diagnostics: list[dict]) -> str:
    """One block per diagnostic: file (and workbook item), line:column, code, message, the line and a caret."""
    out = []
    for d in diagnostics:
        where = d["source"] + (f" [{d['item']}, {d['parameters'] or 'no'} parameters]" if d["item"] else "")
        out.append(f"{where}:{d['line']}:{d['column']}: {d['severity']} {d['code']}: {d['message']} "
                   f"(schema: {', '.join(d['schemas'])})\n    {d['lineText']}\n    {' ' * (d['column'] - 1)}^")
    return "\n".join(out)


@pytest.fixture(scope="module")
def generated_workbook(tmp_path_factory) -> Path:
    """What ``ops/build_workbook.py`` produces (``ops/workbook.json`` must equal it: see section 3)."""
    path = tmp_path_factory.mktemp("workbook") / "workbook.json"
    path.write_text(builder.render(builder.build()), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def kusto_report(generated_workbook) -> dict:
    """One run of Kusto.Language over every ``.kql`` file and every query of the generated workbook."""
    report = run_kusto_check(*QUERY_FILES, generated_workbook)
    report["workbook_source"] = next(c["source"] for c in report["checked"] if c["item"])
    return report


WORKBOOK_ITEMS = [f"query - {p.stem}" for p in QUERY_FILES]


@pytest.mark.parametrize("path", QUERY_FILES, ids=lambda p: p.name)
def test_kusto_accepts_query_file(kusto_report, path):
    errors = kusto_errors(kusto_report, source=str(path.relative_to(ROOT)))
    assert not errors, "Kusto.Language reports errors:\n" + describe(errors)


@pytest.mark.parametrize("item", WORKBOOK_ITEMS)
def test_kusto_accepts_workbook_query(kusto_report, item):
    errors = kusto_errors(kusto_report, source=kusto_report["workbook_source"], item=item)
    assert not errors, f"Kusto.Language reports errors in the workbook query {item!r}:\n" + describe(errors)


def test_kusto_check_covers_every_query_and_parameter_set(kusto_report):
    assert kusto_report["package"] == KUSTO_PACKAGE and kusto_report["schemas"] == ["legacy", "workspace"]
    checked = kusto_report["checked"]
    assert {c["source"] for c in checked if not c["item"]} == {str(p.relative_to(ROOT)) for p in QUERY_FILES}
    items = [c for c in checked if c["item"]]
    assert {c["item"] for c in items} == set(WORKBOOK_ITEMS)
    with_params = {c["item"] for c in items if c["parameters"]}
    assert {c["item"] for c in items if c["parameters"] == "sample"} == with_params
    assert with_params == {item["name"] for item in builder.build()["items"]
                           if item["type"] == 3 and re.search(r"\{\w+(:\w+)?\}", item["content"]["query"])}
    assert len(with_params) >= 2  # the lookup panels use {UserId} / {CorrelationId}


def test_kusto_package_version_is_pinned(kusto_report):
    manifest = json.loads((KQL_DIR / "package.json").read_text(encoding="utf-8"))
    lock = json.loads((KQL_DIR / "package-lock.json").read_text(encoding="utf-8"))
    spec = manifest["dependencies"][KUSTO_PACKAGE]
    assert re.fullmatch(r"\d+\.\d+\.\d+", spec), f"not an exact version: {spec}"
    locked = lock["packages"][f"node_modules/{KUSTO_PACKAGE}"]
    assert locked["version"] == spec == kusto_report["version"] and locked["integrity"].startswith("sha512-")


def test_kusto_schema_has_the_columns_the_queries_rely_on():
    schema = json.loads((KQL_DIR / "appinsights_schema.json").read_text(encoding="utf-8"))
    assert set(schema["tables"]) == set(TABLES)

    def columns(table: str) -> dict:
        return {**schema["common"], **schema["tables"][table]}

    for table in TABLES:
        cols = columns(table)
        assert {"timestamp": "datetime", "customDimensions": "dynamic", "operation_Id": "string",
                "operation_ParentId": "string", "cloud_RoleName": "string", "cloud_RoleInstance": "string",
                "itemType": "string", "appName": "string"}.items() <= cols.items(), table
        if table != "customMetrics":
            assert cols["itemCount"] == "int" and cols["customMeasurements"] == "dynamic", table
    for table in ("requests", "dependencies"):
        cols = columns(table)
        assert cols["duration"] == "real" and cols["resultCode"] == "string" and cols["id"] == "string"
        assert cols["success"] == {"legacy": "string", "workspace": "bool"}
    assert {"target": "string", "type": "string", "data": "string"}.items() <= columns("dependencies").items()
    assert {"valueCount": "int", "valueSum": "real", "valueMin": "real", "valueMax": "real"}.items() \
        <= columns("customMetrics").items()
    assert "itemCount" not in columns("customMetrics") and "customMeasurements" not in columns("customMetrics")
    assert {"severityLevel": "int", "message": "string"}.items() <= columns("traces").items()
    assert {"severityLevel": "int", "type": "string", "outerMessage": "string", "problemId": "string"}.items() \
        <= columns("exceptions").items()


# Bad queries: (file name, text, [(line, column, code, message fragment, schemas)]).
BAD_KQL = [
    ("syntax_error.kql",
     '// unclosed bin(\ncustomEvents\n| where name == "ReplySent"\n| summarize count() by bin(timestamp, 1m\n',
     [(4, 41, "KS005", "Expected: )", ["legacy", "workspace"])]),
    ("unknown_column.kql",
     "// workspace-based column name on a classic table\nrequests\n| where DurationMs > 100\n",
     [(3, 9, "KS142", "'DurationMs' does not refer to any known column", ["legacy", "workspace"])]),
    ("unknown_table.kql",
     "// workspace-based table name\nAppRequests\n| take 1\n",
     [(2, 1, "KS204", "'AppRequests' does not refer to any known table", ["legacy", "workspace"])]),
    ("type_error.kql",
     '// a real compared with a string\nrequests\n| summarize p95 = percentile(duration, 95) by name\n'
     '| where p95 > "1000"\n',
     [(4, 13, "KS106", "operator '>' is not defined for the operand types real and string", ["legacy", "workspace"])]),
    ("legacy_success_is_a_string.kql",
     "// success used as a bool: fine on the workspace-based table, a string in the classic one\nrequests\n"
     "| summarize failed = countif(not(success))\n",
     [(3, 34, "KS107", "A value of type bool expected", ["legacy"])]),
    ("metric_value_was_removed.kql",
     "// customMetrics.value is gone in the workspace-based table\ncustomMetrics\n| summarize total = sum(value)\n",
     [(3, 25, "KS142", "'value' does not refer to any known column", ["workspace"])]),
]


@pytest.fixture(scope="module")
def bad_kusto_report(tmp_path_factory) -> dict:
    folder = tmp_path_factory.mktemp("bad_kql")
    paths = []
    for name, text, _expected in BAD_KQL:
        (folder / name).write_text(text, encoding="utf-8")
        paths.append(folder / name)
    workbook = {"version": "Notebook/1.0", "fallbackResourceIds": [], "items": [
        builder.parameters_item(),
        *({"type": 3, "name": name, "content": {"version": "KqlItem/1.0", "queryType": 0, "query": query}}
          for name, query in WORKBOOK_CASES.items()),
    ]}
    (folder / "workbook.json").write_text(json.dumps(workbook), encoding="utf-8")
    return run_kusto_check(*paths, folder / "workbook.json")


@pytest.mark.parametrize("name, text, expected", BAD_KQL, ids=[case[0] for case in BAD_KQL])
def test_kusto_check_reports_errors_with_position(bad_kusto_report, name, text, expected):
    got = [d for d in kusto_errors(bad_kusto_report) if d["source"].endswith(f"/{name}")]
    assert len(got) == len(expected), describe(got)
    for d, (line, column, code, fragment, schemas) in zip(got, expected, strict=True):
        assert (d["line"], d["column"], d["code"], sorted(d["schemas"])) == (line, column, code, schemas), describe([d])
        assert fragment in d["message"], describe([d])
        assert text.split("\n")[line - 1] == d["lineText"]
    assert "Error" in describe(got) and f"{name}:{expected[0][0]}:{expected[0][1]}:" in describe(got)


# Workbook queries: how parameters are substituted (parameters_item(): TimeRange, UserId, CorrelationId).
WORKBOOK_CASES = {
    "time range forms": (
        "requests\n| where timestamp {TimeRange}\n"
        "| make-series n = count() default = 0 on timestamp from {TimeRange:start} to {TimeRange:end} "
        "step {TimeRange:grain}\n"),
    "text parameter inside a string": 'requests\n| where tostring(customDimensions.user_id) == trim(" ", "{UserId}")\n',
    "text parameter outside a string": "requests\n| where user_Id == {UserId}\n",
    "undeclared parameter": "requests\n| where timestamp {Range}\n",
}


def test_kusto_check_substitutes_workbook_parameters(bad_kusto_report):
    by_item: dict[str, list[dict]] = {}
    for d in kusto_errors(bad_kusto_report):
        if d["item"]:
            by_item.setdefault(d["item"], []).append(d)
    checked = {(c["item"], c["parameters"]) for c in bad_kusto_report["checked"] if c["item"]}
    assert ("time range forms", "default") in checked and ("time range forms", "sample") in checked
    assert "time range forms" not in by_item, describe(by_item["time range forms"])
    assert "text parameter inside a string" not in by_item, describe(by_item["text parameter inside a string"])
    # with its saved value "" the workbook runs `where user_Id ==`: a syntax error; with a value, an unknown name
    outside = {(d["parameters"], d["code"]) for d in by_item["text parameter outside a string"]}
    assert ("default", "KS006") in outside and ("sample", "KS142") in outside, outside
    # workbooks leave an undeclared {Range} as it is, and Kusto cannot parse it
    assert by_item["undeclared parameter"] and all(d["line"] == 2 for d in by_item["undeclared parameter"])
