"""What the Functions host does to a ``str`` written to a queue output binding.

The Python worker hands a ``str`` output value to the host as a string. The host
(azure-functions-host ``src/WebJobs.Script/Binding/FunctionBinding.cs``,
``ReadAsEnumerable``) checks it with ``Utility.IsJson`` (after trimming, it starts
with ``{`` and ends with ``}``, or starts with ``[`` and ends with ``]``). If so it
parses it with Newtonsoft ``JToken.Parse`` and sends ``ToString()`` of each item:

* an object: one message, the object re-serialized *indented* (2 spaces);
* an array: one message **per element**; an object/array element is indented
  JSON, a string element is the bare string (no quotes), a number its text,
  ``true``/``false`` become ``True``/``False`` and ``null`` an empty message;
  ``[]`` sends nothing;
* text that does not parse (or has more content after the first value, e.g. JSON
  lines) raises, which fails the invocation after the function returned.

Newtonsoft's reader also turns ISO-8601 date strings (``yyyy-MM-ddTHH:mm:ss``,
1-7 fraction digits, optional ``Z`` / offset) into ``DateTime`` values, which
are written back normalized (trailing fraction zeros dropped, offsets converted
to the host's local time, UTC on Azure). That is reproduced too.

Not reproduced: Newtonsoft's lenient syntax (comments, single quotes, unquoted
property names, trailing commas) is refused here, so such a value fails locally
where the host would send it re-serialized. Numbers keep their value; their text
may differ from .NET's in the exponent form only.
"""
from __future__ import annotations

import datetime as _dt
import json
import math
import re
from decimal import Decimal
from typing import Any, List

#: Newtonsoft's JsonReader.MaxDepth default (13.x): deeper nesting fails to parse.
MAX_DEPTH = 64


class HostJsonError(ValueError):
    """The host would fail the invocation: the value looks like JSON but does not parse."""


def looks_like_json(text: str) -> bool:
    """The host's ``Utility.IsJson``: trimmed, ``{...}`` or ``[...]``."""
    if not text:
        return False
    t = text.strip()
    return (t.startswith("{") and t.endswith("}")) or (t.startswith("[") and t.endswith("]"))


# -- dates (Newtonsoft DateParseHandling.DateTime, the reader's default) -------------------

_ISO_RE = re.compile(
    r"^(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,7}))?"
    r"(?:([Zz])|([+-])(\d{2})(?::?(\d{2}))?)?$"
)


class _NetDate:
    """A string the host's reader turned into a DateTime."""

    __slots__ = ("value", "ticks", "kind")

    def __init__(self, value: _dt.datetime, ticks: int, kind: str):
        self.value = value  # naive, whole seconds
        self.ticks = ticks  # fraction of the second in 100 ns ticks (0..9999999), as DateTime holds it
        self.kind = kind  # "utc" | "local" | "unspecified"

    def iso(self) -> str:
        """How JsonTextWriter writes it (IsoDateFormat, RoundtripKind)."""
        text = self.value.strftime("%Y-%m-%dT%H:%M:%S")
        if self.ticks:
            text += "." + f"{self.ticks:07d}".rstrip("0")
        if self.kind == "utc":
            text += "Z"
        elif self.kind == "local":
            text += "+00:00"  # the host's local time zone: UTC on Azure
        return text

    def plain(self) -> str:
        """``JValue.ToString()`` of a DateTime under the invariant culture (Linux workers)."""
        return self.value.strftime("%m/%d/%Y %H:%M:%S")


def _as_date(s: str) -> Any:
    if not (19 <= len(s) <= 40) or not s[0].isdigit():
        return s
    m = _ISO_RE.match(s)
    if not m:
        return s
    year, month, day, hour, minute, second = (int(m.group(i)) for i in range(1, 7))
    ticks = int(((m.group(7) or "") + "0000000")[:7])
    try:
        value = _dt.datetime(year, month, day, hour, minute, second)
    except ValueError:  # month 13, February 30, hour 24 ...: not a date, stays a string
        return s
    if m.group(8):
        return _NetDate(value, ticks, "utc")
    if m.group(9):
        hours = int(m.group(10))
        minutes = int(m.group(11) or 0)
        offset = _dt.timedelta(hours=hours, minutes=minutes)
        try:
            utc = value - offset if m.group(9) == "+" else value + offset
        except OverflowError:
            return s
        return _NetDate(utc, ticks, "local")  # converted to local time (UTC on Azure)
    return _NetDate(value, ticks, "unspecified")


# -- parse --------------------------------------------------------------------------------

def _convert(node: Any, depth: int) -> Any:
    if isinstance(node, dict):
        if depth >= MAX_DEPTH:
            raise HostJsonError(f"The reader's MaxDepth of {MAX_DEPTH} has been exceeded.")
        return {k: _convert(v, depth + 1) for k, v in node.items()}
    if isinstance(node, list):
        if depth >= MAX_DEPTH:
            raise HostJsonError(f"The reader's MaxDepth of {MAX_DEPTH} has been exceeded.")
        return [_convert(v, depth + 1) for v in node]
    if isinstance(node, str):
        return _as_date(node)
    return node


