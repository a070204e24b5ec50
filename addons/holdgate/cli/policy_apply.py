"""`holdgate policy apply`: put a checked config in place of the watched file, then wait
until the gateway (and, with a store, every live replica) says it is in force.

The watched file is replaced atomically: the new bytes go to a temporary file in the same
folder, are flushed to disk, take the old file's mode, and `os.replace` swaps them in, so
the gateway's watcher sees the old file or the new one, never half of one. The gateway
tells which config it runs through the admin API (`GET /config/hash`); a reload it
rejected is reported with its reason and the old bytes are put back, so the file on
disk is again the config in force.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from holdgate.cli.common import CheckFailed
from holdgate.cli.gateway_client import GatewayClient
from holdgate.store import Store

POLL_SECONDS = 0.25
SHORT = 12


def replace_atomically(path: Path, data: bytes) -> None:
    """Write `data` in place of the file at `path` (a symlink's target), keeping its mode:
    a reader sees the old file or the new one, whole."""
    target = path.resolve()
    mode = target.stat().st_mode & 0o7777
    handle, temporary = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
    try:
        with os.fdopen(handle, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(temporary, mode)
        os.replace(temporary, target)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    folder = os.open(target.parent, os.O_RDONLY)
    try:
        os.fsync(folder)  # the rename itself survives a crash
    finally:
        os.close(folder)


def write_in_place(path: Path, data: bytes, otherwise: str = "nothing was replaced") -> None:
    """`replace_atomically`, a failure being a message that says what stays as it was."""
    try:
        replace_atomically(path, data)
    except OSError as exc:
        raise CheckFailed(
            f"cannot write {path} ({exc.strerror}); {otherwise}: check that its folder is "
            "writable by you"
        ) from None


@dataclass(frozen=True)
class InForce:
    """What a gateway said of its config: the hash in force, the last reload it rejected."""

    config_hash: str
    file: str
    rejected_hash: str | None
    rejected_detail: str | None

    @classmethod
    def of(cls, answer: Any) -> InForce:
        if not isinstance(answer, dict) or not isinstance(answer.get("config_hash"), str):
            raise CheckFailed(
                "the gateway's GET /config/hash answer is not what this holdgate knows; "
                "is the gateway older than this command?"
            )
        rejected = answer.get("rejected")
        if not isinstance(rejected, dict):
            rejected = {}
        return cls(
            answer["config_hash"],
            str(answer.get("file") or ""),
            rejected.get("config_hash"),
            rejected.get("detail"),
        )


def in_force(client: GatewayClient) -> InForce:
    return InForce.of(client.call("GET", "/config/hash"))


class Rejected(Exception):
    """The gateway rejected the new config; carries its reason."""


def lagging_replicas(store: Store, digest: str) -> list[str]:
    """The live replicas sharing the store that do not run `digest` yet."""
    return [
        f"{row['replica']} (sha256 {(row['config_hash'] or '-')[:SHORT]})"
        for row in store.replicas()
        if row["alive"] and row["config_hash"] != digest
    ]


def wait_in_force(
    client: GatewayClient,
    digest: str,
    timeout: float,
    store: Store | None = None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> str | None:
    """Wait until the gateway runs `digest` and, with `store`, every live replica does.
    Returns None when confirmed, else what still differs at the deadline. Raises
    `Rejected` as soon as the gateway reports it rejected `digest`."""
    deadline = clock() + timeout
    while True:
        waiting = _still_waiting(client, digest, store)
        if waiting is None or clock() >= deadline:
            return waiting
        sleep(POLL_SECONDS)


def _still_waiting(client: GatewayClient, digest: str, store: Store | None) -> str | None:
    try:
        state = in_force(client)
    except CheckFailed as exc:  # a gateway restarting: asked again until the deadline
        return f"the gateway did not answer: {exc.message}"
    if state.rejected_hash == digest:
        raise Rejected(state.rejected_detail or "no reason given")
    if state.config_hash != digest:
        return f"the gateway still runs sha256 {state.config_hash[:SHORT]} (its file: {state.file})"
    if store is not None:
        lagging = lagging_replicas(store, digest)
        if lagging:
            return "live replicas still on another config: " + ", ".join(lagging)
    return None
