"""Approval decisions as PostgreSQL notifications, so a holding replica wakes at once.

A decision sends `NOTIFY holdgate_approvals, '<approval id>'` inside the transaction that
records it (delivered at commit). `ApprovalNotices` is a thread on a connection of its own
that LISTENs and calls `wake(approval_id)` for each; when the server goes away it
reconnects with backoff. A notice sent while it was away is lost, which is why the holder
keeps polling the store as well: the notice only makes the wake-up quicker.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

import psycopg

from holdgate.store.sqlconn import SqlConnection

logger = logging.getLogger("holdgate")

CHANNEL = "holdgate_approvals"
MAX_BACKOFF = 5.0
WAIT = 0.5  # seconds per wait for notices, so `close` is seen promptly


def notify(conn: SqlConnection, approval_id: str) -> None:
    """Queue the notice in the current transaction (sent when it commits)."""
    conn.execute("SELECT pg_notify(?, ?)", [CHANNEL, approval_id])


class ApprovalNotices:
    """LISTEN on `CHANNEL` in a daemon thread; `wake` runs on that thread."""

    def __init__(
        self,
        url: str,
        name: str,
        wake: Callable[[str], None],
        *,
        connect_timeout: float = 5.0,
    ) -> None:
        self.url = url
        self.name = name  # the store as messages show it (no password)
        self.wake = wake
        self.connect_timeout = connect_timeout
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="holdgate-notices", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=WAIT + self.connect_timeout + 1)

    def _run(self) -> None:
        backoff = 0.25
        while not self._stop.is_set():
            try:
                with psycopg.connect(
                    self.url, autocommit=True, connect_timeout=max(1, int(self.connect_timeout))
                ) as conn:
                    conn.execute(f"LISTEN {CHANNEL}")
                    backoff = 0.25
                    self._listen(conn)
            except psycopg.Error as exc:
                logger.warning(
                    "holdgate: approval notices from %s interrupted (%s); reconnecting in "
                    "%.1f s (decisions are polled meanwhile)",
                    self.name,
                    str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__,
                    backoff,
                )
                self._stop.wait(backoff)
                backoff = min(MAX_BACKOFF, backoff * 2)

    def _listen(self, conn: psycopg.Connection[Any]) -> None:
        while not self._stop.is_set():
            for notice in conn.notifies(timeout=WAIT):
                self.wake(notice.payload)
