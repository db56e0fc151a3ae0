"""The service's uvicorn protocol turns Nagle's algorithm off on every TCP connection, also when
uvicorn bound the listening socket itself (``--workers N``; see ``http_protocol.py``)."""
from __future__ import annotations

import asyncio
import socket

import pytest
from uvicorn.config import Config
from uvicorn.server import ServerState

from intent_service.http_protocol import NoDelayH11Protocol


async def _app(scope, receive, send):  # pragma: no cover - never called
    raise AssertionError


class _Transport(asyncio.Transport):
    def __init__(self, sock: socket.socket):
        super().__init__()
        self._sock = sock

    def get_extra_info(self, name, default=None):
        return {"socket": self._sock, "peername": ("127.0.0.1", 1),
                "sockname": ("127.0.0.1", 2)}.get(name, default)

    def close(self):
        pass


def _accepted_like_uvicorn_workers():
    """A connected pair whose server side has ``proto`` 0, as with uvicorn's own bound socket."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)  # proto 0, like bind_socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    client = socket.create_connection(listener.getsockname())
    server_side, _ = listener.accept()
    listener.close()
    return client, server_side


@pytest.mark.parametrize("protocol_class", [NoDelayH11Protocol])
def test_connections_get_tcp_nodelay(protocol_class):
    """Fails with uvicorn's own ``H11Protocol`` (the socket keeps ``TCP_NODELAY`` 0)."""
    client, server_side = _accepted_like_uvicorn_workers()
    try:
        assert server_side.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 0  # the bug's premise
        config = Config(app=_app, log_level="warning")
        config.load()
        loop = asyncio.new_event_loop()
        try:
            proto = protocol_class(config=config, server_state=ServerState(), app_state={},
                                   _loop=loop)
            proto.connection_made(_Transport(server_side))
            assert server_side.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
            proto.connection_lost(None)
        finally:
            loop.close()
    finally:
        client.close()
        server_side.close()


def test_serve_runs_uvicorn_with_the_protocol(monkeypatch, retail_model_path):
    import uvicorn

    from intent_service import cli

    seen = {}
    monkeypatch.setattr(uvicorn, "run", lambda *a, **kw: seen.update(kw))
    for name in ("INTENT_MODEL", "INTENT_MODEL_MAX_BYTES", "INTENT_API_KEY", "INTENT_MODEL_SHA256"):
        monkeypatch.setenv(name, "")  # restored (removed) after the test: cmd_serve writes them
        monkeypatch.delenv(name)
    assert cli.main(["serve", "--model", str(retail_model_path), "--workers", "2"]) == 0
    config = Config(app=_app, http=seen["http"], workers=seen["workers"])
    config.load()
    assert config.http_protocol_class is NoDelayH11Protocol and seen["workers"] == 2
