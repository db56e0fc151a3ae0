"""Composition root: the SDK clients and adapters, created once per worker process.

Trigger functions call these accessors on each invocation; the first call
builds the object (thread-safe), later calls return the same one, so TCP/TLS
connections are reused across invocations. Tests of the stages pass fakes
directly instead of using this module.
"""

from __future__ import annotations

import functools
import threading
from typing import Callable, TypeVar

from shared.catalog import ResponseCatalog
from shared.clients.cosmos import CosmosStateStore, connect
from shared.clients.intent import IntentClient
from shared.clients.queues import QueueSender
from shared.clients.sendbird import SendBirdClient
from shared.settings import AppConfig, Settings, get_config
from shared.telemetry import Telemetry, from_settings, set_current

T = TypeVar("T")


def _once(factory: Callable[[], T]) -> Callable[[], T]:
    lock = threading.Lock()
    cached: list[T] = []

    @functools.wraps(factory)
    def get() -> T:
        if not cached:
            with lock:
                if not cached:
                    cached.append(factory())
        return cached[0]

    return get


def config() -> AppConfig:
    return get_config()


def settings() -> Settings:
    return get_config().settings


@_once
def queues() -> QueueSender:
    cfg = get_config()
    s = cfg.settings
    return QueueSender(s.azure_webjobs_storage, cfg.host.message_encoding,
                       account_name=s.storage_account_name, client_id=s.storage_client_id)


@_once
def state_store() -> CosmosStateStore:
    return CosmosStateStore(connect(settings()))


@_once
def intent_client() -> IntentClient:
    return IntentClient(settings())


@_once
def sendbird() -> SendBirdClient:
    return SendBirdClient(settings())


@_once
def catalog() -> ResponseCatalog:
    return ResponseCatalog.load()


@_once
def telemetry() -> Telemetry:
    tel = from_settings(settings())
    set_current(tel)
    return tel
