"""Print a user or channel id as telemetry stores it (for the workbook's lookup by user id).

    python -m tools.pii_id customer_1042 [--settings local.settings.json]

With ``TELEMETRY_PII_MODE`` ``mask``/``strict`` the stored form is the keyed hash of ``shared.telemetry.hash_id``
(HMAC-SHA256 with ``TELEMETRY_PII_HASH_KEY``, 16 hex digits); with ``off`` it is the id itself. Settings come
from the environment, else from the settings file, as the app reads them.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Mapping
from pathlib import Path

from shared.settings import APP_ROOT
from shared.telemetry import Redactor


def stored_id(raw: str, values: Mapping[str, str]) -> str:
    """``raw`` as telemetry stores it under the PII mode and hash key in ``values`` (app settings)."""
    lowered = {k.lower(): v for k, v in values.items()}
    mode = lowered.get("telemetry_pii_mode", "off")
    if mode not in ("off", "mask", "strict"):
        raise ValueError(f"TELEMETRY_PII_MODE must be off, mask or strict, not {mode!r}")
    key = lowered.get("telemetry_pii_hash_key", "")
    if mode != "off" and not key:
        raise ValueError("TELEMETRY_PII_HASH_KEY is not set: the stored id cannot be computed without the app's key")
    return Redactor(mode, key).id(raw)  # type: ignore[arg-type]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.pii_id", description=__doc__.split("\n")[0])
    parser.add_argument("id", nargs="+", help="raw SendBird user id(s) or channel URL(s)")
    parser.add_argument("--settings", type=Path, default=APP_ROOT / "local.settings.json")
    args = parser.parse_args(argv)
    values = dict(os.environ)
    if args.settings.exists():
        values = {**json.loads(args.settings.read_text(encoding="utf-8")).get("Values", {}), **values}
    try:
        for raw in args.id:
            print(stored_id(raw, values))
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
