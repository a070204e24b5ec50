"""Replicas: this gateway's name and lease among the gateways sharing one store.

At start the replica claims its row in the store (`holdgate_replica`, default
HOST:ADDRESS, the address its modes listen on, with a random instance id per process
start); a second live process under the same name refuses to start. Every
`HEARTBEAT_EVERY` seconds, off the event loop, it renews its lease (judged by the
database clock); at shutdown it marks itself gone. Holds name their replica, so the
others can tell when nobody holds a call any more.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
import unicodedata
import uuid
from importlib.metadata import version
from typing import TYPE_CHECKING

from mitmproxy import ctx, exceptions

from holdgate.config.options import listen_addresses, replica_name
from holdgate.store import ReplicaNameTaken, Store, StoreError, iso
from holdgate.store.replica_records import ReplicaInfo, quoted

if TYPE_CHECKING:
    from holdgate.addons.audit_store import AuditStore
    from holdgate.addons.config_loader import ConfigLoader

logger = logging.getLogger("holdgate")

HEARTBEAT_EVERY = 2.0
MAX_NAME = 100
OWN_OPTIONS = frozenset({"holdgate_replica", "mode", "listen_host", "listen_port"})


def name_problem(name: str) -> str | None:
    """Why a replica name cannot be used: it must be short and printable (it is shown in
    logs, the CLI and approval reasons)."""
    if not name.strip():
        return "the replica name is empty"
    if len(name) > MAX_NAME:
        return f"the replica name has {len(name)} characters (at most {MAX_NAME})"
    if any(unicodedata.category(c).startswith("C") for c in name):
        return f"the replica name {quoted(name)} has control characters"
    return None


def exited_here(host: str | None, pid: int | None) -> bool:
    """Whether a replica row's process ran on this host and has exited: a gateway restarted
    right after a crash takes its name back without waiting out the lease."""
    if host != socket.gethostname() or not pid or pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:  # exists, but not ours to signal
        return False
    return False


class Replicas:
    def __init__(self, loader: ConfigLoader, audit: AuditStore) -> None:
        self.loader = loader
        self.audit = audit
        self.instance = uuid.uuid4().hex
        # once registered; not `name`: mitmproxy finds addons by their `name` attribute
        self.replica: str | None = None
        self._store: Store | None = None
        self._task: asyncio.Task[None] | None = None
        self._taken_over = False
        # When the store last took this replica's lease (registration or a heartbeat, both
        # writes), by the monotonic clock; None while the last attempt failed.
        self.lease_written: float | None = None

    def load(self, loader) -> None:  # type: ignore[no-untyped-def]
        loader.add_option(
            "holdgate_replica",
            str,
            "",
            "This gateway's name among the replicas sharing the audit store (default "
            "HOST:ADDRESS, the address each mode listens on); each live gateway needs its own.",
        )

    def configure(self, updated: set[str]) -> None:
        if OWN_OPTIONS & updated:
            self.register()

    def store_opened(self, _location: str) -> None:
        """The AuditStore opened a store: this replica registers in it (subscribed in
        `default_addons()`, so it does not matter which of us configures first)."""
        self.register()

    def register(self) -> None:
        """Claim this replica's row in the open store, unless it holds it already."""
        name = replica_name(ctx.options)
        if problem := name_problem(name):
            raise exceptions.OptionsError(f"holdgate_replica: {problem}")
        if not self.audit.is_open:
            return
        store = self.audit.store()
        if store is self._store and name == self.replica:
            return
        self.retire()
        # At start (or when the option changes): the gateway must not run unregistered.
        try:
            store.register_replica(self._info(name), process_gone=exited_here)
        except ReplicaNameTaken as exc:
            raise exceptions.OptionsError(f"holdgate_replica: {exc}") from None
        except StoreError as exc:
            raise exceptions.OptionsError(
                f"holdgate_replica: cannot register replica {quoted(name)} in the audit "
                f"store ({exc})"
            ) from None
        self.replica, self._store, self._taken_over = name, store, False
        self.lease_written = time.monotonic()
        logger.info("holdgate: replica %s (instance %s)", quoted(name), self.instance[:8])

    def running(self) -> None:
        self._task = asyncio.create_task(self._beat())

    def done(self) -> None:
        if self._task is not None:
            self._task.cancel()

    def retire(self) -> None:
        """Mark this instance gone (subscribed to the AuditStore's `before_close`)."""
        store, name = self._store, self.replica
        self._store = self.replica = None
        self.lease_written = None
        if store is None or name is None:
            return
        try:
            store.retire_replica(name, self.instance)
        except StoreError as exc:
            logger.error("holdgate: cannot mark replica %s gone: %s", quoted(name), exc)

    async def _beat(self) -> None:
        while True:
            await asyncio.sleep(HEARTBEAT_EVERY)
            await self.heartbeat()

    async def heartbeat(self) -> None:
        """Renew the lease; a store that is away is logged and retried on the next beat."""
        name, instance = self.replica, self.instance
        if self._store is None or name is None:
            return
        config = self.loader.current
        digest = config.digest if config else None
        try:
            ours = await self.audit.run(lambda store: store.heartbeat(name, instance, digest))
        except StoreError as exc:
            self.lease_written = None
            logger.error(
                "holdgate: replica %s cannot heartbeat (%s); retrying in %.0f s, and other "
                "replicas close its holds once the lease lapses",
                quoted(name),
                exc,
                HEARTBEAT_EVERY,
            )
            return
        if self._store is None:  # retired meanwhile (shutdown)
            return
        if not ours and not self._taken_over:
            logger.error(
                "holdgate: replica %s was taken over by another process: two gateways run "
                "with one holdgate_replica; give each its own",
                quoted(name),
            )
        self._taken_over = not ours
        self.lease_written = time.monotonic() if ours else None

    def lease_age(self) -> float | None:
        """Seconds since the store last took this replica's lease; None when it is not
        registered, was taken over, or its last heartbeat failed."""
        written = self.lease_written
        return None if written is None else time.monotonic() - written

    def _info(self, name: str) -> ReplicaInfo:
        config = self.loader.current
        return ReplicaInfo(
            replica=name,
            instance=self.instance,
            host=socket.gethostname(),
            pid=os.getpid(),
            listen=listen_addresses(
                ctx.options.mode, ctx.options.listen_host, ctx.options.listen_port
            ),
            started=iso(),
            config_hash=config.digest if config else None,
            version=version("holdgate"),
        )
