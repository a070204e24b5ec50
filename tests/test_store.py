"""The audit store: schema, hash chain, verify, purge, the writer thread, approvals, readers."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from helpers import oneshot
from holdgate import store
from holdgate.store import schema, sql_store

ADDONS = Path(__file__).resolve().parent.parent / "addons"
NOW = 1_800_000_000.0  # a fixed "now" for purge tests


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "audit.sqlite3"


@pytest.fixture
def db(path: Path) -> Iterator[store.SqliteStore]:
    with store.SqliteStore(path) as opened:
        yield opened


@pytest.fixture(params=["thread", "process"])
def kind(request: pytest.FixtureRequest) -> str:
    """Which audit writer: the gateway's thread, or a process of its own."""
    return str(request.param)


def writer_for(path: Path, kind: str = "thread", **options: Any) -> store.Writer:
    """A writer whose connections are opened as the gateway's are (the first may create)."""
    busy_timeout = options.pop("busy_timeout", 5.0)
    if kind == "process":
        target = {"backend": "sqlite", "path": str(path), "busy_timeout": busy_timeout}
        return store.ProcessAuditWriter(target, str(path), **options)
    return store.AuditWriter(
        lambda create: store.SqliteStore(path, create=create, busy_timeout=busy_timeout),
        str(path),
        **options,
    )


def event(i: int = 0, **extra: Any) -> dict[str, Any]:
    return {
        "flow_id": f"flow-{i}",
        "session_id": "s1",
        "direction": "request",
        "user": "alice",
        "groups": ["dev"],
        "upstream": "github",
        "method": "tools/call",
        "target": "create_issue",
        "decision": "allow",
        "status": 200,
        "latency_ms": 1.5,
        **extra,
    }


def raw(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(path, isolation_level=None)


def wait_until(check: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.02)
    return check()


def count(path: Path, table: str) -> int:
    with raw(path) as conn:
        return conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]


@contextmanager
def write_locked(path: Path) -> Iterator[None]:
    """Another connection holds the write lock: every other writer waits, then fails."""
    conn = raw(path)
    conn.execute("BEGIN EXCLUSIVE")
    try:
        yield
    finally:
        conn.execute("ROLLBACK")
        conn.close()


def run_python(code: str, *args: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(ADDONS)}
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


# --- schema ---------------------------------------------------------------------------------


def test_schema_wal_version_indexes_views(path: Path) -> None:
    db = store.open_db(path)
    try:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert db.execute("PRAGMA busy_timeout").fetchone()[0] == 5000
        assert store.schema_version(db.conn) == store.SCHEMA_VERSION == len(schema.MIGRATIONS)
        assert {"meta", "chain_head", *store.CHAINED} <= set(db.table_names())
        assert {"v_sessions", "v_approvals", "v_calls_by_identity"} <= set(db.view_names())
        events_indexes = {tuple(ix.columns) for ix in db["events"].indexes}
        assert {
            ("ts",),
            ("session_id", "seq"),
            ("user", "ts"),
            ("upstream", "target"),
            ("approval_id",),
        } <= events_indexes
        assert ("approval_id", "seq") in {tuple(ix.columns) for ix in db["approvals"].indexes}
    finally:
        db.close()


