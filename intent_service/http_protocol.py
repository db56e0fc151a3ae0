"""uvicorn's h11 protocol with ``TCP_NODELAY`` on every accepted connection.

With ``--workers N`` (N > 1) uvicorn binds the listening socket itself with ``proto`` 0
(``Config.bind_socket``); accepted sockets inherit it, and asyncio enables ``TCP_NODELAY`` only on
sockets that report ``IPPROTO_TCP``. Nagle's algorithm then holds a response's second segment until
the client's delayed ACK: every keep-alive request after the first cost about 43 ms more (measured
here: sequential p50 48 ms with 2 workers against 2.7 ms with 1). Upstream:
https://github.com/Kludex/uvicorn/issues/3149 (open on uvicorn 0.54.0). ``cli.cmd_serve`` passes
this class as uvicorn's ``http`` implementation, for any worker count; remove it once uvicorn sets
the option itself.
"""
from __future__ import annotations

import asyncio
import socket

from uvicorn.protocols.http.h11_impl import H11Protocol


class NoDelayH11Protocol(H11Protocol):
    """``H11Protocol`` that sets ``TCP_NODELAY`` on TCP connections before serving them."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:  # a closed or non-TCP socket: serve it as uvicorn would
                pass
        super().connection_made(transport)
