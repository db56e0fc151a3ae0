"""Shared fixtures: settings from local.settings.sample.json, SendBird sample payloads, fakes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from shared.catalog import ResponseCatalog
from shared.settings import Settings, load_settings
from tests.fakes import FakeSendBird, InMemoryStateStore, RecordingQueueSender, ScriptedIntentClient

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = Path(__file__).resolve().parent / "fixtures" / "sendbird"
#: The API token the sample payloads were signed with (fixtures/sendbird/README.md).
SAMPLE_TOKEN = "0123456789abcdef0123456789abcdef01234567"


def sample_values() -> dict[str, str]:
    return json.loads((ROOT / "local.settings.sample.json").read_text(encoding="utf-8"))["Values"]


@pytest.fixture
def settings() -> Settings:
    return load_settings(sample_values()).settings


def payload(name: str) -> bytes:
    """Exact bytes of a sample webhook file (the signatures in the README cover these bytes)."""
    return (FIXTURES / name).read_bytes()


@pytest.fixture
def catalog() -> ResponseCatalog:
    return ResponseCatalog.load()


@pytest.fixture
def store() -> InMemoryStateStore:
    return InMemoryStateStore()


@pytest.fixture
def queues() -> RecordingQueueSender:
    return RecordingQueueSender()


@pytest.fixture
def intent() -> ScriptedIntentClient:
    return ScriptedIntentClient()


@pytest.fixture
def sendbird() -> FakeSendBird:
    return FakeSendBird()
