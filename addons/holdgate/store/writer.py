"""The gateway's side of the store: hooks `submit` rows without blocking (or
`submit_durable` and wait, off the event loop, until they are committed), a daemon thread
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
from concurrent.futures import Future
from contextlib import suppress
from dataclasses import dataclass
from typing import Protocol

from holdgate.store.chain import normalize_row
from holdgate.store.errors import BadRow, StoreError, StoreUnavailable
from holdgate.store.rows import Row

logger = logging.getLogger("holdgate")

Batch = Sequence[tuple[str, Row]]
# Errors that come from the rows, not the store: such a batch is dropped, not retried.
_BAD_DATA = (BadRow, ValueError, OverflowError)


class AuditQueueFull(StoreUnavailable):
    """The writer holds as many rows as it may: a batch is taken whole or not at all."""


class WriterClosed(StoreUnavailable):
    """The writer is closing (the gateway is shutting down): it takes no more rows."""


class BatchTarget(Protocol):
    """A connection the writer thread owns: appends a batch in one transaction."""

    def append_batch(self, rows: Batch) -> None:
        """Append normalized rows; BadRow when the store refuses them for their content."""

    def probe(self) -> None:
        """A write that changes nothing, to learn whether the store is writable again."""

    def close(self) -> None: ...


@dataclass(eq=False)
class _Entry:
    """Rows that go into the store together, in one commit; `durable`: the caller waits."""

    rows: list[tuple[str, Row]]
    durable: Future[None] | None = None


_Item = _Entry | threading.Event | None


class Writer(Protocol):
    """What the gateway uses of an audit writer: this module's `AuditWriter` (a thread), or
    `writer_process.ProcessAuditWriter` (a process of its own)."""

    name: str
    queue_size: int
    healthy: bool
    last_error: str | None
    lost: int
    refused: int
    max_queue_depth_seen: int
    on_written: Callable[[Batch], None] | None

    @property
    def queue_depth(self) -> int: ...
    def submit(self, table: str, row: Row) -> bool: ...
    def submit_all(self, rows: Batch) -> bool: ...
    def submit_durable(self, rows: Batch) -> Future[None]: ...
    def flush(self, timeout: float = 10.0) -> bool: ...
    def close(self, timeout: float = 10.0) -> None: ...


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
    (a `flush` ends the wait at once). Rows someone waits for (`submit_durable`) wait at
    most `durable_linger`: they are committed with whatever else is queued at that
    moment, and calls that arrive during a commit share the next one (group commit).
    At most `queue_size` rows wait in the queue.
    """

    def __init__(
        self,
        open_target: Callable[[bool], BatchTarget],
        name: str,
        *,
        queue_size: int = 10_000,
        batch_max: int = 500,
        linger: float = 0.01,
        durable_linger: float = 0.0,
        required: bool = True,
        retry_interval: float = 1.0,
    ) -> None:
        self.name = name
        self.queue_size = queue_size
        self.batch_max = batch_max
        self.linger = linger
        self.durable_linger = durable_linger
        self.retry_interval = retry_interval
        self.healthy = True
        self.last_error: str | None = None
        self.lost = 0
        # Called on the writer thread with each batch once it is committed (the metrics).
        self.on_written: Callable[[Batch], None] | None = None
        # Called after each write attempt that found the store failing or working again,
        # and with each number of rows lost (the process writer tells the gateway so).
        self.on_health: Callable[[], None] | None = None
        self.on_lost: Callable[[int], None] | None = None
        self.refused = 0  # durable batches refused (their callers were told, nothing lost)
        self.max_queue_depth_seen = 0
        self._open_target = open_target
        self._queue: queue.SimpleQueue[_Item] = queue.SimpleQueue()
        self._queued = 0  # rows in the queue, not yet taken by the thread
        self._lock = threading.Lock()
        # Set for what must not wait out the linger (durable rows, a flush, closing): other
        # rows are queued without waking the thread, which takes them when its linger ends
        # (a thread woken per row competes with the event loop for the interpreter lock:
        # an SSE event cost ~4% more CPU that way, `bench.py --scenario sse`).
        self._urgent = threading.Event()
        self._closing = threading.Event()
        self._opened_once = False
        self._target: BatchTarget | None = None
        if required:
            self._target = self._open()
        self._thread = threading.Thread(target=self._run, name="holdgate-audit", daemon=True)
        self._thread.start()

    @property
    def queue_depth(self) -> int:
        return self._queued

    def submit(self, table: str, row: Row) -> bool:
        """Queue a row; False (and counted lost) when full, failing or closed.

        Raises BadRow for a row that does not fit the schema.
        """
        return self.submit_all([(table, row)])

    def submit_all(self, rows: Batch) -> bool:
        """Queue rows to be written in one commit, all or none; False (all counted lost)
        when they do not all fit, or the store fails, or the writer is closed.

        Raises BadRow for a row that does not fit the schema.
        """
        entry = _Entry([(table, normalize_row(table, row)) for table, row in rows])
        if self.healthy and not self._closing.is_set() and self._put(entry):
            return True
        self._count_lost(len(entry.rows))
        return False

    def submit_durable(self, rows: Batch) -> Future[None]:
        """Queue rows to be committed together; the future is done once they are durable.

        Cancelling the future before the writer takes the rows withdraws them (none is
        written); once taken, they are committed whatever the caller does.
        It fails (and none of the rows is written) with BadRow for a row that does not fit
        the schema or that the store refuses, AuditQueueFull when the queue cannot take all
        of them, WriterClosed, or StoreUnavailable when the store cannot be written.
        Resolved on the writer thread: `asyncio.wrap_future` it to await it on a loop.
        """
        done: Future[None] = Future()
        try:
            entry = _Entry([(table, normalize_row(table, row)) for table, row in rows], done)
        except BadRow as exc:
            done.set_exception(exc)
            return done
        problem: StoreError | None = None
        if self._closing.is_set():
            problem = WriterClosed(f"{self.name}: the audit writer is closing")
        elif not self.healthy:
            problem = StoreUnavailable(f"{self.name}: {self.last_error}")
        elif len(entry.rows) > self.queue_size:
            problem = AuditQueueFull(
                f"{len(entry.rows)} rows are more than the audit queue holds ({self.queue_size})"
            )
        elif not self._put(entry):
            problem = AuditQueueFull(f"the audit queue is full ({self.queue_size} rows)")
        else:
            self._urgent.set()  # its caller waits for the commit: cut the linger short
        if problem is not None:
            with self._lock:
                self.refused += 1
            done.set_exception(problem)
        return done

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until every row queued so far is written; False on timeout or once closed."""
        if self._closing.is_set():
            return False
        marker = threading.Event()
        self._queue.put(marker)
        self._urgent.set()
        return marker.wait(timeout)

    def close(self, timeout: float = 10.0) -> None:
        """Write what is queued (if the store works), then stop the thread."""
        if self._closing.is_set():
            return
        self._closing.set()
        self._queue.put(None)
        self._urgent.set()
        self._thread.join(timeout)

    def _next(self, deadline: float) -> tuple[bool, _Item]:
        """(True, the next queued item), lingering until `deadline` for one; (False, None)
        once it has passed."""
        while True:
            try:
                return True, self._queue.get_nowait()
            except queue.Empty:
                pass
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False, None
            self._urgent.wait(remaining)
            self._urgent.clear()

    def _put(self, entry: _Entry) -> bool:
        """Reserve room for all of the entry's rows and queue it; False when they do not fit."""
        with self._lock:
            depth = self._queued + len(entry.rows)
            if depth > self.queue_size:
                return False
            self._queued = depth
            self.max_queue_depth_seen = max(self.max_queue_depth_seen, depth)
        self._queue.put(entry)
        return True

    def _count_lost(self, n: int) -> None:
        with self._lock:
            self.lost += n
        if self.on_lost is not None and n:
            self.on_lost(n)

    def _open(self) -> BatchTarget:
        target = self._open_target(not self._opened_once)
        self._opened_once = True
        return target

    def _take(self, item: _Entry) -> _Entry:
        with self._lock:
            self._queued -= len(item.rows)
        if item.durable is not None and not item.durable.set_running_or_notify_cancel():
            # Its caller gave up waiting (a write-ahead timeout) and refused the request,
            # which it records itself: written now, these rows would say it went ahead.
            item.durable = None
            item.rows = []
        return item

    def _run(self) -> None:
        entries: list[_Entry] = []
        markers: list[threading.Event] = []
        stopping = False
        if self._target is None:
            self._commit(entries)
        while True:
            try:
                # While failing with nothing in hand, wake up to probe the store.
                item = self._queue.get(timeout=None if self.healthy else self.retry_interval)
            except queue.Empty:
                self._commit(entries)
                continue
            started = time.monotonic()
            rows = 0
            durable = False
            while True:
                if item is None:
                    stopping = True
                elif isinstance(item, threading.Event):
                    markers.append(item)
                else:
                    entries.append(self._take(item))
                    rows += len(item.rows)
                    durable = durable or item.durable is not None
                if stopping or markers or rows >= self.batch_max:
                    break
                linger = self.durable_linger if durable else self.linger
                found, item = self._next(started + linger)
                if not found:
                    break
            entries = self._commit(entries)
            while entries:  # the store is failing: retry what nobody waits for
                if self._closing.wait(self.retry_interval):
                    self._abandon(entries)
                    return
                entries = self._commit(entries)
            for marker in markers:
                marker.set()
            markers = []
            if stopping:
                self._disconnect()
                return

    def _commit(self, entries: list[_Entry]) -> list[_Entry]:
        """One attempt at writing the entries in one transaction (with none while failing:
        a probe write). Returns the entries to retry: [] once written or dropped.

        Rows the store refuses for their content are dropped rather than retried for ever
        (counted lost, or their caller told); when several entries were in the batch, each
        is tried on its own first, so one caller's bad rows never cost another's. While the
        store cannot be written, entries someone waits for fail at once (their requests are
        refused, so their rows must not appear later); the others are returned.
        """
        rows = [row for entry in entries for row in entry.rows]
        try:
            self._write(rows)
        except _BAD_DATA as exc:
            if len(entries) > 1:
                return [kept for entry in entries for kept in self._commit([entry])]
            self.last_error = f"{len(rows)} rows dropped: {type(exc).__name__}: {exc}"
            logger.error("holdgate: audit rows could not be stored: %s", self.last_error)
            for entry in entries:
                if entry.durable is not None:
                    entry.durable.set_exception(BadRow(self.last_error))
                else:
                    self._count_lost(len(entry.rows))
            return []
        except StoreUnavailable as exc:
            for entry in entries:
                if entry.durable is not None:
                    entry.durable.set_exception(exc)
            return [entry for entry in entries if entry.durable is None]
        for entry in entries:
            if entry.durable is not None:
                entry.durable.set_result(None)
        if self.on_written is not None and rows:
            try:
                self.on_written(rows)
            except Exception:  # counting must never stop the writer: the rows are written
                logger.exception("holdgate: the metrics could not count a batch of audit rows")
        return []

    def _write(self, rows: list[tuple[str, Row]]) -> None:
        """Append the rows, or probe the store while failing with nothing to write.

        Raises the row errors as they are, and anything else as StoreUnavailable (after
        marking the writer unhealthy).
        """
        if not rows and self.healthy and self._target is not None:
            return
        try:
            if self._target is None:
                self._target = self._open()
            if rows:
                self._target.append_batch(rows)
            else:
                self._target.probe()
        except _BAD_DATA:
            raise
        except Exception as exc:  # whatever it is, the record is not being kept
            self._disconnect()
            error = f"{type(exc).__name__}: {exc}"
            if self.healthy or error != self.last_error:
                logger.error("holdgate: audit store %s cannot be written: %s", self.name, error)
            self.last_error = error
            self.healthy = False
            if self.on_health is not None:
                self.on_health()
            raise StoreUnavailable(f"{self.name}: {error}") from exc
        if not self.healthy:
            logger.warning("holdgate: audit store %s writable again", self.name)
            self.healthy = True
            if self.on_health is not None:
                self.on_health()

    def _disconnect(self) -> None:
        if self._target is not None:
            with suppress(StoreError):
                self._target.close()
            self._target = None

    def _abandon(self, entries: list[_Entry]) -> None:
        """Closing while the store fails: count what was never written, tell who waits."""
        lost = sum(len(entry.rows) for entry in entries)
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if isinstance(item, _Entry):
                self._take(item)
                if item.durable is not None:
                    item.durable.set_exception(WriterClosed(f"{self.name}: closed while failing"))
                else:
                    lost += len(item.rows)
        self._count_lost(lost)
        self._disconnect()
