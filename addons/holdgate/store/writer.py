"""The gateway's side of the store: hooks `submit` rows without blocking, a daemon thread
writes them in batches, and `healthy` says whether the record is being kept.

The thread owns its own connection (a `BatchTarget`, opened by the store that made the
writer), so it never shares one with readers on other threads and any backend that can
append a batch can sit behind it.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from contextlib import suppress
from typing import Protocol

from holdgate.store.chain import normalize_row
from holdgate.store.errors import BadRow, StoreError
from holdgate.store.rows import Row

logger = logging.getLogger("holdgate")

Batch = Sequence[tuple[str, Row]]
_Item = tuple[str, Row] | threading.Event | None
# Errors that come from the rows, not the store: such a batch is dropped, not retried.
_BAD_DATA = (BadRow, ValueError, OverflowError)


class BatchTarget(Protocol):
    """A connection the writer thread owns: appends a batch in one transaction."""

    def append_batch(self, rows: Batch) -> None:
        """Append normalized rows; BadRow when the store refuses them for their content."""

    def probe(self) -> None:
        """A write that changes nothing, to learn whether the store is writable again."""

    def close(self) -> None: ...


class AuditWriter:
    """Rows in, batches out: hooks `submit` without blocking; a daemon thread writes.

    While the store cannot be written, `healthy` is False, `submit` refuses (counted in
    `lost`) and the thread retries the batch in hand every `retry_interval` seconds, so
    rows accepted before the failure are written once the store works again. With
    `required`, the store is opened now and `StoreUnavailable` raised if that fails;
    otherwise the writer starts unhealthy and keeps trying. Only the first opening may
    create the store: one that vanishes later is not silently recreated empty.

    Every commit is synced to disk, so the thread gathers rows for up to `linger` seconds
    before committing them together: under load one sync covers many rows instead of one
    (a `flush` ends the wait at once).
    """

    def __init__(
        self,
        open_target: Callable[[bool], BatchTarget],
        name: str,
        *,
        queue_size: int = 10_000,
        batch_max: int = 500,
        linger: float = 0.01,
        required: bool = True,
        retry_interval: float = 1.0,
    ) -> None:
        self.name = name
        self.batch_max = batch_max
        self.linger = linger
        self.retry_interval = retry_interval
        self.healthy = True
        self.last_error: str | None = None
        self.lost = 0
        self.max_queue_depth_seen = 0
        self._open_target = open_target
        self._queue: queue.Queue[_Item] = queue.Queue(queue_size)
        self._lock = threading.Lock()
        self._closing = threading.Event()
        self._opened_once = False
        self._target: BatchTarget | None = None
        if required:
            self._target = self._open()
        self._thread = threading.Thread(target=self._run, name="holdgate-audit", daemon=True)
        self._thread.start()

    @property
    def queue_depth(self) -> int:
        return self._queue.qsize()

    def submit(self, table: str, row: Row) -> bool:
        """Queue a row; False (and counted lost) when full, failing or closed.

        Raises BadRow for a row that does not fit the schema.
        """
        item = (table, normalize_row(table, row))
        if self.healthy and not self._closing.is_set():
            try:
                self._queue.put_nowait(item)
            except queue.Full:
                pass
            else:
                depth = self._queue.qsize()
                with self._lock:
                    self.max_queue_depth_seen = max(self.max_queue_depth_seen, depth)
                return True
        self._count_lost(1)
        return False

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until every row queued so far is written; False on timeout or once closed."""
        if self._closing.is_set():
            return False
        marker = threading.Event()
        try:
            self._queue.put(marker, timeout=timeout)
        except queue.Full:
            return False
        return marker.wait(timeout)

    def close(self, timeout: float = 10.0) -> None:
        """Write what is queued (if the store works), then stop the thread."""
        if self._closing.is_set():
            return
        self._closing.set()
        with suppress(queue.Full):
            self._queue.put(None, timeout=timeout)
        self._thread.join(timeout)

    def _count_lost(self, n: int) -> None:
        with self._lock:
            self.lost += n

    def _open(self) -> BatchTarget:
        target = self._open_target(not self._opened_once)
        self._opened_once = True
        return target

    def _run(self) -> None:
        batch: list[tuple[str, Row]] = []
        markers: list[threading.Event] = []
        stopping = False
        if self._target is None:
            self._write(batch)
        while True:
            try:
                # While failing with nothing in hand, wake up to probe the store.
                item = self._queue.get(timeout=None if self.healthy else self.retry_interval)
            except queue.Empty:
                self._write(batch)
                continue
            commit_by = time.monotonic() + self.linger
            while True:
                if item is None:
                    stopping = True
                elif isinstance(item, threading.Event):
                    markers.append(item)
                else:
                    batch.append(item)
                if stopping or markers or len(batch) >= self.batch_max:
                    break
                try:
                    item = self._queue.get(timeout=max(0.0, commit_by - time.monotonic()))
                except queue.Empty:
                    break
            while not self._write(batch):
                if self._closing.wait(self.retry_interval):
                    self._abandon(batch)
                    return
            batch = []
            for marker in markers:
                marker.set()
            markers = []
            if stopping:
                self._disconnect()
                return

    def _write(self, batch: list[tuple[str, Row]]) -> bool:
        """One attempt: append the batch (with nothing in hand while failing: a probe write).

        False while the store cannot be written; a batch the store refuses for its
        content is dropped (counted lost) rather than retried for ever.
        """
        if not batch and self.healthy and self._target is not None:
            return True
        try:
            if self._target is None:
                self._target = self._open()
            if batch:
                self._target.append_batch(batch)
            else:
                self._target.probe()
        except _BAD_DATA as exc:
            self._count_lost(len(batch))
            self.last_error = f"{len(batch)} rows dropped: {type(exc).__name__}: {exc}"
            logger.error("holdgate: audit rows could not be stored: %s", self.last_error)
        except Exception as exc:  # whatever it is, the record is not being kept
            self._disconnect()
            error = f"{type(exc).__name__}: {exc}"
            if self.healthy or error != self.last_error:
                logger.error("holdgate: audit store %s cannot be written: %s", self.name, error)
            self.last_error = error
            self.healthy = False
            return False
        if not self.healthy:
            logger.warning("holdgate: audit store %s writable again", self.name)
            self.healthy = True
        return True

    def _disconnect(self) -> None:
        if self._target is not None:
            with suppress(StoreError):
                self._target.close()
            self._target = None

    def _abandon(self, batch: list[tuple[str, Row]]) -> None:
        """Closing while the store fails: count what was never written."""
        lost = len(batch)
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if isinstance(item, tuple):
                lost += 1
        self._count_lost(lost)
        self._disconnect()
