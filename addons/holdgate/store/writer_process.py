"""`ProcessAuditWriter`: the audit writer in a process of its own, so that the gateway's
event loop does nothing but decide.

The thread writer (`writer.AuditWriter`) hashes rows into the chain and writes them on a
thread of the gateway, holding the interpreter lock the event loop needs. This one checks
rows as it does (`normalize_row`: a bad row still fails at once) and hands them to
a child process (`main`), which runs an `AuditWriter` of its own: batching,
group commit, retry and failure are one code.

The loop only queues. A feeder thread sends what gathered as one frame (orjson, in
`holdgate.frames`) on the child's stdin, woken once per linger as the writer's thread is;
a reader thread takes the child's answers from its stdout: each commit in one (its rows,
with the columns `on_written` listeners read, and the durable batches it holds, by id),
durable batches failed, rows lost, health, log lines. Where the store is, a password
included, travels in the first frame, never in argv or the environment.

Fail closed: when the child dies, `healthy` turns False, every durable batch it held fails
(its request is refused), the other rows are counted lost, and a new child is started
after `retry_interval` (it may not create the store: one that vanished is not recreated
empty). The child ends when its stdin closes (the gateway closing, or dying) after writing
what it holds, so it never outlives the gateway. A frame it cannot read is refused whole
and ends it the same way: the gateway fails what it waited for and starts another.
"""

from __future__ import annotations

import itertools
import logging
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, InvalidStateError
from contextlib import suppress
from dataclasses import dataclass
from functools import partial
from typing import IO, Any, BinaryIO

import orjson

from holdgate.frames import Frames, child_env, framed
from holdgate.store.chain import normalize_row
from holdgate.store.errors import BadRow, StoreError, StoreUnavailable
from holdgate.store.rows import Row
from holdgate.store.writer import (
    AuditQueueFull,
    AuditWriter,
    Batch,
    BatchTarget,
    WriterClosed,
)

logger = logging.getLogger("holdgate")

Target = dict[str, Any]  # how the child opens the store (`open_target`); may hold a password
# The columns of committed rows sent back for `on_written` (what `metrics.count_rows` reads).
WRITTEN_COLUMNS = ("direction", "decision", "upstream", "rule", "flow_id", "masked", "extra")
_FAILURES: dict[str, type[StoreError]] = {
    kind.__name__: kind for kind in (BadRow, StoreUnavailable, AuditQueueFull, WriterClosed)
}
START_TIMEOUT = 30.0  # for the child to answer whether it opened the store
MALFORMED = 2  # the child's exit status after refusing a frame it could not read
CHILD = "from holdgate.store.writer_process import main; main()"
PIPE_SIZE = 1 << 16  # answers are read this much at once: what a pipe holds


def open_target(target: Target, create: bool) -> BatchTarget:
    """A connection of the child's own to the store `target` names."""
    if target["backend"] == "sqlite":
        from holdgate.store.sqlite_store import SqliteStore

        return SqliteStore(target["path"], create=create, busy_timeout=target["busy_timeout"])
    from holdgate.store.postgres_store import PostgresStore

    return PostgresStore(target["url"], create=create, connect_timeout=target["connect_timeout"])


@dataclass(eq=False, slots=True)
class _Entry:
    """Rows to commit together, handed to the child of `generation`."""

    id: int
    generation: int
    rows: list[tuple[str, Row]]
    durable: Future[None] | None


# An entry, a ready message (["c", id] withdraws an entry, ["f", token, timeout] flushes),
# or None: close.
_Item = _Entry | list[Any] | None


