"""A deliberately small HTTP/1.1 server on asyncio for the approvals API.

The proxy's event loop already runs; a few JSON endpoints do not justify another web
framework in the data path. One request per connection, bodies capped, no keep-alive.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from holdgate.identity import Authenticator, Identity, IdentityConfig

if TYPE_CHECKING:
    from holdgate.config.gateway_config import GatewayConfig

logger = logging.getLogger("holdgate")

MAX_HEADER_BYTES = 16 * 1024
MAX_BODY_BYTES = 64 * 1024
READ_TIMEOUT = 10.0


@dataclass(frozen=True)
class AdminRequest:
    method: str
    path: str
    headers: dict[str, list[str]]  # lowercased names
    body: bytes
    client_ip: str

    def json(self) -> Any:
        return json.loads(self.body) if self.body.strip() else {}


class AdminCallers:
    """Who sends an admin request (approvals API, /metrics): JWTs and API keys as for MCP
    clients, trusted headers only as `admin.trusted_header` allows (the MCP listener's
    `identity.trusted_header` never applies here); one Authenticator per loaded config, so
    its caches last between requests."""

    def __init__(self) -> None:
        self._current: tuple[str, Authenticator] | None = None

    async def identity(self, config: GatewayConfig, request: AdminRequest) -> Identity | None:
        """The caller's identity, None when the config names no way to authenticate here or
        the credentials do not hold."""
        admin_identity = admin_identity_config(config)
        if admin_identity is None:
            return None
        if self._current is None or self._current[0] != config.digest:
            self._current = (config.digest, Authenticator(admin_identity))
        outcome = await self._current[1].authenticate(request.headers, request.client_ip)
        return outcome.identity


def admin_identity_config(config: GatewayConfig) -> IdentityConfig | None:
    """How the admin listener authenticates: the MCP listener's JWT issuers and API keys,
    with the admin listener's own trusted header (none unless `admin.trusted_header`)."""
    trusted = config.admin.trusted_header
    if config.identity is None and trusted is None:
        return None
    return dataclasses.replace(config.identity or IdentityConfig(), trusted_header=trusted)


# A page a person opens from a link: nothing loaded from elsewhere, nothing cached, the
# link (its only credential) never sent on as a referrer.
PAGE_HEADERS = (
    ("Content-Security-Policy", "default-src 'none'; style-src 'unsafe-inline'"),
    ("Referrer-Policy", "no-referrer"),
    ("X-Content-Type-Options", "nosniff"),
    ("Cache-Control", "no-store"),
)


@dataclass(frozen=True)
class AdminResponse:
    """A JSON answer, an HTML page for a person (`page`), or a body of its own type
    (`raw`: content type and bytes, e.g. the Prometheus exposition)."""

    status: int
    payload: Any
    page: str | None = None
    raw: tuple[str, bytes] | None = None

    def encode(self) -> bytes:
        if self.raw is not None:
            headers = [("Content-Type", self.raw[0]), ("Cache-Control", "no-store")]
            body = self.raw[1]
        elif self.page is not None:
            body = self.page.encode("utf-8")
            headers = [("Content-Type", "text/html; charset=utf-8"), *PAGE_HEADERS]
        else:
            body = json.dumps(self.payload, ensure_ascii=False, indent=2).encode("utf-8")
            headers = [("Content-Type", "application/json")]
        reason = {
            200: "OK",
            400: "Bad Request",
            401: "Unauthorized",
            403: "Forbidden",
            405: "Method Not Allowed",
            404: "Not Found",
            409: "Conflict",
            413: "Payload Too Large",
            500: "Internal Server Error",
            503: "Service Unavailable",
        }.get(self.status, "Error")
        head = f"HTTP/1.1 {self.status} {reason}\r\n" + "".join(
            f"{name}: {value}\r\n" for name, value in headers
        )
        head += f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
        return head.encode("ascii") + body


Handler = Callable[[AdminRequest], Awaitable[AdminResponse]]


class BadRequest(Exception):
    """The bytes on the wire are not a request we accept."""


async def read_request(reader: asyncio.StreamReader, client_ip: str) -> AdminRequest:
    try:
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), READ_TIMEOUT)
    except asyncio.LimitOverrunError:
        raise BadRequest("headers too large") from None
    except (asyncio.IncompleteReadError, TimeoutError):
        raise BadRequest("incomplete request") from None
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        raise BadRequest("malformed request line")
    headers: dict[str, list[str]] = {}
    for line in lines[1:]:
        if not line:
            continue
        name, sep, value = line.partition(":")
        if not sep:
            raise BadRequest("malformed header line")
        headers.setdefault(name.strip().lower(), []).append(value.strip())
    if "transfer-encoding" in headers:
        raise BadRequest("chunked bodies are not accepted; send Content-Length")
    lengths = headers.get("content-length", ["0"])
    if len(lengths) != 1 or not lengths[0].isdigit():
        raise BadRequest("bad Content-Length")
    length = int(lengths[0])
    if length > MAX_BODY_BYTES:
        raise BadRequest("body too large")
    try:
        body = await asyncio.wait_for(reader.readexactly(length), READ_TIMEOUT)
    except (asyncio.IncompleteReadError, TimeoutError):
        raise BadRequest("incomplete body") from None
    return AdminRequest(parts[0].upper(), parts[1], headers, body, client_ip)


async def serve(host: str, port: int, handler: Handler) -> asyncio.Server:
    async def on_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        client_ip = peer[0] if peer else ""
        try:
            try:
                request = await read_request(reader, client_ip)
                response = await handler(request)
            except BadRequest as exc:
                response = AdminResponse(400, {"error": str(exc)})
            writer.write(response.encode())
            await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(on_connection, host, port, limit=MAX_HEADER_BYTES)
    return server


def parse_listen(value: str) -> tuple[str, int] | None:
    """`127.0.0.1:8181`, `[::1]:8181` or empty (disabled)."""
    if not value.strip():
        return None
    host, sep, port = value.strip().rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise ValueError(f"expected HOST:PORT or empty, got {value!r}")
    return host.strip("[]"), int(port)
