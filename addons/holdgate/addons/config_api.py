"""ConfigApi: `GET /config/hash` on the admin listener, what `holdgate policy apply` waits on.

It answers which config is in force (its SHA-256, as in the audit rows' `config_hash`)
and the last reload the gateway rejected since (its hash and why), so a command that
replaced the watched file can tell "taken", "refused, and why" and "not seen yet" apart.
Callers authenticate as for the approvals API.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from holdgate.approvals.adminhttp import AdminCallers, AdminRequest, AdminResponse

if TYPE_CHECKING:
    from holdgate.addons.config_loader import ConfigLoader

UNAUTHENTICATED = "authenticate like an MCP client (JWT or API key) to read the config hash"


class ConfigApi:
    """The config in force and the last rejected reload, fed by the loader's announcements."""

    def __init__(self, loader: ConfigLoader, callers: AdminCallers) -> None:
        self.loader = loader
        self.callers = callers
        self.rejected: dict[str, Any] | None = None

    def config_event(self, event: dict[str, Any]) -> None:
        """A load, reload or rejected reload (`ConfigLoader` listener): a rejection is kept
        until a config is loaded again."""
        if event.get("outcome") == "rejected":
            self.rejected = {"config_hash": event.get("config_hash"), "detail": event["detail"]}
        else:
            self.rejected = None

    async def handle(self, request: AdminRequest) -> AdminResponse:
        """GET /config/hash."""
        if request.method != "GET":
            return AdminResponse(405, {"error": "GET /config/hash"})
        config = self.loader.current
        if config is None:
            return AdminResponse(503, {"error": "no config loaded"})
        if await self.callers.identity(config, request) is None:
            return AdminResponse(401, {"error": UNAUTHENTICATED})
        return AdminResponse(
            200, {"config_hash": config.digest, "file": config.file, "rejected": self.rejected}
        )
