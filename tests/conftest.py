"""Shared fixtures: settings from local.settings.sample.json, SendBird sample payloads, fakes."""

from __future__ import annotations


import pytest

from shared.catalog import ResponseCatalog
from shared.settings import AppConfig, Settings, load_settings
from tests.support.chain import Chain, fake_services
from tests.support.samples import ROOT, sample_values
from tests.support.fakes import FakeSendBird, InMemoryStateStore, RecordingQueueSender, ScriptedIntentClient

@pytest.fixture
def config() -> AppConfig:
    return load_settings(sample_values())


@pytest.fixture
def settings(config) -> Settings:
    return config.settings


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


@pytest.fixture
def services(config, store, queues, intent, sendbird, catalog):
    """The composition root with every external system faked (the fakes of the fixtures above)."""
    return fake_services(config, state_store=store, queues=queues, intent=intent, sendbird=sendbird, catalog=catalog)


@pytest.fixture
def chain(services) -> Chain:
    """Moves messages through intent stage -> branch handler -> reply sender on :func:`services`."""
    return Chain(services)


# --------------------------------------------------------------------------- local stack services
# Started once per test session on free loopback ports, stopped at the end. Each is started only
# when a test asks for it, so the unit tests need none of them.
@pytest.fixture(scope="session")
def stack_logs(tmp_path_factory):
    return tmp_path_factory.mktemp("stack-logs")


def _start(service):
    service.start()
    return service


@pytest.fixture(scope="session")
def azurite(stack_logs):
    from devstack.stack import Azurite
    svc = _start(Azurite(0, log_dir=stack_logs))
    yield svc
    svc.stop()


@pytest.fixture(scope="session")
def cosmos(stack_logs):
    from devstack.stack import CosmosStandIn
    svc = _start(CosmosStandIn(0, log_dir=stack_logs))
    yield svc
    svc.stop()


@pytest.fixture(scope="session")
def sendbird_standin(stack_logs):
    from devstack.stack import SendBirdStandIn
    from tools.gateway_stack import BOT_USER_ID, LOCAL_API_TOKEN
    svc = _start(SendBirdStandIn(0, LOCAL_API_TOKEN, BOT_USER_ID, log_dir=stack_logs))
    yield svc
    svc.stop()


@pytest.fixture(scope="session")
def intent_service(stack_logs):
    from devstack.stack import IntentService
    from tools.gateway_stack import ensure_retail_model
    svc = _start(IntentService(ensure_retail_model(), 0, log_dir=stack_logs))
    yield svc
    svc.stop()


@pytest.fixture(scope="session")
def stack_settings(azurite, cosmos, sendbird_standin, intent_service) -> dict[str, str]:
    """App settings pointing at the session's services (what the functions runner gets)."""
    from tools.gateway_stack import LOCAL_API_TOKEN
    values = sample_values()
    values.update({
        "AzureWebJobsStorage": azurite.connection_string, "COSMOS_ENDPOINT": cosmos.endpoint,
        "SENDBIRD_API_BASE_URL": sendbird_standin.base_url, "SENDBIRD_API_TOKEN": LOCAL_API_TOKEN,
        "INTENT_ENDPOINT": intent_service.base_url,
    })
    return values


@pytest.fixture(scope="session")
def gateway(stack_settings, stack_logs):
    """The real function_app.py hosted by the local functions runner, wired to the session's services."""
    from devstack.stack import FunctionsRunner
    svc = _start(FunctionsRunner(ROOT, 0, {**stack_settings, "COSMOS_DATABASE": "e2e"}, log_dir=stack_logs))
    yield svc
    svc.stop()
