#!/usr/bin/env python3
"""Check that App Service resolved every Key Vault reference of a site or slot (standard library + `az`).

App Service hands an app setting whose ``@Microsoft.KeyVault(...)`` reference it cannot resolve (no role on the
secret, wrong name, deleted secret) to the app as that literal text. The function app refuses to start on such a
value, but the reason only shows in the app's logs. This check asks the platform instead, before a slot is
smoke-tested or swapped:

    GET {site or slot id}/config/configreferences/appsettings   (az rest, ARM endpoint of the current cloud)

Every reference must report ``status: Resolved``; each ``--expect NAME`` must be among them (so a setting that
silently stopped being a reference is noticed too). ``Initialized`` and transient errors are retried until
``--deadline``, since role assignments and a restarted slot take a while.

    python infra/scripts/check_key_vault_refs.py \\
        --resource-id "$(az functionapp show -g <rg> -n <app> --slot staging --query id -o tsv)" \\
        --expect SENDBIRD_API_TOKEN --expect INTENT_API_KEY --deadline 300

Exit status 0 when every reference resolved, 1 otherwise (the unresolved settings and their status on stderr),
2 on bad arguments.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from typing import Callable, Iterable

API_VERSION = "2023-12-01"
RESOLVED = "Resolved"


def statuses(payload: dict) -> dict[str, tuple[str, str]]:
    """{setting name: (status, details)} from a ``configreferences/appsettings`` answer."""
    out = {}
    for item in payload.get("value") or []:
        name = str(item.get("name") or item.get("id") or "").rsplit("/", 1)[-1]
        props = item.get("properties") or {}
        if not any(props.get(k) for k in ("reference", "vaultName", "secretName", "status")):
            continue  # not a reference (should the API ever list plain settings)
        out[name] = (str(props.get("status") or "Unknown"), str(props.get("details") or ""))
    return out


def unresolved(payload: dict, expect: Iterable[str] = ()) -> list[str]:
    """One line per reference that is not resolved, and per expected setting that is not a reference at all."""
    found = statuses(payload)
    problems = [f"{name}: {status}" + (f" ({details})" if details else "")
                for name, (status, details) in sorted(found.items()) if status != RESOLVED]
    problems += [f"{name}: not a Key Vault reference of this slot" for name in expect if name not in found]
    return problems


def az_fetch(resource_id: str) -> dict:
    url = f"{resource_id.rstrip('/')}/config/configreferences/appsettings?api-version={API_VERSION}"
    out = subprocess.run(["az", "rest", "--method", "get", "--url", url, "--output", "json"],
                         capture_output=True, text=True, timeout=120)
    if out.returncode != 0:
        raise RuntimeError(out.stderr.strip() or f"az rest exited with {out.returncode}")
    return json.loads(out.stdout or "{}")


def run(fetch: Callable[[], dict], expect: Iterable[str] = (), deadline_s: float = 300.0,
        interval: float = 10.0) -> list[str]:
    """Poll ``fetch`` until every reference resolved (returns []) or the deadline passed (returns the problems)."""
    expect = list(expect)
    end = time.monotonic() + deadline_s
    while True:
        try:
            problems = unresolved(fetch(), expect)
        except (RuntimeError, ValueError, OSError, subprocess.TimeoutExpired) as exc:
            problems = [f"cannot read the Key Vault reference status: {exc}"]
        if not problems or time.monotonic() >= end:
            return problems
        time.sleep(interval)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--resource-id", required=True, help="resource id of the site or slot (az ... show --query id)")
    ap.add_argument("--expect", action="append", default=[], metavar="NAME",
                    help="an app setting that must be a resolved Key Vault reference (repeatable)")
    ap.add_argument("--deadline", type=float, default=300.0, help="seconds to keep retrying")
    ap.add_argument("--interval", type=float, default=10.0)
    args = ap.parse_args(argv)
    if not args.resource_id.startswith("/subscriptions/"):
        print(f"--resource-id must be an ARM id (/subscriptions/...), got {args.resource_id!r}", file=sys.stderr)
        return 2
    problems = run(lambda: az_fetch(args.resource_id), args.expect, args.deadline, args.interval)
    for line in problems:
        print(f"unresolved Key Vault reference: {line}", file=sys.stderr)
    if not problems:
        print(f"every Key Vault reference resolved ({', '.join(args.expect) or 'no names expected'})")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