def parse(text: str) -> Any:
    """Parse like ``JToken.Parse`` (within the limits in the module docstring)."""
    try:
        # strict=False: control characters inside strings are accepted, as by Newtonsoft;
        # duplicate names: the last value wins at the first name's position, as JObject does
        data = json.loads(text, strict=False)
    except ValueError as exc:
        raise HostJsonError(f"Newtonsoft.Json: {exc}") from None
    except RecursionError:
        raise HostJsonError(f"The reader's MaxDepth of {MAX_DEPTH} has been exceeded.") from None
    return _convert(data, 0)


# -- write (JToken.ToString(): Formatting.Indented, 2 spaces, "\n" on Linux) ----------------

_ESCAPES = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\t": "\\t", "\n": "\\n", "\f": "\\f", "\r": "\\r"}
_NEEDS_ESCAPE = re.compile('["\\\\\x00-\x1f\u0085\u2028\u2029]')


def _quote(s: str) -> str:
    def repl(m: "re.Match[str]") -> str:
        c = m.group(0)
        return _ESCAPES.get(c) or "\\u%04x" % ord(c)

    return '"' + _NEEDS_ESCAPE.sub(repl, s) + '"'


def _double_text(x: float) -> str:
    """.NET Core ``double.ToString("R")``: shortest round-trip digits, exponent form from 1E+15 / below 1E-05."""
    if x == 0:
        return "-0" if math.copysign(1.0, x) < 0 else "0"
    sign, digits, exp = Decimal(repr(x)).normalize().as_tuple()
    # a str exponent ('n', 'N', 'F') only for NaN/infinity, which the callers write themselves
    assert isinstance(exp, int), x
    ds = "".join(map(str, digits))
    point = len(ds) + exp  # position of the decimal point relative to the digit string
    sci = point - 1
    if sci >= 15 or sci < -5:
        mant = ds[0] + ("." + ds[1:] if len(ds) > 1 else "")
        text = f"{mant}E{'+' if sci >= 0 else '-'}{abs(sci):02d}"
    elif point <= 0:
        text = "0." + "0" * (-point) + ds
    elif point >= len(ds):
        text = ds + "0" * (point - len(ds))
    else:
        text = ds[:point] + "." + ds[point:]
    return ("-" if sign else "") + text


def _scalar_json(v: Any) -> str:
    if v is None:
        return "null"
    if v is True:
        return "true"
    if v is False:
        return "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if math.isnan(v):
            return '"NaN"'  # FloatFormatHandling.String, the writer's default
        if math.isinf(v):
            return '"Infinity"' if v > 0 else '"-Infinity"'
        text = _double_text(v)
        return text if any(c in text for c in ".E") else text + ".0"  # EnsureDecimalPlace
    if isinstance(v, _NetDate):
        return '"' + v.iso() + '"'
    return _quote(v)


def _write(v: Any, indent: int, out: List[str]) -> None:
    pad = "  " * indent
    if isinstance(v, dict):
        if not v:
            out.append("{}")
            return
        out.append("{\n")
        for i, (k, item) in enumerate(v.items()):
            out.append(pad + "  " + _quote(k) + ": ")
            _write(item, indent + 1, out)
            out.append(",\n" if i < len(v) - 1 else "\n")
        out.append(pad + "}")
    elif isinstance(v, list):
        if not v:
            out.append("[]")
            return
        out.append("[\n")
        for i, item in enumerate(v):
            out.append(pad + "  ")
            _write(item, indent + 1, out)
            out.append(",\n" if i < len(v) - 1 else "\n")
        out.append(pad + "]")
    else:
        out.append(_scalar_json(v))


def to_string(v: Any) -> str:
    """``JToken.ToString()``: what the host sends for one item."""
    if isinstance(v, (dict, list)):
        out: List[str] = []
        _write(v, 0, out)
        return "".join(out)
    # JValue.ToString(): the bare value, not JSON
    if v is None:
        return ""
    if v is True:
        return "True"
    if v is False:
        return "False"
    if isinstance(v, float):
        if math.isnan(v):
            return "NaN"
        if math.isinf(v):
            return "Infinity" if v > 0 else "-Infinity"
        return _double_text(v)
    if isinstance(v, _NetDate):
        return v.plain()
    return str(v)


def host_messages(text: str) -> List[str]:
    """The messages the host sends for a ``str`` queue output value ``text``.

    Raises :class:`HostJsonError` when the host would fail the invocation.
    """
    if not looks_like_json(text):
        return [text]
    token = parse(text)
    if isinstance(token, list):
        return [to_string(item) for item in token]
    return [to_string(token)]
