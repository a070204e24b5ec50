"""The audit writer in a process of its own (`ProcessAuditWriter`), against a real SQLite
file: what only a child process can do wrong. The child killed under it (what it held is
refused or counted lost, never written later; another child is started), the gateway
killed (the child writes what it holds and ends), a malformed frame (refused whole), rows
the store refuses, a password never in the child's argv or environment. The behaviour it
shares with the thread writer is tested with both in test_store_writer.py."""

from __future__ import annotations

import io
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import orjson
import pytest

from holdgate import store
from holdgate.frames import framed
from holdgate.store.writer_process import MALFORMED, ProcessAuditWriter, serve


def writer_for(path: Path, **options: Any) -> ProcessAuditWriter:
    busy_timeout = options.pop("busy_timeout", 5.0)
    target = {"backend": "sqlite", "path": str(path), "busy_timeout": busy_timeout}
    return ProcessAuditWriter(target, str(path), **options)


def event(flow: str) -> tuple[str, dict[str, Any]]:
    return ("events", {"flow_id": flow, "session_id": "s1", "direction": "request"})


def flows(path: Path) -> list[str]:
    with sqlite3.connect(path) as conn:
        return [f for (f,) in conn.execute("SELECT flow_id FROM events ORDER BY seq")]


def wait_until(check: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.02)
    return check()


def error_of(future: Future[None]) -> BaseException | None:
    return future.exception(timeout=10)


def gone(pid: int) -> bool:
    """The process has ended (a zombie left to a parent that does not reap counts)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return True
    return state in ("Z", "X")


def test_a_killed_child_fails_what_it_held_and_another_is_started(tmp_path: Path) -> None:
    path = tmp_path / "audit.sqlite3"
    writer = writer_for(path, busy_timeout=30, retry_interval=0.05)
    assert error_of(writer.submit_durable([event("before")])) is None
    lock = sqlite3.connect(path, isolation_level=None)
    lock.execute("BEGIN EXCLUSIVE")  # the child's next commit waits here
    held = writer.submit_durable([event("held")])
    assert writer.submit("events", event("best-effort")[1])
    assert not writer.flush(0.3)  # both are in the child
    first = writer.pid
    assert first is not None
    os.kill(first, signal.SIGKILL)
    failure = error_of(held)
    assert isinstance(failure, store.StoreUnavailable) and "signal 9" in str(failure)
    assert writer.lost == 1 and writer.queue_depth == 0
    lock.execute("ROLLBACK")
    lock.close()
    assert wait_until(lambda: writer.healthy and writer.pid not in (None, first))
    assert error_of(writer.submit_durable([event("after")])) is None
    writer.close()
    # what the dead child held is never written: its caller was told "no"
    assert flows(path) == ["before", "after"]
    with store.SqliteStore(path) as db:
        assert db.verify().ok


def test_while_the_child_is_down_calls_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "audit.sqlite3"
    writer = writer_for(path, retry_interval=30)  # no restart during the test
    pid = writer.pid
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    assert wait_until(lambda: not writer.healthy)
    assert "audit writer process ended" in (writer.last_error or "")
    assert isinstance(error_of(writer.submit_durable([event("x")])), store.StoreUnavailable)
    assert not writer.submit("events", event("y")[1]) and writer.lost == 1
    assert not writer.flush(0.1)
    writer.close()
    assert flows(path) == []


def test_a_restarted_child_does_not_recreate_a_vanished_store(tmp_path: Path) -> None:
    path = tmp_path / "audit.sqlite3"
    writer = writer_for(path, retry_interval=0.05)
    path.rename(tmp_path / "moved.sqlite3")
    pid = writer.pid
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    assert wait_until(
        lambda: writer.pid not in (None, pid) or "no audit store" in str(writer.last_error)
    )
    time.sleep(0.3)
    assert not writer.healthy and "no audit store" in (writer.last_error or "")
    assert not path.exists()
    writer.close()


GATEWAY = """
import sys, time
from holdgate.store.writer_process import ProcessAuditWriter
target = {"backend": "sqlite", "path": sys.argv[1], "busy_timeout": 30.0}
writer = ProcessAuditWriter(target, sys.argv[1])
row = {"session_id": "s1", "direction": "request"}
for i in range(5):
    assert writer.submit("events", {**row, "flow_id": f"f{i}"})
