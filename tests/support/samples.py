"""Sample data for tests: the app settings of ``local.settings.sample.json`` and the SendBird webhook samples."""

from __future__ import annotations

import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures" / "sendbird"
#: The API token the sample payloads were signed with (fixtures/sendbird/README.md).
SAMPLE_TOKEN = "0123456789abcdef0123456789abcdef01234567"
#: A clock (epoch ms) for the sample payloads: one second after their ``payload.created_at``, so the
#: intake's replay window accepts them.
SAMPLE_NOW_MS = 1763600000123 + 1000


def sample_values() -> dict[str, str]:
    return json.loads((ROOT / "local.settings.sample.json").read_text(encoding="utf-8"))["Values"]


def payload(name: str) -> bytes:
    """Exact bytes of a sample webhook file (the signatures in the README cover these bytes)."""
    return (FIXTURES / name).read_bytes()
