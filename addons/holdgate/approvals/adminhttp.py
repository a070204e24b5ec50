"""What the admin listener's routes speak, free of the web server that carries them: a
request, an answer, who is calling, and the listen address.

The listener itself is the `AdminApi` addon (tornado); a route is a `Handler` from an
`AdminRequest` to an `AdminResponse`, so routes are tested in process without a socket.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from holdgate.identity import Authenticator, Identity, IdentityConfig

if TYPE_CHECKING:
    from holdgate.config.gateway_config import GatewayConfig

MAX_HEADER_BYTES = 16 * 1024
MAX_BODY_BYTES = 64 * 1024


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
    (`raw`: content type and bytes, e.g. the Prometheus exposition); `headers` are added
    to a raw body's, replacing any of the same name (the inbox's own policy, a redirect)."""

    status: int
    payload: Any
    page: str | None = None
    raw: tuple[str, bytes] | None = None
    headers: tuple[tuple[str, str], ...] = ()

    def content(self) -> tuple[list[tuple[str, str]], bytes]:
        """The answer's headers and body bytes."""
        if self.raw is not None:
            given = {name.lower() for name, _ in self.headers}
            base = [("Content-Type", self.raw[0]), ("Cache-Control", "no-store")]
            kept = [(name, value) for name, value in base if name.lower() not in given]
            return [*kept, *self.headers], self.raw[1]
        if self.page is not None:
            headers = [("Content-Type", "text/html; charset=utf-8"), *PAGE_HEADERS]
            return headers, self.page.encode("utf-8")
        body = json.dumps(self.payload, ensure_ascii=False, indent=2).encode("utf-8")
        return [("Content-Type", "application/json")], body


Handler = Callable[[AdminRequest], Awaitable[AdminResponse]]


def parse_listen(value: str) -> tuple[str, int] | None:
    """`127.0.0.1:8181`, `[::1]:8181` or empty (disabled)."""
    if not value.strip():
        return None
    host, sep, port = value.strip().rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise ValueError(f"expected HOST:PORT or empty, got {value!r}")
    return host.strip("[]"), int(port)
