"""Fixtures of the console's tests: a real intent service with its CLU authoring API (the retail project trained
and deployed to production once per session), the console app on in-memory fakes of the gateway's stores, and
signed-in HTTP clients (Starlette's TestClient) per role."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from starlette.testclient import TestClient

from console.app import Console, create_app
from console.clu import AuthoringClient
from console.settings import load_console_settings
from shared.bootstrap import AdminServices
from shared.settings import load_settings
from tests.support.fakes import (InMemoryAuditLog, InMemoryBlobs, InMemoryCatalogStore, InMemoryReviewStore,
                                 InMemoryStateStore, RecordingQueueSender)
from tests.support.samples import sample_values

PASSWORDS = {"editor": "editor-password-1", "operator": "operator-password-1", "lead": "lead-password-123",
             "viewer-less": "nobody-password-1"}
USERS = "editor:editor:editor-password-1,operator:operator:operator-password-1,lead:editor+operator:lead-password-123"


@pytest.fixture(scope="session")
def authoring_service(tmp_path_factory) -> Iterator[object]:
    """The intent service with its authoring API, the retail project imported, trained and deployed."""
    from tools.gateway_stack import AuthoringIntentService, ensure_retail_model
    svc = AuthoringIntentService(ensure_retail_model(), 0, log_dir=tmp_path_factory.mktemp("console-logs"))
    svc.start()
    yield svc
    svc.stop()


@dataclass
class World:
    console: Console
    admin: AdminServices
    client_for: object

    @property
    def review(self) -> InMemoryReviewStore:
        return self.admin.review_store  # type: ignore[return-value]


def make_admin(**values: str) -> AdminServices:
    config = load_settings({**sample_values(), **values})
    state = InMemoryStateStore()
    return AdminServices(config=config, queues=RecordingQueueSender(), state_store=state, state_admin=state,
                         review_store=InMemoryReviewStore(), catalog_store=InMemoryCatalogStore(),
                         audit=InMemoryAuditLog(), blobs=InMemoryBlobs())


def make_console(endpoint: str, key: str, admin: AdminServices, **env: str) -> Console:
    settings = load_console_settings({"CONSOLE_SECRET": "s" * 40, "CONSOLE_LOCAL_USERS": USERS,
                                      "CONSOLE_SECURE_COOKIES": "false", "CONSOLE_AUTHORING_ENDPOINT": endpoint,
                                      "CONSOLE_AUTHORING_KEY": key, "CONSOLE_JOB_TIMEOUT_SECONDS": "120", **env},
                                     project_name="retail-bot", production_deployment="production")
    client = AuthoringClient(settings.authoring_base, settings.authoring_key, settings.project_name,
                             job_timeout=settings.job_timeout_seconds)
    return Console(settings, admin, client)


def sign_in(client: TestClient, user: str, password: str | None = None) -> TestClient:
    page = client.get("/signin")
    token = re.search(r'name="csrf-token" content="([^"]+)"', page.text)[1]
    resp = client.post("/signin", json={"username": user, "password": password or PASSWORDS[user],
                                        "csrf_token": token}, headers={"Accept": "application/json"})
    assert resp.status_code == 200, resp.text
    client.headers["X-CSRF-Token"] = resp.json()["csrf_token"]
    client.headers["Accept"] = "application/json"
    return client


@pytest.fixture
def world(authoring_service) -> World:
    from tools.gateway_stack import CONSOLE_AUTHORING_KEY
    admin = make_admin()
    console = make_console(authoring_service.base_url, CONSOLE_AUTHORING_KEY, admin)
    app = create_app(console)

    def client_for(user: str | None = None) -> TestClient:
        c = TestClient(app, base_url="http://console.test")
        return sign_in(c, user) if user else c
    return World(console, admin, client_for)


@pytest.fixture
def editor(world) -> TestClient:
    return world.client_for("editor")


@pytest.fixture
def operator(world) -> TestClient:
    return world.client_for("operator")


@pytest.fixture
def lead(world) -> TestClient:
    return world.client_for("lead")