time.sleep(0.5)  # out of the linger, into the child (which waits for the lock)
print(writer.pid, flush=True)
time.sleep(60)
"""


def test_a_killed_gateway_leaves_no_child_and_no_row_unwritten(tmp_path: Path) -> None:
    path = tmp_path / "audit.sqlite3"
    store.SqliteStore(path).close()
    lock = sqlite3.connect(path, isolation_level=None)
    lock.execute("BEGIN EXCLUSIVE")
    gateway = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(GATEWAY), str(path)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert gateway.stdout is not None
        child = int(gateway.stdout.readline())
        gateway.kill()
        gateway.wait(10)
        assert not gone(child)  # it still holds the rows, waiting for the lock
    finally:
        lock.execute("ROLLBACK")
        lock.close()
        gateway.kill()
    assert wait_until(lambda: gone(child))
    assert flows(path) == [f"f{i}" for i in range(5)]


def frames(*messages: Any) -> io.BytesIO:
    return io.BytesIO(b"".join(framed(orjson.dumps(m)) for m in messages))


def answers(out: io.BytesIO) -> list[Any]:
    data, found = out.getvalue(), []
    while data:
        size = int.from_bytes(data[:4], "big")
        found.append(orjson.loads(data[4 : 4 + size]))
        data = data[4 + size :]
    return found


def child_config(path: Path) -> dict[str, Any]:
    return {
        "target": {"backend": "sqlite", "path": str(path), "busy_timeout": 5.0},
        "name": str(path),
        "create": True,
        "required": True,
        "queue_size": 100,
        "batch_max": 500,
        "linger": 0.0,
        "durable_linger": 0.0,
        "retry_interval": 1.0,
    }


@pytest.mark.parametrize(
    "malformed",
    [
        b"\xff not json",
        orjson.dumps({"e": 1}),
        orjson.dumps([["e", 3, True, [["events", {"flow_id": "half"}]]], ["x"]]),
        orjson.dumps([["e", 3, True, [["events", "not a row"]]]]),
        orjson.dumps([["e", 3, True, []]]),
    ],
    ids=["not-json", "not-a-list", "unknown-message", "bad-row-shape", "no-rows"],
)
def test_the_child_refuses_a_malformed_frame_whole(tmp_path: Path, malformed: bytes) -> None:
    path = tmp_path / "audit.sqlite3"
    good = [["e", 1, False, [list(event("good"))]], ["e", 2, True, [list(event("durable"))]]]
    source = io.BytesIO(
        framed(orjson.dumps(child_config(path)))
        + framed(orjson.dumps(good))
        + framed(malformed)
        + framed(orjson.dumps([["e", 4, False, [list(event("after"))]]]))
    )
    out = io.BytesIO()
    assert serve(source, out) == MALFORMED
    said = answers(out)
    assert said[0] == ["ready", True, None]
    assert [2] in [a[2] for a in said if a[0] == "written"]  # the durable entry committed
    assert any(a[0] == "log" and "malformed frame" in a[2] for a in said)
    # what came before is written; nothing of the bad frame, nor after it
    assert flows(path) == ["good", "durable"]


def test_a_malformed_frame_ends_the_child_and_its_waiting_calls_fail(tmp_path: Path) -> None:
    path = tmp_path / "audit.sqlite3"
    writer = writer_for(path, busy_timeout=30, retry_interval=0.05)
    lock = sqlite3.connect(path, isolation_level=None)
    lock.execute("BEGIN EXCLUSIVE")
    held = writer.submit_durable([event("held")])
    assert not writer.flush(0.2)
    process = writer._process  # a hostile or broken frame on the child's input
    assert process is not None and process.stdin is not None
    process.stdin.write(framed(b"garbage"))
    process.stdin.flush()
    lock.execute("ROLLBACK")
    lock.close()
    # the child writes what it held before the frame, then ends: nothing is left waiting
    assert error_of(held) is None or isinstance(error_of(held), store.StoreUnavailable)
    assert wait_until(lambda: writer.pid not in (None, process.pid) and writer.healthy)
    assert process.wait(5) == MALFORMED
    assert error_of(writer.submit_durable([event("after")])) is None
    writer.close()
    assert flows(path)[-1] == "after"


def test_rows_the_store_refuses_fail_their_call_alone(tmp_path: Path) -> None:
    path = tmp_path / "audit.sqlite3"
    with store.SqliteStore(path) as db, db._conn() as conn:
        conn.execute(
            "CREATE TRIGGER refuse BEFORE INSERT ON events WHEN NEW.flow_id = 'bad' "
            "BEGIN SELECT RAISE(ABORT, 'refused by the store'); END"
        )
    writer = writer_for(path)
    bad = writer.submit_durable([event("bad"), event("with-bad")])
    good = writer.submit_durable([event("good")])
    assert isinstance(error_of(bad), store.BadRow) and "refused by the store" in str(error_of(bad))
    assert error_of(good) is None
    assert writer.submit("events", event("bad")[1])  # taken; dropped by the child: lost
    assert writer.flush(5) and writer.lost == 1 and writer.healthy
    writer.close()
    assert flows(path) == ["good"]


def test_metrics_get_the_columns_they_count(tmp_path: Path) -> None:
    writer = writer_for(tmp_path / "audit.sqlite3")
    seen: list[Any] = []
    writer.on_written = seen.extend
    row = {"flow_id": "f", "direction": "request", "decision": "allow", "rule": "r"}
    row |= {"upstream": "u", "user": "alice", "args_masked": '{"secret": "[masked]"}'}
    assert writer.submit_all([("events", row), ("sessions", {"session_id": "s"})])
    assert writer.flush(5)
    writer.close()
    assert seen == [
        ("events", {k: row[k] for k in ("direction", "decision", "upstream", "rule", "flow_id")}),
        ("sessions", {}),
    ]


def test_the_store_password_is_never_in_the_childs_argv_or_environment() -> None:
    from helpers.processes import free_port

    url = f"postgresql://holdgate:s3cret-pw@127.0.0.1:{free_port()}/holdgate"
    target = {"backend": "postgresql", "url": url, "connect_timeout": 1.0}
    writer = ProcessAuditWriter(target, "postgresql://127.0.0.1/holdgate", required=False)
    try:
        pid = writer.pid
        assert pid is not None and not writer.healthy
        assert b"s3cret" not in Path(f"/proc/{pid}/cmdline").read_bytes()
        assert b"s3cret" not in Path(f"/proc/{pid}/environ").read_bytes()
        assert "s3cret" not in (writer.last_error or "")
    finally:
        writer.close()


def test_a_required_store_that_cannot_be_opened_raises(tmp_path: Path) -> None:
    (tmp_path / "blocker").write_text("a file where the folder should be")
    with pytest.raises(store.StoreUnavailable, match="blocker"):
        writer_for(tmp_path / "blocker" / "audit.sqlite3")
