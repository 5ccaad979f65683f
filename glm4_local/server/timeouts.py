"""Slow clients cannot hold the server's connections: a request's headers must arrive within the client
timeout of its first byte (or of the connection opening), and its body within the same time again
(the body's clock is in app.read_body)."""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.h11_impl import H11Protocol

from glm4_local.server.options import DEFAULT_CLIENT_TIMEOUT

MAX_CONNECTIONS = 256  # open connections and requests at once; past it uvicorn answers 503


class TimedH11Protocol(H11Protocol):
    """uvicorn's HTTP/1.1 protocol, closing a connection whose request headers are not complete in time
    (uvicorn itself only times out idle keep-alive connections)."""

    header_timeout = DEFAULT_CLIENT_TIMEOUT

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)
        self._header_timer: asyncio.TimerHandle | None = None
        self._arm()

    def _waiting_for_headers(self) -> bool:
        return self.cycle is None or self.cycle.response_complete

    def _arm(self) -> None:
        if self._header_timer is None:
            self._header_timer = self.loop.call_later(self.header_timeout, self._too_slow)

    def _disarm(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _too_slow(self) -> None:
        self._header_timer = None
        if self._waiting_for_headers() and not self.transport.is_closing():
            self.transport.close()

    def data_received(self, data: bytes) -> None:
        if self._waiting_for_headers():
            self._arm()  # a keep-alive connection's next request starts its own clock
        super().data_received(data)
        if not self._waiting_for_headers():
            self._disarm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)


def timed_protocol(seconds: float) -> type[TimedH11Protocol]:
    """The protocol class with this header timeout (uvicorn takes a class, not an instance)."""
    return type("TimedH11Protocol", (TimedH11Protocol,), {"header_timeout": seconds})
