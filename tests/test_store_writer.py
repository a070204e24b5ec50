"""The writer's durable path: `submit_durable` resolves once its rows are committed, calls
share commits, a batch goes in whole or not at all, and rows whose caller was told "no"
never appear later. Each test runs with the thread writer and the process writer
(`ProcessAuditWriter`), but those that patch the store in this process."""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future, wait
from pathlib import Path
from typing import Any

import pytest

from holdgate import store
from holdgate.store import sql_store
from holdgate.store.writer import AuditQueueFull, WriterClosed


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "audit.sqlite3"


@pytest.fixture(params=["thread", "process"])
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def writer_for(path: Path, kind: str = "thread", **options: Any) -> store.Writer:
    busy_timeout = options.pop("busy_timeout", 5.0)
    if kind == "process":
        target = {"backend": "sqlite", "path": str(path), "busy_timeout": busy_timeout}
        return store.ProcessAuditWriter(target, str(path), **options)
    return store.AuditWriter(
        lambda create: store.SqliteStore(path, create=create, busy_timeout=busy_timeout),
        str(path),
        **options,
    )


@pytest.fixture
def commits(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """The size of every batch the writer commits."""
    sizes: list[int] = []
    real = store.SqliteStore.append_batch

    def spy(self: store.SqliteStore, rows: Any) -> None:
        real(self, rows)
        sizes.append(len(rows))

    monkeypatch.setattr(store.SqliteStore, "append_batch", spy)
    yield sizes


def event(flow: str, **extra: Any) -> tuple[str, dict[str, Any]]:
    return (
        "events",
        {"flow_id": flow, "session_id": "s1", "direction": "request", "decision": "allow", **extra},
    )


def flows(path: Path) -> list[str]:
    with sqlite3.connect(path) as conn:
        return [f for (f,) in conn.execute("SELECT flow_id FROM events ORDER BY seq")]


def error_of(future: Future[None]) -> BaseException | None:
    return future.exception(timeout=10)


def test_a_durable_batch_is_committed_when_its_future_resolves(path: Path, kind: str) -> None:
    writer = writer_for(path, kind)
    done = writer.submit_durable([event("a"), event("b")])
    assert error_of(done) is None
    assert flows(path) == ["a", "b"]  # visible to another connection: committed
    writer.close()
    with store.SqliteStore(path) as db:
        assert db.verify().ok


def test_concurrent_callers_share_commits(path: Path, commits: list[int]) -> None:
    writer = writer_for(path, busy_timeout=30)
    lock = sqlite3.connect(path, isolation_level=None)
    lock.execute("BEGIN EXCLUSIVE")  # the first commit waits; the other 63 queue behind it
    futures = [writer.submit_durable([event(f"f{i}")]) for i in range(64)]
    lock.execute("ROLLBACK")
    lock.close()
    wait(futures, timeout=10)
    assert all(error_of(f) is None for f in futures)
    assert sum(commits) == 64 and len(commits) <= 3
    assert flows(path) == [f"f{i}" for i in range(64)]  # in the order they were submitted
    writer.close()


def test_a_durable_call_does_not_wait_for_the_linger(path: Path, kind: str) -> None:
    """Rows nobody waits for are queued without waking the writer; a durable call, a flush
    and closing wake it (each would otherwise wait out the 60 s linger)."""
    writer = writer_for(path, kind, linger=60.0)
    assert writer.submit("events", event("queued")[1])  # would wait 60 s for company
    time.sleep(0.05)  # the writer took it and lingers
    done = writer.submit_durable([event("now")])
    assert done.exception(timeout=5) is None and flows(path) == ["queued", "now"]
    assert writer.submit("events", event("later")[1])
    time.sleep(0.05)
    assert writer.flush(timeout=5) and flows(path) == ["queued", "now", "later"]
    assert writer.submit("events", event("last")[1])
    time.sleep(0.05)
    began = time.monotonic()
    writer.close(timeout=5)
    assert time.monotonic() - began < 5 and flows(path)[-1] == "last"


def test_a_batch_larger_than_the_queue_is_refused_whole(path: Path, kind: str) -> None:
    writer = writer_for(path, kind, queue_size=3)
    refused = writer.submit_durable([event(f"b{i}") for i in range(4)])
    assert isinstance(error_of(refused), AuditQueueFull)
    assert error_of(writer.submit_durable([event(f"ok{i}") for i in range(3)])) is None
    writer.close()
    assert flows(path) == ["ok0", "ok1", "ok2"] and writer.refused == 1


def test_a_full_queue_refuses_a_batch_that_does_not_fit(path: Path, kind: str) -> None:
    writer = writer_for(path, kind, queue_size=4, busy_timeout=30)
    lock = sqlite3.connect(path, isolation_level=None)
    lock.execute("BEGIN EXCLUSIVE")
    first = writer.submit_durable([event("in-hand")])  # taken by the thread, waiting
    assert writer.flush(0.2) is False
    queued = writer.submit_durable([event("q1"), event("q2"), event("q3")])
    refused = writer.submit_durable([event("x1"), event("x2")])  # 3 + 2 > 4: none of it
    assert isinstance(error_of(refused), AuditQueueFull)
    lock.execute("ROLLBACK")
    lock.close()
    assert error_of(first) is None and error_of(queued) is None
    writer.close()
    assert flows(path) == ["in-hand", "q1", "q2", "q3"]


def test_a_failing_store_fails_the_waiting_calls_and_never_writes_their_rows(
    path: Path,
    kind: str,
) -> None:
    writer = writer_for(path, kind, busy_timeout=0.2, retry_interval=0.05)
    lock = sqlite3.connect(path, isolation_level=None)
    lock.execute("BEGIN EXCLUSIVE")
    kept = writer.submit("events", event("best-effort")[1])
    done = writer.submit_durable([event("refused")])
    failure = error_of(done)
    assert isinstance(failure, store.StoreUnavailable) and "locked" in str(failure)
    assert not writer.healthy
    later = writer.submit_durable([event("while-failing")])  # refused at once
    assert isinstance(error_of(later), store.StoreUnavailable)
    lock.execute("ROLLBACK")
    lock.close()
    assert kept and writer.flush(10) and writer.healthy
    assert error_of(writer.submit_durable([event("after")])) is None
    writer.close()
    # rows nobody waits for are retried; rows whose caller was refused never appear
    assert flows(path) == ["best-effort", "after"]


def test_one_callers_bad_rows_do_not_sink_the_others(
    path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = sql_store.append_rows

    def refuse_bad(conn: sqlite3.Connection, items: Any) -> list[int]:
        if any(row.get("flow_id") == "bad" for _, row in items):
            raise sqlite3.IntegrityError("CHECK constraint failed")
        return real(conn, items)

    monkeypatch.setattr(sql_store, "append_rows", refuse_bad)
    writer = writer_for(path, busy_timeout=30)
    lock = sqlite3.connect(path, isolation_level=None)
    lock.execute("BEGIN EXCLUSIVE")
    blocker = writer.submit_durable([event("first")])
    assert writer.flush(0.2) is False  # the thread holds "first"; the next three queue up
    good = writer.submit_durable([event("good")])
    bad = writer.submit_durable([event("bad"), event("with-bad")])
    also_good = writer.submit_durable([event("also-good")])
    lock.execute("ROLLBACK")
    lock.close()
    assert error_of(blocker) is None and error_of(good) is None and error_of(also_good) is None
    assert isinstance(error_of(bad), store.BadRow)
    writer.close()
    assert flows(path) == ["first", "good", "also-good"]


def test_a_row_that_does_not_fit_the_schema_fails_the_call(path: Path, kind: str) -> None:
    writer = writer_for(path, kind)
    done = writer.submit_durable([event("a"), ("events", {"token": "secret"})])
    assert isinstance(error_of(done), store.BadRow)
    writer.close()
    assert flows(path) == []


def test_a_closed_writer_refuses_durable_rows(path: Path, kind: str) -> None:
    writer = writer_for(path, kind)
    writer.close()
    assert isinstance(error_of(writer.submit_durable([event("late")])), WriterClosed)


def test_submit_all_takes_every_row_or_none(path: Path, kind: str) -> None:
    writer = writer_for(path, kind, queue_size=3, busy_timeout=30)
    lock = sqlite3.connect(path, isolation_level=None)
    lock.execute("BEGIN EXCLUSIVE")
    assert writer.submit_all([event("hand")])
    assert writer.flush(0.2) is False
    assert writer.submit_all([event("a"), event("b")])
    assert not writer.submit_all([event("c"), event("d")]) and writer.lost == 2
    lock.execute("ROLLBACK")
    lock.close()
    assert writer.flush(10)
    writer.close()
    assert flows(path) == ["hand", "a", "b"]


def test_durable_calls_from_many_threads_all_land_once(path: Path, kind: str) -> None:
    writer = writer_for(path, kind)
    results: list[BaseException | None] = []

    def caller(n: int) -> None:
        for i in range(20):
            results.append(error_of(writer.submit_durable([event(f"t{n}-{i}")])))

    threads = [threading.Thread(target=caller, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    writer.close()
    assert results == [None] * 160
    assert sorted(flows(path)) == sorted(f"t{n}-{i}" for n in range(8) for i in range(20))


def test_rows_whose_caller_gave_up_before_they_were_taken_are_never_written(
    path: Path,
    kind: str,
) -> None:
    """A write-ahead timeout cancels the wait and refuses the request, recording that
    itself: the rows it withdrew must not land later saying the request went ahead."""
    writer = writer_for(path, kind, busy_timeout=30)
    lock = sqlite3.connect(path, isolation_level=None)
    lock.execute("BEGIN EXCLUSIVE")
    in_hand = writer.submit_durable([event("in-hand")])  # taken by the thread, waiting
    assert writer.flush(0.2) is False
    withdrawn = writer.submit_durable([event("withdrawn")])
    assert withdrawn.cancel()  # still queued: the caller's timeout cancels it
    later = writer.submit_durable([event("later")])
    lock.execute("ROLLBACK")
    lock.close()
    assert error_of(in_hand) is None and error_of(later) is None
    writer.close()
    assert flows(path) == ["in-hand", "later"]
    assert writer.lost == 0