class ProcessAuditWriter:
    """`AuditWriter`'s surface, its work done by a child process (see the module's doc).

    `queue_depth` counts the rows handed over and not yet written or dropped, wherever
    they are (queued here, in the pipe, in the child); at most `queue_size`. Durable
    futures are resolved on the reader thread. Cancelling one withdraws its rows unless
    the child's writer has taken them.
    """

    def __init__(
        self,
        target: Target,
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
        self.refused = 0
        self.max_queue_depth_seen = 0
        # Called on the reader thread with each committed batch: (table, WRITTEN_COLUMNS).
        self.on_written: Callable[[Batch], None] | None = None
        self._target = target
        self._options = {
            "queue_size": queue_size,
            "batch_max": batch_max,
            "linger": linger,
            "durable_linger": durable_linger,
            "retry_interval": retry_interval,
        }
        self._opened_once = False
        self._lock = threading.Lock()
        self._queue: queue.SimpleQueue[_Item] = queue.SimpleQueue()
        # Set for what must not wait out the linger (as `AuditWriter._urgent`).
        self._urgent = threading.Event()
        self._closing = threading.Event()
        self._outstanding = 0
        self._pending: dict[int, _Entry] = {}  # durable entries not yet answered, by id
        self._flushes: dict[int, tuple[threading.Event, list[bool]]] = {}
        self._ids = itertools.count(1)
        self._generation = 0
        self._process: subprocess.Popen[bytes] | None = None
        self._replies: Frames[bytes] | None = None
        self._process, self._replies = self._start(required)
        self._feeder = threading.Thread(target=self._feed, name="holdgate-audit-feed", daemon=True)
        self._reader = threading.Thread(
            target=self._read, name="holdgate-audit-replies", daemon=True
        )
        self._feeder.start()
        self._reader.start()

    @property
    def queue_depth(self) -> int:
        return self._outstanding

    @property
    def pid(self) -> int | None:
        """The child's process id (None while it is being restarted)."""
        process = self._process
        return process.pid if process is not None else None

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
        normalized = [(table, normalize_row(table, row)) for table, row in rows]
        if self.healthy and not self._closing.is_set():
            entry = self._reserve(normalized, None)
            if isinstance(entry, _Entry):
                self._queue.put(entry)
                return True
        self._count_lost(len(normalized))
        return False

    def submit_durable(self, rows: Batch) -> Future[None]:
        """Queue rows to be committed together; the future is done once they are durable.

        Fails (and none of the rows is written) as `AuditWriter.submit_durable` does, and
        with StoreUnavailable when the child process dies before it answered.
        """
        done: Future[None] = Future()
        try:
            normalized = [(table, normalize_row(table, row)) for table, row in rows]
        except BadRow as exc:
            done.set_exception(exc)
            return done
        problem: StoreError | None = None
        if not normalized:
            done.set_result(None)  # nothing to write (the child answers commits of rows)
        elif self._closing.is_set():
            problem = WriterClosed(f"{self.name}: the audit writer is closing")
        elif not self.healthy:
            problem = StoreUnavailable(f"{self.name}: {self.last_error}")
        elif len(normalized) > self.queue_size:
            problem = AuditQueueFull(
                f"{len(normalized)} rows are more than the audit queue holds ({self.queue_size})"
            )
        else:
            entry = self._reserve(normalized, done)
            if isinstance(entry, _Entry):
                done.add_done_callback(partial(self._withdraw, entry.id))
                self._queue.put(entry)
                self._urgent.set()  # its caller waits for the commit: cut the linger short
            else:
                problem = entry
        if problem is not None:
            with self._lock:
                self.refused += 1
            done.set_exception(problem)
        return done

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until every row queued so far is written; False on timeout or once closed."""
        if self._closing.is_set():
            return False
        token = next(self._ids)
        done, result = threading.Event(), [False]
        with self._lock:
            if self._process is None:
                return False
            self._flushes[token] = (done, result)
        self._queue.put(["f", token, timeout])
        self._urgent.set()
        done.wait(timeout)
        with self._lock:
            self._flushes.pop(token, None)
        return result[0]

    def close(self, timeout: float = 10.0) -> None:
        """Write what is queued (if the store works), then stop the child."""
        if self._closing.is_set():
            return
        self._closing.set()
        self._queue.put(None)
        self._urgent.set()
        self._feeder.join(timeout)
        with self._lock:
            process = self._process
        if process is not None and process.stdin is not None:
            with suppress(OSError):
                process.stdin.close()
        self._reader.join(timeout)
        if self._reader.is_alive() and process is not None:
            _log(logging.ERROR, "holdgate: the audit writer process did not finish in %ss", timeout)
            process.kill()
            self._reader.join(5)

    # --- the gateway's side ---

    def _reserve(
        self, rows: list[tuple[str, Row]], durable: Future[None] | None
    ) -> _Entry | StoreError:
        """Room for all of the rows, in the running child's generation."""
        with self._lock:
            if self._process is None:
                why = self.last_error or "the audit writer process is starting"
                return StoreUnavailable(f"{self.name}: {why}")
            depth = self._outstanding + len(rows)
            if depth > self.queue_size:
                return AuditQueueFull(f"the audit queue is full ({self.queue_size} rows)")
            self._outstanding = depth
            self.max_queue_depth_seen = max(self.max_queue_depth_seen, depth)
            entry = _Entry(next(self._ids), self._generation, rows, durable)
            if durable is not None:
                self._pending[entry.id] = entry
        return entry

    def _withdraw(self, entry_id: int, future: Future[None]) -> None:
        """A durable future cancelled (its caller gave up): the child need not write it."""
        if future.cancelled():
            self._queue.put(["c", entry_id])
            self._urgent.set()

    def _count_lost(self, n: int) -> None:
        with self._lock:
            self.lost += n

    def _start(self, required: bool) -> tuple[subprocess.Popen[bytes], Frames[bytes]]:
        """A child, once it answered whether it opened the store. Raises StoreUnavailable
        if it cannot be started, or (`required`) cannot open the store."""
        try:
            process = subprocess.Popen(
                [sys.executable, "-c", CHILD],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                env=child_env(),
            )
        except OSError as exc:
            error = f"{self.name}: cannot start the audit writer process: {exc}"
            raise StoreUnavailable(error) from exc
        assert process.stdin is not None and process.stdout is not None
        replies = Frames(process.stdout, bytes, PIPE_SIZE)
        first = {
            "target": self._target,
            "name": self.name,
            "create": not self._opened_once,
            "required": required,
            **self._options,
        }
        try:
            process.stdin.write(framed(orjson.dumps(first)))
            process.stdin.flush()
            opened = self._first_answer(replies)
        except (OSError, ValueError, StoreError) as exc:
            process.kill()
            process.wait()
            if isinstance(exc, StoreError):
                raise
            raise StoreUnavailable(f"{self.name}: the audit writer process failed: {exc}") from exc
        if opened[0] == "unavailable":
            process.wait()
            raise StoreUnavailable(str(opened[1]))
        return process, replies

    def _first_answer(self, replies: Frames[bytes]) -> list[Any]:
        """["ready", healthy, last_error] (applied) or ["unavailable", error]; what came
        with it (log lines, health) is handled in order."""
        deadline = time.monotonic() + START_TIMEOUT
        opened: list[Any] | None = None
        while opened is None and (remaining := deadline - time.monotonic()) > 0:
            if replies.ended:
                break
            for payload in replies.read(remaining):
                answer = orjson.loads(payload)
                if opened is None and answer[0] == "ready":
                    opened = list(answer)
                    self._health(bool(answer[1]), answer[2])
                elif opened is None and answer[0] == "unavailable":
                    opened = list(answer)
                else:
                    self._answer(answer)
        if opened is not None:
            return opened
        how = "exited" if replies.ended else f"did not answer in {START_TIMEOUT:.0f}s"
        raise StoreUnavailable(
            f"{self.name}: the audit writer process {how} before opening the store "
            "(see the gateway log)"
        )

    def _health(self, healthy: bool, error: str | None) -> None:
        self.last_error = error
        self.healthy = healthy
        if healthy:
            self._opened_once = True

    def _feed(self) -> None:
        """Send what gathered, one frame per linger (at once for what someone waits for)."""
        while True:
            items = [self._queue.get()]
            started = time.monotonic()
            rows, urgent = 0, False
            while True:
                item = items[-1]
                if item is None or isinstance(item, list):
                    urgent = True
                else:
                    rows += len(item.rows)
                    urgent = urgent or item.durable is not None
                if item is None or rows >= self.batch_max:
                    break
                found, item = self._next(started + (self.durable_linger if urgent else self.linger))
                if not found:
                    break
                items.append(item)
            self._send(items)
            if items[-1] is None:
                return

    def _next(self, deadline: float) -> tuple[bool, _Item]:
        """(True, the next queued item), waiting until `deadline` for one; (False, None)
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

    def _send(self, items: list[_Item]) -> None:
        messages: list[Any] = []
        entries: list[_Entry] = []
        with self._lock:
            generation, process = self._generation, self._process
            for item in items:
                if isinstance(item, list):
                    messages.append(item)
                elif item is None or item.generation != generation:
                    continue  # closing, or its child died: the reader settled it
                elif item.durable is not None and item.durable.cancelled():
                    self._pending.pop(item.id, None)  # withdrawn before it was sent
                    self._outstanding -= len(item.rows)
                else:
                    entries.append(item)
                    messages.append(["e", item.id, item.durable is not None, item.rows])
        if not messages or process is None or process.stdin is None:
            return
        try:
            payload = orjson.dumps(messages)
        except orjson.JSONEncodeError as exc:  # normalized rows always encode: never seen
            self._unsent(entries, f"audit rows could not be handed over: {exc}")
            return
        try:
            process.stdin.write(framed(payload))
            process.stdin.flush()
        except (OSError, ValueError):
            pass  # the child is gone: the reader settles what it held

    def _unsent(self, entries: list[_Entry], error: str) -> None:
        """Entries that could not be sent: refused (durable) or lost, as bad rows are."""
        _log(logging.ERROR, "holdgate: %s", error)
        with self._lock:
            for entry in entries:
                self._pending.pop(entry.id, None)
                self._outstanding -= len(entry.rows)
                if entry.durable is None:
                    self.lost += len(entry.rows)
        for entry in entries:
            if entry.durable is not None:
                _resolve(entry.durable, BadRow(error))

    def _read(self) -> None:
        """The child's answers, until it ends; then settle what it held and start another."""
        while True:
            process, replies = self._process, self._replies
            assert process is not None and replies is not None
            while not replies.ended:
                for payload in replies.read(None):
                    try:
                        self._answer(orjson.loads(payload))
                    except Exception as exc:  # noqa: BLE001 - a broken child, not a dead reader
                        _log(logging.ERROR, "holdgate: unreadable audit writer answer: %s", exc)
                        process.kill()  # its end settles what it held
            self._ended(process.wait())
            failed = ""
            while not self._closing.wait(self.retry_interval):
                try:
                    started = self._start(required=False)
                except StoreUnavailable as exc:
                    if str(exc) != failed:  # once per kind of failure, not every retry
                        _log(logging.ERROR, "holdgate: %s", exc)
                    failed = str(exc)
                    continue
                with self._lock:
                    self._process, self._replies = started
                if self._closing.is_set() and started[0].stdin is not None:
                    started[0].stdin.close()  # closed while it started: it ends at once
                _log(
                    logging.WARNING,
                    "holdgate: audit writer process restarted (%s)",
                    "store writable" if self.healthy else f"store failing: {self.last_error}",
                )
                break
            else:
                return

    def _answer(self, answer: list[Any]) -> None:
        match answer:
            case ["err", int(entry_id), str(kind), str(text), refused]:
                self._settle(entry_id, _FAILURES.get(kind, StoreUnavailable)(text))
                if refused:
                    with self._lock:
                        self.refused += 1
            case ["cancelled", int(entry_id)]:
                self._settle(entry_id, None, withdrawn=True)
            case ["written", list(rows), list(committed)]:
                with self._lock:
                    self._outstanding -= len(rows)
                for entry_id in committed:
                    self._settle(int(entry_id), None)
                self._written([(table, row) for table, row in rows])
            case ["lost", int(n)]:
                with self._lock:
                    self._outstanding -= n
                    self.lost += n
            case ["health", bool(healthy), error]:
                self._health(healthy, error)
            case ["flushed", int(token), bool(ok)]:
                with self._lock:
                    waiting = self._flushes.pop(token, None)
                if waiting is not None:
                    waiting[1][0] = ok
                    waiting[0].set()
            case ["log", int(level), str(text)]:
                _log(level, "%s", text)
            case _:
                raise ValueError(f"unknown answer {str(answer)[:80]}")

    def _settle(self, entry_id: int, error: StoreError | None, withdrawn: bool = False) -> None:
        """A durable entry answered: committed (its rows came as written), failed or withdrawn."""
        with self._lock:
            entry = self._pending.pop(entry_id, None)
            if entry is None:
                return
            if error is not None or withdrawn:
                self._outstanding -= len(entry.rows)
        if not withdrawn:
            assert entry.durable is not None
            _resolve(entry.durable, error)

    def _written(self, rows: Batch) -> None:
        if self.on_written is None or not rows:
            return
        try:
            self.on_written(rows)
        except Exception:  # counting must never stop the reader: the rows are written
            text = "holdgate: the metrics could not count a batch of audit rows"
            _log(logging.ERROR, text, exc_info=True)

    def _ended(self, status: int) -> None:
        """The child ended: what it held is settled (durable entries fail, the others are
        lost); unless closing, the writer is unhealthy until another child is running."""
        closing = self._closing.is_set()
        how = f"killed by signal {-status}" if status < 0 else f"exit status {status}"
        error = f"the audit writer process ended ({how})"
        with self._lock:
            self._generation += 1
            self._process = None
            pending, self._pending = self._pending, {}
            flushes, self._flushes = self._flushes, {}
            lost = self._outstanding - sum(len(e.rows) for e in pending.values())
            self._outstanding = 0
            self.lost += lost
            if not closing:
                self.healthy = False
                self.last_error = error
        failure: StoreError = (
            WriterClosed(f"{self.name}: {error} while closing")
            if closing
            else StoreUnavailable(f"{self.name}: {error}")
        )
        for entry in pending.values():
            assert entry.durable is not None
            _resolve(entry.durable, failure)
        for done, _ in flushes.values():
            done.set()
        if not closing:
            _log(
                logging.ERROR,
                "holdgate: %s: %d waiting batches refused, %d rows lost; restarting it in %ss",
                error,
                len(pending),
                lost,
                self.retry_interval,
            )
        elif lost or pending or status:
            _log(
                logging.ERROR,
                "holdgate: the audit writer process closed (%s): %d rows not written",
                how,
                lost + sum(len(e.rows) for e in pending.values()),
            )


def _log(level: int, text: str, *args: object, exc_info: bool = False) -> None:
    """Log from the feeder or reader thread: a log handler that fails (one bound to an event
    loop already closed, at shutdown) must not end the thread that fails what waits."""
    with suppress(Exception):
        logger.log(level, text, *args, exc_info=exc_info)


def _resolve(future: Future[None], error: StoreError | None) -> None:
    with suppress(InvalidStateError):  # its caller cancelled it
        if error is None:
            future.set_result(None)
        else:
            future.set_exception(error)


# --- the child ---


class _Answers:
    """Frames to the gateway, from any of the child's threads; none once it is gone."""

    def __init__(self, out: IO[bytes]) -> None:
        self.out = out
        self._lock = threading.Lock()

    def send(self, answer: list[Any]) -> None:
        data = framed(orjson.dumps(answer))
        with self._lock, suppress(OSError, ValueError):
            self.out.write(data)
            self.out.flush()


class _ToGateway(logging.Handler):
    """The child's log lines, handed to the gateway's log."""

    def __init__(self, answers: _Answers) -> None:
        super().__init__(logging.INFO)
        self.answers = answers

    def emit(self, record: logging.LogRecord) -> None:
        self.answers.send(["log", record.levelno, self.format(record)])


class _Serving:
    """The child's writer and the durable entries it has not answered yet."""

    def __init__(self, config: dict[str, Any], answers: _Answers) -> None:
        self.answers = answers
        self.target: Target = config["target"]
        self.name = str(config["name"])
        self.create = bool(config["create"])
        self.required = bool(config["required"])
        self.options = {
            key: config[key]
            for key in ("queue_size", "batch_max", "linger", "durable_linger", "retry_interval")
        }
        self.retry_interval = float(config["retry_interval"])
        self.writer: AuditWriter | None = None
        self.last_error: str | None = None
        self.next_try = 0.0
        self.waiting: dict[int, Future[None]] = {}
        # Durable entries committed, told with their batch's rows (one answer per commit).
        self.committed: list[int] = []

    def open(self, first: bool) -> bool:
        """Open the store (False: it is required and cannot be). Answers `ready` first."""
        if time.monotonic() < self.next_try:
            return True
        try:
            writer = AuditWriter(self._open_target, self.name, required=True, **self.options)
        except Exception as exc:  # whatever it is, the store cannot be written
            error = f"{type(exc).__name__}: {exc}"
            self.next_try = time.monotonic() + self.retry_interval
            if first and self.required:
                self.answers.send(["unavailable", f"{self.name}: {error}"])
                return False
            if first:
                self.answers.send(["ready", False, error])
            elif error != self.last_error:
                self.answers.send(["health", False, error])
            self.last_error = error
            return True
        writer.on_written = self._written
        writer.on_health = lambda: self.answers.send(["health", writer.healthy, writer.last_error])
        writer.on_lost = lambda n: self.answers.send(["lost", n])
        self.writer = writer
        self.answers.send(["ready", True, None] if first else ["health", True, None])
        return True

    def _open_target(self, create: bool) -> BatchTarget:
        target = open_target(self.target, create and self.create)
        self.create = False
        return target

    def take(self, payload: bytes) -> bool:
        """Act on one frame; False (none of it done) when it cannot be read."""
        try:
            messages = _checked(orjson.loads(payload))
        except (ValueError, TypeError) as exc:
            logger.error(
                "holdgate: the audit writer process got a malformed frame (%s): none of it "
                "is written; it ends, and the gateway refuses what waited and starts another",
                exc,
            )
            return False
        for message in messages:
            if message[0] == "e":
                self._entry(message[1], message[2], [(t, r) for t, r in message[3]])
            elif message[0] == "c":
                if (future := self.waiting.get(message[1])) is not None:
                    future.cancel()
            else:
                self._flush(message[1], message[2])
        return True

    def _entry(self, entry_id: int, durable: bool, rows: list[tuple[str, Row]]) -> None:
        writer = self.writer
        if not durable:
            if writer is None:
                self.answers.send(["lost", len(rows)])
                return
            try:
                writer.submit_all(rows)  # refused: counted lost, and told, by `on_lost`
            except BadRow as exc:
                logger.error("holdgate: audit rows could not be stored: %s", exc)
                self.answers.send(["lost", len(rows)])
            return
        if writer is None:
            error = f"{self.name}: {self.last_error}"
            self.answers.send(["err", entry_id, "StoreUnavailable", error, True])
            return
        before = writer.refused
        future = writer.submit_durable(rows)
        refused = writer.refused > before
        self.waiting[entry_id] = future
        future.add_done_callback(lambda f: self._answer(entry_id, refused, f))

    def _answer(self, entry_id: int, refused: bool, future: Future[None]) -> None:
        self.waiting.pop(entry_id, None)
        if future.cancelled():
            self.answers.send(["cancelled", entry_id])
        elif (error := future.exception()) is None:
            self.committed.append(entry_id)  # on the writer thread, before `_written`
        else:
            self.answers.send(["err", entry_id, type(error).__name__, str(error), refused])

    def _flush(self, token: int, timeout: float) -> None:
        writer = self.writer
        if writer is None:
            self.answers.send(["flushed", token, False])
            return

        def wait() -> None:
            self.answers.send(["flushed", token, writer.flush(timeout)])

        threading.Thread(target=wait, name="holdgate-audit-flush", daemon=True).start()

    def _written(self, rows: Batch) -> None:
        sent = [
            (table, {k: row[k] for k in WRITTEN_COLUMNS if k in row} if table == "events" else {})
            for table, row in rows
        ]
        committed, self.committed = self.committed, []
        self.answers.send(["written", sent, committed])

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def _checked(messages: Any) -> list[list[Any]]:
    """The frame's messages, each of a known shape; ValueError for any that is not."""
    if not isinstance(messages, list):
        raise ValueError("a frame is a list of messages")
    for message in messages:
        match message:
            case ["e", int(), bool(), list(rows)] if rows and all(_is_row(row) for row in rows):
                pass
            case ["c", int()] | ["f", int(), int() | float()]:
                pass
            case _:
                raise ValueError(f"unknown message {str(message)[:80]}")
    return messages


def _is_row(row: Any) -> bool:
    return (
        isinstance(row, list)
        and len(row) == 2
        and isinstance(row[0], str)
        and isinstance(row[1], dict)
    )


def serve(frames: BinaryIO, out: IO[bytes]) -> int:
    """The child: open the store the first frame names, then take frames until the input
    ends; write what is held, and return the exit status."""
    answers = _Answers(out)
    handler = _ToGateway(answers)
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    source: Frames[bytes] = Frames(frames, bytes)
    payloads: list[bytes] = []
    while not payloads and not source.ended:
        payloads = source.read(None)
    if not payloads:
        return 0
    try:
        config = orjson.loads(payloads[0])
        serving = _Serving(config, answers)
    except (ValueError, TypeError, KeyError) as exc:
        logger.error("holdgate: the audit writer process got no store to open (%s)", exc)
        return MALFORMED
    if not serving.open(first=True):
        return 0
    payloads = payloads[1:]
    while True:
        for payload in payloads:
            if not serving.take(payload):
                serving.close()
                return MALFORMED
        if source.ended:
            break
        payloads = source.read(None if serving.writer is not None else serving.retry_interval)
        if serving.writer is None:
            serving.open(first=False)
    serving.close()
    return 0


def main() -> None:
    """The child's entry point (`CHILD`): frames on stdin, answers on stdout."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is for the gateway, which drains us
    answers_out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # a stray print goes to stderr, never into the answers
    sys.exit(serve(sys.stdin.buffer, answers_out))
