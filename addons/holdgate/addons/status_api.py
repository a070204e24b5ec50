"""Health and status, as routes on the `AdminApi`:

    GET /healthz   200 while the process serves (nothing else said: no credential needed)
    GET /readyz    200 when it may be sent traffic, 503 with the reason otherwise
    GET /status    what `holdgate status` shows; authenticated

The probes answer anyone who reaches the admin listener, so they say only "ready" or a
fixed reason (`telemetry.health`). `/status` names the config file and the last reload
error, which can quote the file, so it needs a credential the admin listener accepts
and, when the config sets `metrics.groups`, one of those groups: the people the config
already trusts with the gateway's operational state.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from holdgate import compiled
from holdgate.addons.config_loader import file_digest
from holdgate.approvals.adminhttp import AdminCallers, AdminRequest, AdminResponse
from holdgate.store import PostgresStore, Store, StoreError
from holdgate.telemetry.health import Readiness, not_ready

if TYPE_CHECKING:
    from holdgate.addons.audit_store import AuditStore
    from holdgate.addons.config_loader import ConfigLoader
    from holdgate.addons.replicas import Replicas

# How long `/status` waits for the store's answers before it reports the store unreadable
# (a PostgreSQL server that does not answer must not hang the command).
STORE_READ_SECONDS = 5.0


class HealthApi:
    """/healthz and /readyz, for load balancers and Kubernetes probes."""

    def __init__(self, loader: ConfigLoader, audit: AuditStore, replicas: Replicas) -> None:
        self.loader = loader
        self.audit = audit
        self.replicas = replicas

    def readiness(self) -> Readiness:
        writer = self.audit.writer
        return Readiness(
            started=self.loader.started,
            config_loaded=self.loader.current is not None,
            store_open=self.audit.is_open,
            writer_healthy=writer is not None and writer.healthy,
            replica=self.replicas.replica,
            lease_age=self.replicas.lease_age(),
        )

    async def healthz(self, request: AdminRequest) -> AdminResponse:
        if request.method != "GET":
            return AdminResponse(405, {"error": "GET /healthz"})
        return AdminResponse(200, {"status": "serving"})

    async def readyz(self, request: AdminRequest) -> AdminResponse:
        if request.method != "GET":
            return AdminResponse(405, {"error": "GET /readyz"})
        reason = not_ready(self.readiness())
        if reason is not None:
            return AdminResponse(503, {"status": "not ready", "reason": reason})
        return AdminResponse(200, {"status": "ready"})


class StatusApi:
    """/status: the config in force against the file on disk, the last reload error, the
    store, the replica, pending approvals and the feeds' lag."""

    def __init__(
        self,
        health: HealthApi,
        callers: AdminCallers,
        held_here: Callable[[], int],
    ) -> None:
        self.health = health
        self.callers = callers
        self.held_here = held_here

    async def handle(self, request: AdminRequest) -> AdminResponse:
        loader = self.health.loader
        config = loader.current
        if config is None:
            return AdminResponse(503, {"error": "no config loaded"})
        if request.method != "GET":
            return AdminResponse(405, {"error": "GET /status"})
        caller = await self.callers.identity(config, request)
        if caller is None:
            return await self.callers.refusal(config, request)
        allowed = config.metrics.groups
        if allowed and not set(allowed) & set(caller.groups):
            return AdminResponse(
                403, {"error": f"{caller.user} is in none of the groups metrics.groups allows"}
            )
        on_disk = await asyncio.to_thread(file_digest, loader.path)
        failure = loader.last_reload_error
        report: dict[str, Any] = {
            "replica": self.health.replicas.replica,
            "not_ready": not_ready(self.health.readiness()),
            "config": {
                "file": loader.path,
                "in_force": {"sha256": config.digest, "loaded_at": loader.loaded_at},
                "file_sha256": on_disk,
                "file_in_force": on_disk == config.digest,
                "reload_failures": loader.reload_failures,
                "last_reload_error": (
                    {"at": failure.at, "error": failure.error} if failure is not None else None
                ),
            },
            "store": self._store_health(),
            "approvals": {"held_here": self.held_here(), "pending": None},
            "feeds": None,
            "code": compiled.status().describe(),
        }
        try:
            pending, feeds = await asyncio.wait_for(
                self.health.audit.run(store_state), STORE_READ_SECONDS
            )
        except (StoreError, TimeoutError) as exc:
            reason = "no answer" if isinstance(exc, TimeoutError) else str(exc)
            report["store"]["read_error"] = f"cannot read the store: {reason}"
        else:
            report["approvals"]["pending"] = pending
            report["feeds"] = feeds
        return AdminResponse(200, report)

    def _store_health(self) -> dict[str, Any]:
        audit = self.health.audit
        writer = audit.writer
        backend = None
        if audit.is_open:
            backend = "postgresql" if isinstance(audit.store(), PostgresStore) else "sqlite"
        return {
            "backend": backend,
            "writable": writer is not None and writer.healthy,
            "last_error": writer.last_error if writer is not None and not writer.healthy else None,
            "queue_depth": writer.queue_depth if writer is not None else 0,
            "rows_lost": writer.lost if writer is not None else 0,
        }


def store_state(store: Store) -> tuple[int, list[dict[str, Any]]]:
    """Pending approvals (every replica's) and each feed's cursor, head and lag."""
    pending = len(store.approvals(pending_only=True))
    head = store.feed_head()
    feeds = [
        {
            "feed": row["feed"],
            "seq": int(row["seq"] or 0),
            "head": head,
            "lag": store.feed_pending(int(row["seq"] or 0)),
            "holder": row["holder"],
            "last_error": row["last_error"],
        }
        for row in store.feed_cursors()
    ]
    return pending, feeds
