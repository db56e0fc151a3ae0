"""Fixtures for the devstack tests (run from the repo root: python -m pytest devstack/tests -q)."""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:  # --import-mode=importlib does not add it
    sys.path.insert(0, str(REPO_ROOT))

from devstack.stack import CosmosStandIn, ensure_node_modules  # noqa: E402
from devstack.sendbird_standin import SendBirdStandInServer  # noqa: E402

API_TOKEN = "test-api-token"
BOT = "ssg_bot"


@pytest.fixture(scope="session")
def log_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("devstack-logs")


@pytest.fixture(scope="session")
def node_modules():
    return ensure_node_modules()


@pytest.fixture(scope="session")
def cosmos_standin(node_modules, log_dir):
    with CosmosStandIn(0, log_dir=log_dir) as svc:
        yield svc


@pytest.fixture(scope="session")
def cosmos_client(cosmos_standin):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        client = cosmos_standin.client()
    return client


@pytest.fixture
def sendbird():
    with SendBirdStandInServer(port=0, api_token=API_TOKEN, bot_user_id=BOT) as server:
        yield server


@pytest.fixture
def send(sendbird):
    """POST to the stand-in's send endpoint over one keep-alive session."""
    import requests

    session = requests.Session()

    def _send(body, token=API_TOKEN, bot=BOT, **kwargs):
        headers = {"Content-Type": "application/json; charset=utf8"}
        if token is not None:
            headers["Api-Token"] = token
        return session.post(f"{sendbird.base_url}/v3/bots/{bot}/send", json=body, headers=headers, **kwargs)

    yield _send
    session.close()


def pytest_configure(config):
    # The stand-in uses a self-signed certificate; the SDK is told not to verify it.
    config.addinivalue_line("filterwarnings", "ignore::urllib3.exceptions.InsecureRequestWarning")
