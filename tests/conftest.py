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


@pytest.fixture(scope="session")
def local_stack(stack_logs):
    """The project's local stack from its one builder (tools.gateway_stack), every service on a free port, without
    a functions runner (the gateway fixtures start their own)."""
    from tools.gateway_stack import StackOptions, build_stack
    stack = build_stack(StackOptions(free_ports=True, log_dir=stack_logs, app_root=None)).start()
    yield stack
    stack.stop()


@pytest.fixture(scope="session")
def azurite(local_stack):
    return local_stack["azurite"]


@pytest.fixture(scope="session")
def azurite_blob(local_stack):
    return local_stack["azurite_blob"]


@pytest.fixture(scope="session")
def cosmos(local_stack):
    return local_stack["cosmos"]


@pytest.fixture(scope="session")
def sendbird_standin(local_stack):
    return local_stack["sendbird"]


@pytest.fixture(scope="session")
def intent_service(local_stack):
    return local_stack["intent"]


@pytest.fixture(scope="session")
def stack_settings(local_stack) -> dict[str, str]:
    """App settings pointing at the session's services (what the functions runner gets)."""
    from tools.gateway_stack import gateway_env
    return gateway_env(local_stack)


@pytest.fixture(scope="session")
def gateway(stack_settings, stack_logs):
    """The real function_app.py hosted by the local functions runner, wired to the session's services."""
    from devstack.stack import FunctionsRunner
    svc = FunctionsRunner(ROOT, 0, {**stack_settings, "COSMOS_DATABASE": "e2e"}, log_dir=stack_logs).start()
    yield svc
    svc.stop()
