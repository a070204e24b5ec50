"""ConnectionDeadlines: a client that connects must send its request promptly.

mitmproxy only closes connections idle for `tcp_timeout` (600 s), and a client that
trickles header bytes is never idle: hundreds of half-open connections could be held
before any identity is known. Here a client must complete its request headers within
HEADER_TIMEOUT of connecting (TLS handshake included), its body within BODY_TIMEOUT of
the headers, and, on a kept-alive HTTP/1 connection, its next request's headers within
KEEPALIVE_TIMEOUT of the last response. Held approvals and streams are not affected:
the clock stops once a request is read.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from mitmproxy import connection, ctx, http

logger = logging.getLogger("holdgate")

HEADER_TIMEOUT = 10.0
BODY_TIMEOUT = 30.0
KEEPALIVE_TIMEOUT = 60.0
SWEEP_INTERVAL = 1.0


@dataclass
class Deadline:
    at: float
    waiting_for: str
    client: connection.Client


class ConnectionDeadlines:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.deadlines: dict[str, Deadline] = {}
        self._sweeper: asyncio.Task[None] | None = None

    def running(self) -> None:
        self._sweeper = asyncio.get_running_loop().create_task(self._sweep_forever())

    def done(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()

    def _arm(self, client: connection.Client, seconds: float, waiting_for: str) -> None:
        self.deadlines[client.id] = Deadline(self.clock() + seconds, waiting_for, client)

    def client_connected(self, client: connection.Client) -> None:
        self._arm(client, HEADER_TIMEOUT, "request headers")

    def client_disconnected(self, client: connection.Client) -> None:
        self.deadlines.pop(client.id, None)

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        self._arm(flow.client_conn, BODY_TIMEOUT, "request body")

    def request(self, flow: http.HTTPFlow) -> None:
        self.deadlines.pop(flow.client_conn.id, None)

    def response(self, flow: http.HTTPFlow) -> None:
        # HTTP/2 and 3 carry several requests at once: one finished says nothing of the rest.
        if flow.request.http_version.startswith("HTTP/1") and flow.live:
            self._arm(flow.client_conn, KEEPALIVE_TIMEOUT, "the next request")

    def expired(self) -> list[Deadline]:
        """Deadlines passed, removed from the watch."""
        now = self.clock()
        late = [d for d in self.deadlines.values() if d.at <= now]
        for deadline in late:
            del self.deadlines[deadline.client.id]
        return late

    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(SWEEP_INTERVAL)
            for deadline in self.expired():
                close(deadline)


def close(deadline: Deadline) -> None:
    """Close a client connection the way mitmproxy's own inactivity timeout does."""
    client = deadline.client
    proxyserver = ctx.master.addons.get("proxyserver")
    handler = getattr(proxyserver, "connections", {}).get(client.id)
    if handler is None:  # gone meanwhile
        return
    logger.warning(
        "holdgate: closing %s: no %s in time", _address(client.peername), deadline.waiting_for
    )
    try:
        handler.transports[handler.client].handler.cancel("holdgate deadline")
    except (AttributeError, KeyError) as exc:
        logger.error("holdgate: cannot close a late connection (%s); mitmproxy changed?", exc)


def _address(peername: tuple[str, int] | None) -> str:
    return f"{peername[0]}:{peername[1]}" if peername else "a client"