def test_migrations_run_in_order_on_open_and_old_rows_still_verify(
    path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with store.SqliteStore(path) as old:
        old.append("events", event())

    def add_column(db: Any) -> None:
        db.execute('ALTER TABLE events ADD COLUMN "trace_id" TEXT')

    monkeypatch.setattr(schema, "MIGRATIONS", [*schema.MIGRATIONS, add_column])
    newer = store.SCHEMA_VERSION + 1
    monkeypatch.setattr(schema, "SCHEMA_VERSION", newer)
    monkeypatch.setitem(schema.COLUMNS, "events", {**schema.COLUMNS["events"], "trace_id": str})
    with store.SqliteStore(path) as new:
        new.append("events", event(1, trace_id="t-1"))
        with raw(path) as conn:
            assert store.schema_version(conn) == newer
        assert new.verify().ok
    monkeypatch.undo()
    with pytest.raises(store.SchemaTooNew):
        store.open_db(path)


def test_a_store_of_schema_2_migrates_and_still_verifies(
    path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A store the previous release wrote (no client, kind, traceparent) opens, migrates,
    takes rows with the new columns, and its old rows still verify."""
    with monkeypatch.context() as patched:
        patched.setattr(schema, "MIGRATIONS", schema.MIGRATIONS[:2])
        patched.setattr(schema, "SCHEMA_VERSION", 2)
        patched.setattr(schema, "COLUMNS", schema._V2)
        with store.SqliteStore(path) as old:
            old.append(
                "sessions",
                {"session_id": "s-1", "user": "alice", "first_seen": "2025-01-01T00:00:00.000Z"},
            )
            old.append("events", event(1, session_id="s-1"))
        with raw(path) as conn:
            assert "client" not in {r[1] for r in conn.execute("PRAGMA table_info(sessions)")}
    with store.SqliteStore(path) as new:
        with raw(path) as conn:
            assert store.schema_version(conn) == store.SCHEMA_VERSION
        new.append(
            "sessions", {"session_id": "hg-1", "user": "bob", "client": "c/1", "kind": "grouped"}
        )
        new.append(
            "events",
            event(2, session_id="hg-1", traceparent="00-" + "1" * 32 + "-" + "2" * 16 + "-01"),
        )
        assert new.verify().ok
        listed = {s["session_id"]: s for s in new.sessions()}
        assert (listed["s-1"]["kind"], listed["s-1"]["client"]) == ("mcp", None)
        assert (listed["hg-1"]["kind"], listed["hg-1"]["client"]) == ("grouped", "c/1")
        assert [e["traceparent"] for e in new.events()][-1].startswith("00-111")


def test_foreign_sqlite_file_is_not_taken_over(path: Path) -> None:
    with raw(path) as conn:
        conn.execute("CREATE TABLE notes (x)")
    with pytest.raises(store.StoreUnavailable, match="not a holdgate audit store"):
        store.open_db(path)


def test_readers_never_create_a_store(path: Path) -> None:
    with pytest.raises(store.StoreNotFound):
        store.open_store(path, create=False)
    with pytest.raises(store.StoreNotFound):
        oneshot.pending_approvals(path)
    assert not path.exists()


def test_rows_are_checked_and_coerced(path: Path, db: store.SqliteStore) -> None:
    with pytest.raises(store.BadRow, match="no column"):
        db.append("events", {"password": "x"})
    with pytest.raises(store.BadRow, match="no audited table"):
        db.append("meta", {"key": "x"})
    with pytest.raises(store.BadRow, match="status"):
        db.append("events", {"status": "two hundred"})
    db.append("events", event(latency_ms=3, status=200.0, extra={"b": 1, "a": [True]}))
    row = db.session_events("s1")[0]
    assert row["latency_ms"] == 3.0 and row["status"] == 200
    assert row["extra"] == '{"a":[true],"b":1}'
    assert row["groups"] == '["dev"]'
    assert row["ts"].endswith("Z") and len(row["ts"]) == len("2025-01-01T00:00:00.000Z")
    assert db.verify().ok


# --- the chain ------------------------------------------------------------------------------


def seed(db: store.SqliteStore) -> None:
    """Rows in every kind of table, interleaved."""
    db.append("config_versions", {"config_hash": "c1", "source": "p.yaml"})
    db.append("sessions", {"session_id": "s1", "user": "alice", "upstream": "github"})
    for i in range(3):
        db.append("events", event(i))
    db.create_approval({"approval_id": "a1", "requester": "alice", "tool": "t"})
    db.append("tool_pins", {"upstream": "github", "tool": "t", "event": "pinned"})
    db.append_approval_state("a1", "approved", "bob", "ok")
    db.append("events", event(3, approval_id="a1"))


def test_one_chain_across_tables(path: Path, db: store.SqliteStore) -> None:
    seed(db)
    report = db.verify()
    assert report == store.VerifyReport(True, 9)
    rows = []
    with raw(path) as conn:
        for table in store.CHAINED:
            rows += [
                (s, p, h)
                for s, p, h in conn.execute(f"SELECT seq, prev_hash, row_hash FROM {table}")
            ]
        head = conn.execute("SELECT seq, row_hash FROM chain_head").fetchone()
    rows.sort()
    assert [r[0] for r in rows] == list(range(1, 10))
    assert rows[0][1] == store.GENESIS
    assert all(rows[i][1] == rows[i - 1][2] for i in range(1, len(rows)))
    assert head == (9, rows[-1][2])


def test_edited_row_is_named(path: Path, db: store.SqliteStore) -> None:
    seed(db)
    with raw(path) as conn:
        conn.execute("UPDATE events SET decision = 'deny' WHERE seq = 4")
    report = db.verify()
    assert not report.ok and report.at == ("events", 4)
    assert "edited" in (report.problem or "")


def test_edited_hash_columns_are_caught(path: Path, db: store.SqliteStore) -> None:
    seed(db)
    with raw(path) as conn:
        conn.execute("UPDATE approvals SET prev_hash = ? WHERE seq = 6", [store.GENESIS])
    assert db.verify().at == ("approvals", 6)


def test_removed_row_is_named(path: Path, db: store.SqliteStore) -> None:
    seed(db)
    with raw(path) as conn:
        conn.execute("DELETE FROM events WHERE seq = 4")
    report = db.verify()
    assert not report.ok and report.at == ("events", 5)
    assert report.problem == "seq 4 missing before this row: removed"


def test_removed_last_rows_are_noticed(path: Path, db: store.SqliteStore) -> None:
    seed(db)
    with raw(path) as conn:
        conn.execute("DELETE FROM events WHERE seq = 9")
    report = db.verify()
    assert not report.ok and "seq 9 missing at the end" in (report.problem or "")


def test_inserted_rows_are_named(path: Path, db: store.SqliteStore) -> None:
    seed(db)
    with raw(path) as conn:
        conn.execute(
            "INSERT INTO events (seq, ts, user, decision, prev_hash, row_hash) "
            "VALUES (10, '2025-01-01T00:00:00.000Z', 'mallory', 'allow', 'x', 'y')"
        )
    report = db.verify()
    assert not report.ok and report.at == ("events", 10)


def test_forged_row_with_a_valid_hash_is_named(path: Path, db: store.SqliteStore) -> None:
    seed(db)
    with raw(path) as conn:
        head_seq, head_hash = conn.execute("SELECT seq, row_hash FROM chain_head").fetchone()
        content = {"seq": head_seq + 1, "ts": "2025-01-01T00:00:00.000Z", "user": "mallory"}
        forged = store.chain_hash(head_hash, "events", content)
        conn.execute(
            "INSERT INTO events (seq, ts, user, prev_hash, row_hash) VALUES (?, ?, ?, ?, ?)",
            [*content.values(), head_hash, forged],
        )
    report = db.verify()
    assert not report.ok and report.at == ("events", 10)
    assert "beyond the recorded chain head" in (report.problem or "")


def test_row_inserted_with_a_duplicate_seq_is_named(path: Path, db: store.SqliteStore) -> None:
    seed(db)
    with raw(path) as conn:
        conn.execute(
            "INSERT INTO approvals (seq, approval_id, state, decider, prev_hash, row_hash) "
            "VALUES (4, 'a1', 'approved', 'mallory', 'x', 'y')"
        )
    report = db.verify()
    assert not report.ok and report.at == ("approvals", 4)


def test_appends_from_threads_and_processes_keep_one_chain(
    path: Path, db: store.SqliteStore
) -> None:
    code = """
        import sys
        from holdgate import store
        with store.open_store(sys.argv[1]) as db:
            for i in range(40):
                db.append("events", {"flow_id": f"p{sys.argv[2]}-{i}"})
    """
    procs = [run_python(code, str(path), str(n)) for n in range(3)]
    writer = writer_for(path, batch_max=7)
    direct = [
        threading.Thread(
            target=lambda: [db.append("sessions", {"session_id": "x"}) for _ in range(20)]
        )
        for _ in range(2)
    ]
    for thread in direct:
        thread.start()
    for i in range(200):
        assert writer.submit("events", event(i))
    for proc in procs:
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
    for thread in direct:
        thread.join()
    assert writer.flush(30)
    writer.close()
    assert count(path, "events") == 320 and count(path, "sessions") == 40
    assert db.verify() == store.VerifyReport(True, 360)


# --- purge ----------------------------------------------------------------------------------


def test_purge_removes_old_rows_and_verify_still_passes(path: Path, db: store.SqliteStore) -> None:
    old = store.iso(NOW - 10 * 86400)
    new = store.iso(NOW - 60)
    db.append("sessions", {"session_id": "gone", "first_seen": old})
    db.append("sessions", {"session_id": "lives-on", "first_seen": old})
    db.append("events", event(0, session_id="gone", ts=old))
    db.append("events", event(1, session_id="lives-on", ts=old))
    db.create_approval({"approval_id": "a0", "requester": "alice", "ts": old})
    db.append("events", event(2, session_id="lives-on", ts=new))
    db.append("events", event(3, session_id="gone-too-late", ts=old))  # after a new row

    report = db.purge(86400, now=NOW, actor="ops")
    assert report.removed == {"sessions": 2, "events": 2, "approvals": 1}
    assert report.sessions_gone == ["gone"]
    assert (report.first_seq, report.last_seq, report.checkpoint_seq) == (1, 5, 8)
    with raw(path) as conn:
        checkpoint = conn.execute(
            "SELECT first_seq, last_seq, last_hash, actor, removed FROM checkpoints"
        ).fetchone()
    assert checkpoint[:2] == (1, 5) and checkpoint[3] == "ops"
    assert json.loads(checkpoint[4]) == report.removed
    assert len(checkpoint[2]) == 64
    assert db.verify() == store.VerifyReport(True, 3)
    assert {s["session_id"] for s in db.sessions()} == {"lives-on", "gone-too-late"}

    assert db.purge(86400, now=NOW) == store.PurgeReport()  # nothing more to remove
    db.append("events", event(4))
    later = db.purge(0, now=NOW + 86400)
    assert later.removed == {"events": 3, "checkpoints": 1}
    assert db.verify() == store.VerifyReport(True, 1)


def test_rows_removed_after_a_purge_are_still_caught(path: Path, db: store.SqliteStore) -> None:
    for i in range(3):
        db.append("events", event(i, ts=store.iso(NOW - 86400 * 30)))
    for i in range(3):
        db.append("events", event(i, ts=store.iso(NOW)))
    db.purge(86400, now=NOW)
    with raw(path) as conn:
        conn.execute("DELETE FROM events WHERE seq = 4")
    report = db.verify()
    assert not report.ok and report.at == ("events", 5)


def test_removing_the_checkpoint_is_caught(path: Path, db: store.SqliteStore) -> None:
    db.append("events", event(0, ts=store.iso(NOW - 86400 * 30)))
    db.append("events", event(1, ts=store.iso(NOW)))
    db.purge(86400, now=NOW)
    with raw(path) as conn:
        conn.execute("DELETE FROM checkpoints")
    report = db.verify()
    assert not report.ok and report.at == ("events", 2)


# --- the writer -----------------------------------------------------------------------------


def test_writer_batches_and_flushes(
    path: Path, db: store.SqliteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    sizes: list[int] = []
    real_append = store.SqliteStore.append_batch

    def spy(self: store.SqliteStore, rows: Any) -> None:
        sizes.append(len(rows))
        real_append(self, rows)

    monkeypatch.setattr(store.SqliteStore, "append_batch", spy)
    writer = writer_for(path, batch_max=50, busy_timeout=30)
    with write_locked(path):
        for i in range(301):
            assert writer.submit("events", event(i))
        assert writer.queue_depth >= 250
    assert writer.flush(10)
    assert writer.queue_depth == 0 and writer.healthy and writer.lost == 0
    assert sum(sizes) == 301 and max(sizes) == 50 and len(sizes) <= 8
    assert writer.max_queue_depth_seen >= 250
    writer.close()
    assert db.verify().ok


def test_full_queue_refuses_and_counts_lost(path: Path, kind: str) -> None:
    writer = writer_for(path, kind, queue_size=5, busy_timeout=30)
    with write_locked(path):
        accepted = [writer.submit("events", event(i)) for i in range(20)]
    assert writer.flush(10)
    writer.close()
    assert accepted.count(False) == writer.lost > 0
    assert count(path, "events") == accepted.count(True)
    assert writer.max_queue_depth_seen == 5


def test_close_writes_what_is_queued(path: Path, kind: str) -> None:
    writer = writer_for(path, kind)
    for i in range(100):
        writer.submit("events", event(i))
    writer.close()
    assert count(path, "events") == 100
    assert not writer.flush(0.1)
    assert not writer.submit("events", event()) and writer.lost == 1


def test_submit_rejects_rows_that_do_not_fit(path: Path, kind: str) -> None:
    writer = writer_for(path, kind)
    with pytest.raises(store.BadRow):
        writer.submit("events", {"token": "secret"})
    writer.close()


def check_failure_and_recovery(
    path: Path,
    writer: store.Writer,
    break_it: Callable[[], Any],
    fix_it: Callable[[], Any],
    errors: tuple[str, ...],
) -> None:
    """flow-0 is written; break the store, see the writer fail, fix it, see it recover."""
    break_it()
    try:
        assert writer.submit("events", event(1))  # accepted: the failure is not known yet
        assert wait_until(lambda: not writer.healthy)
        assert any(e in (writer.last_error or "") for e in errors), writer.last_error
        assert not writer.submit("events", event(2)) and writer.lost == 1
        assert not writer.flush(0.3)
        time.sleep(0.3)  # a few failed retries
        assert not writer.healthy
    finally:
        fix_it()
    assert wait_until(lambda: writer.healthy)
    assert writer.flush(10)
    assert writer.submit("events", event(3)) and writer.flush(5)
    writer.close()
    with store.SqliteStore(path) as db:
        flows = [e["flow_id"] for e in db.session_events("s1")]
        assert flows == ["flow-0", "flow-1", "flow-3"]  # the row in hand was kept and written
        assert db.verify().ok


def test_store_locked_beyond_timeout_flips_healthy_and_recovers(path: Path, kind: str) -> None:
    writer = writer_for(path, kind, busy_timeout=0.2, retry_interval=0.05)
    assert writer.submit("events", event(0)) and writer.flush(5)
    conn = raw(path)
    check_failure_and_recovery(
        path,
        writer,
        lambda: conn.execute("BEGIN EXCLUSIVE"),
        lambda: conn.execute("ROLLBACK"),
        ("database is locked",),
    )
    conn.close()


def test_immutable_store_files_flip_healthy_and_recover(path: Path, kind: str) -> None:
    """As root, chmod does not stop writes; the immutable attribute does."""
    writer = writer_for(path, kind, retry_interval=0.05)
    assert writer.submit("events", event(0)) and writer.flush(5)
    files = [str(path), f"{path}-wal"]
    if (
        shutil.which("chattr") is None
        or subprocess.run(["chattr", "+i", *files], capture_output=True).returncode
    ):
        writer.close()
        pytest.skip("chattr +i is not available here")
    check_failure_and_recovery(
        path,
        writer,
        lambda: None,
        lambda: subprocess.run(["chattr", "-i", *files], check=True),
        ("disk I/O error", "readonly database"),
    )


def test_rows_the_store_refuses_are_dropped_not_retried(
    path: Path, db: store.SqliteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    writer = writer_for(path)
    real_append = sql_store.append_rows

    def refuse_bad(conn: sqlite3.Connection, items: Any) -> list[int]:
        if any(row.get("flow_id") == "bad" for _, row in items):
            raise sqlite3.IntegrityError("CHECK constraint failed")
        return real_append(conn, items)

    monkeypatch.setattr(sql_store, "append_rows", refuse_bad)
    assert writer.submit("events", event(flow_id="bad")) and writer.flush(5)
    assert writer.healthy and writer.lost == 1
    assert "IntegrityError" in (writer.last_error or "")
    assert writer.submit("events", event(flow_id="good")) and writer.flush(5)
    writer.close()
    assert [e["flow_id"] for e in db.session_events("s1")] == ["good"]


def test_lone_surrogates_are_stored_escaped(path: Path, db: store.SqliteStore) -> None:
    db.append("events", event(args_masked=json.loads('"\\ud800x"')))
    assert db.session_events("s1")[0]["args_masked"] == "\\ud800x"
    assert db.verify().ok


def test_required_store_that_cannot_be_opened_raises(tmp_path: Path, kind: str) -> None:
    (tmp_path / "blocker").write_text("a file where the folder should be")
    with pytest.raises(store.StoreUnavailable):
        writer_for(tmp_path / "blocker" / "audit.sqlite3", kind)


def test_best_effort_writer_starts_unhealthy_and_probes(tmp_path: Path, kind: str) -> None:
    blocker = tmp_path / "blocker"
    blocker.write_text("a file where the folder should be")
    writer = writer_for(blocker / "audit.sqlite3", kind, required=False, retry_interval=0.05)
    assert wait_until(lambda: not writer.healthy)
    assert not writer.submit("events", event())
    blocker.unlink()
    blocker.mkdir()
    assert wait_until(lambda: writer.healthy)
    assert writer.submit("events", event()) and writer.flush(5)
    writer.close()
    with store.SqliteStore(blocker / "audit.sqlite3") as db:
        assert db.verify().ok


def test_writer_does_not_recreate_a_vanished_store(path: Path, kind: str) -> None:
    writer = writer_for(path, kind, busy_timeout=0.2, retry_interval=0.05)
    conn = raw(path)
    conn.execute("BEGIN EXCLUSIVE")
    assert writer.submit("events", event())
    assert wait_until(lambda: not writer.healthy)
    conn.execute("ROLLBACK")
    conn.close()
    path.rename(path.with_suffix(".moved"))
    time.sleep(0.3)
    assert not path.exists() and not writer.healthy
    assert "no audit store" in (writer.last_error or "")
    writer.close()


# --- approvals ------------------------------------------------------------------------------


def request(approval_id: str = "a1", **extra: Any) -> dict[str, Any]:
    return {
        "approval_id": approval_id,
        "requester": "alice",
        "upstream": "github",
        "method": "tools/call",
        "tool": "delete_repo",
        "args_masked": '{"repo":"x"}',
        "args_digest": "d" * 64,
        "request_digest": "r" * 64,
        "rule": "deletes-need-approval",
        "approvers": '["ops"]',
        "created": store.iso(NOW),
        "expires": store.iso(NOW + 300),
        **extra,
    }


def test_approval_lifecycle(path: Path, db: store.SqliteStore) -> None:
    db.create_approval(request("a1"))
    db.create_approval(request("a2"))
    assert [a["approval_id"] for a in db.approvals(pending_only=True)] == ["a1", "a2"]
    assert db.append_approval_state("a1", "refused_attempt", "alice", "self")
    assert db.approval("a1")["state"] == "pending"
    assert not db.append_approval_state("a1", "grant_used", "alice")
    assert db.append_approval_state("a1", "approved", "bob", "looks fine")
    assert db.append_approval_state("a1", "grant_used", "alice", "same call")
    found = db.approval("a1")
    assert found is not None
    assert (found["state"], found["decider"], found["reason"]) == ("approved", "bob", "looks fine")
    assert found["requester"] == "alice" and found["approvers"] == '["ops"]'
    assert found["decided"] is not None
    assert [h["state"] for h in found["history"]] == [
        "pending",
        "refused_attempt",
        "approved",
        "grant_used",
    ]
    assert all(h["tool"] == "delete_repo" for h in found["history"])
    states = db.approval_states(["a1", "a2", "nope"])
    assert {k: v["state"] for k, v in states.items()} == {"a1": "approved", "a2": "pending"}
    assert db.approval("nope") is None
    assert db.verify().ok


def test_states_the_state_machine_refuses_are_not_recorded(db: store.SqliteStore) -> None:
    db.create_approval(request("a1"))
    assert db.append_approval_state("a1", "denied", "bob")
    assert not db.append_approval_state("a1", "approved", "carol")
    assert not db.append_approval_state("a1", "expired")
    assert not db.append_approval_state("zz", "approved", "bob")
    with pytest.raises(store.BadRow):
        db.append_approval_state("a1", "pending", "bob")
    assert [h["state"] for h in db.approval("a1")["history"]] == ["pending", "denied"]


def test_expire_pending(path: Path, db: store.SqliteStore) -> None:
    for approval_id in ("a1", "a2", "a3"):
        db.create_approval(request(approval_id))
    db.append_approval_state("a2", "approved", "bob")
    assert db.expire_pending("gateway restarted") == 2
    assert db.approvals(pending_only=True) == []
    assert db.approval("a3")["reason"] == "gateway restarted"
    assert db.approval("a2")["state"] == "approved"
    assert db.expire_pending("again") == 0


def test_concurrent_deciders_in_threads_exactly_one_wins(path: Path, db: store.SqliteStore) -> None:
    db.create_approval(request("a1"))
    barrier = threading.Barrier(8)
    results: list[bool] = []

    def decide(n: int) -> None:
        barrier.wait()
        state = "approved" if n % 2 else "denied"
        results.append(db.append_approval_state("a1", state, f"approver-{n}"))

    threads = [threading.Thread(target=decide, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results.count(True) == 1
    assert len(db.approval("a1")["history"]) == 2


def test_concurrent_deciders_in_processes_exactly_one_wins(
    path: Path, db: store.SqliteStore
) -> None:
    db.create_approval(request("a1"))
    go = path.with_suffix(".go")
    code = """
        import os, sys, time
        from holdgate import store
        with store.open_store(sys.argv[1]) as db:
            while not os.path.exists(sys.argv[2]):
                time.sleep(0.005)
            print(db.append_approval_state("a1", "approved", sys.argv[3]))
    """
    procs = [run_python(code, str(path), str(go), f"approver-{n}") for n in range(4)]
    time.sleep(0.5)
    go.touch()
    outputs = [proc.communicate(timeout=60) for proc in procs]
    assert [p.returncode for p in procs] == [0] * 4, outputs
    assert [out.strip() for out, _ in outputs].count("True") == 1
    assert len(db.approval("a1")["history"]) == 2
    assert db.verify().ok


# --- readers --------------------------------------------------------------------------------


def test_sessions_events_and_views(path: Path, db: store.SqliteStore) -> None:
    db.append(
        "sessions",
        {
            "session_id": "s1",
            "user": "alice",
            "upstream": "github",
            "protocol_version": "2025-06-18",
            "first_seen": store.iso(NOW),
        },
    )
    db.append("events", event(0, ts=store.iso(NOW + 1)))
    db.append("events", event(1, ts=store.iso(NOW + 2), decision="deny"))
    db.append("events", event(2, ts=store.iso(NOW + 3), direction="response"))
    db.append("events", event(3, ts=store.iso(NOW + 9), session_id="s2", user="bob"))

    sessions = db.sessions()
    assert [(s["session_id"], s["events"], s["denials"]) for s in sessions] == [
        ("s1", 3, 1),
        ("s2", 1, 0),
    ]
    assert sessions[0]["protocol_version"] == "2025-06-18"
    assert sessions[0]["last_seen"] == store.iso(NOW + 3)
    assert [s["session_id"] for s in db.sessions(since=store.iso(NOW + 5))] == ["s2"]
    assert [e["flow_id"] for e in db.session_events("s1")] == [
        "flow-0",
        "flow-1",
        "flow-2",
    ]

    views = store.open_db(path, create=False)
    calls = list(views.query("SELECT * FROM v_calls_by_identity ORDER BY user"))
    views.close()
    assert [(c["user"], c["tool"], c["count"], c["denials"]) for c in calls] == [
        ("alice", "create_issue", 2, 1),
        ("bob", "create_issue", 1, 0),
    ]
    assert calls[0]["first"] == store.iso(NOW + 1) and calls[0]["last"] == store.iso(NOW + 2)


def test_export_rows(path: Path, db: store.SqliteStore) -> None:
    for i in range(4):
        db.append("events", event(i, ts=store.iso(NOW + i), user="bob" if i == 3 else "alice"))
    rows = list(db.events())
    assert [tuple(r) for r in rows] == [store.EXPORT_FIELDS] * 4
    window = db.events(since=store.iso(NOW + 1), until=store.iso(NOW + 3))
    assert [r["flow_id"] for r in window] == ["flow-1", "flow-2"]
    assert [r["flow_id"] for r in db.events(user="bob")] == ["flow-3"]
    assert list(db.events(upstream="elsewhere")) == []
    assert oneshot.export_rows(path) == rows  # one call on the store at a path


@given(st.floats(min_value=0, max_value=4e9) | st.integers(0, 4 * 10**9).map(lambda n: n / 1000))
def test_iso_formats_like_datetime(timestamp: float) -> None:
    expected = datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="milliseconds")
    assert store.iso(timestamp) == expected.replace("+00:00", "Z")
    assert store.iso(timestamp + 1.0)[:19] != store.iso(timestamp)[:19]  # the cache moves on


def test_writer_commits_rows_that_arrive_within_the_linger_together(
    path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    commits: list[int] = []
    real = sql_store.transaction

    @contextmanager
    def counted(conn: sqlite3.Connection) -> Iterator[None]:
        with real(conn):
            yield
        commits.append(conn.execute("SELECT count(*) FROM events").fetchone()[0])

    writer = writer_for(path, linger=0.5)  # opened (and migrated) uncounted
    monkeypatch.setattr(sql_store, "transaction", counted)
    try:
        assert writer.submit("events", event(1))
        time.sleep(0.05)  # a second row, well inside the first one's linger
        assert writer.submit("events", event(2))
        deadline = time.monotonic() + 10
        while not commits and time.monotonic() < deadline:
            time.sleep(0.05)
        assert commits == [2]  # one synced commit for both
    finally:
        writer.close()


def test_flush_does_not_wait_out_the_linger(path: Path, db: store.SqliteStore, kind: str) -> None:
    writer = writer_for(path, kind, linger=3600)
    try:
        assert writer.submit("events", event(1))
        assert writer.flush(10)  # would time out if the writer waited the hour
        assert [r["flow_id"] for r in db.session_events("s1")] == ["flow-1"]
    finally:
        writer.close()
