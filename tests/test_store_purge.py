"""Retention keeps what security needs: the current pin of each tool and the config versions
in force or named by kept rows survive a purge, and verify checks them one by one."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from holdgate import store
from holdgate.policy.tool_pins import PinBook, definition_digest, tool_definition

NOW = 1_800_000_000.0
OLD = store.iso(NOW - 100 * 86400)
OLDER = store.iso(NOW - 200 * 86400)
NEW = store.iso(NOW - 60)
DAY = 86400.0


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "audit.sqlite3"


@pytest.fixture
def db(path: Path) -> Iterator[store.SqliteStore]:
    with store.SqliteStore(path) as opened:
        yield opened


def tool(description: str) -> dict[str, Any]:
    return {"name": "run_sql", "description": description, "inputSchema": {"type": "object"}}


def pin_row(event: str, description: str, ts: str, actor: str = "gateway") -> dict[str, Any]:
    definition = tool_definition(tool(description))
    return {
        "ts": ts,
        "upstream": "db",
        "tool": "run_sql",
        "definition_digest": definition_digest(definition),
        "definition": json.dumps(definition, sort_keys=True),
        "event": event,
        "actor": actor,
    }


def book_of(db: store.SqliteStore) -> PinBook:
    book = PinBook()
    for row in db.tool_pin_rows():
        book.apply(row)
    return book


def tables(path: Path, table: str, column: str = "seq") -> list[Any]:
    with sqlite3.connect(path) as conn:
        return [r[0] for r in conn.execute(f"SELECT {column} FROM {table} ORDER BY seq")]


def test_the_current_pin_survives_and_a_changed_tool_is_not_repinned(
    path: Path, db: store.SqliteStore
) -> None:
    db.append("tool_pins", pin_row("first-seen", "reads rows", OLDER))  # 1: the pin
    db.append("events", {"ts": OLDER, "method": "tools/call", "args_masked": "secret-ish"})  # 2
    db.append("tool_pins", pin_row("changed", "drops tables too", OLD))  # 3: the upstream now
    db.append("events", {"ts": OLD, "method": "tools/call"})  # 4
    db.append("events", {"ts": NEW, "method": "tools/call"})  # 5
    before = book_of(db).pins[("db", "run_sql")]

    report = db.purge(90 * DAY, now=NOW, actor="ops")
    assert report.removed == {"events": 2}
    assert report.kept == {"tool_pins": 2}
    assert (report.first_seq, report.last_seq, report.checkpoint_seq) == (2, 4, 6)
    assert tables(path, "tool_pins") == [1, 3]
    assert db.verify().ok

    after = book_of(db).pins[("db", "run_sql")]
    assert after.pinned_digest == before.pinned_digest and after.changed
    # the next listing of the changed tool is news to nobody: no "first-seen" re-pin
    assert book_of(db).observe("db", tool("drops tables too"), NEW) is None
    again = book_of(db).observe("db", tool("reads rows"), NEW)
    assert again is not None and again["event"] == "restored"


def test_a_later_pinned_row_lets_the_old_pins_go(path: Path, db: store.SqliteStore) -> None:
    db.append("tool_pins", pin_row("first-seen", "reads rows", OLDER))
    db.append("tool_pins", pin_row("changed", "drops tables too", OLD))
    db.append("tool_pins", pin_row("pinned", "drops tables too", NEW, actor="alice"))
    report = db.purge(90 * DAY, now=NOW)
    assert report.removed == {"tool_pins": 2} and report.kept == {}
    assert book_of(db).pins[("db", "run_sql")].pinned_by == "alice"


def test_the_latest_pinned_row_is_kept_over_the_first_seen(
    path: Path, db: store.SqliteStore
) -> None:
    db.append("tool_pins", pin_row("first-seen", "v1", OLDER))  # 1
    db.append("tool_pins", pin_row("changed", "v2", OLDER))  # 2
    db.append("tool_pins", pin_row("pinned", "v2", OLD, actor="alice"))  # 3
    db.append("tool_pins", pin_row("changed", "v3", OLD))  # 4
    db.append("events", {"ts": NEW})
    db.purge(90 * DAY, now=NOW)
    assert tables(path, "tool_pins") == [3, 4]
    state = book_of(db).pins[("db", "run_sql")]
    assert state.pinned_by == "alice" and state.changed


def config_row(digest: str, ts: str, outcome: str = "loaded") -> dict[str, Any]:
    return {"ts": ts, "config_hash": digest, "outcome": outcome, "content": f"rules of {digest}"}


def test_a_shadow_candidate_loaded_last_is_not_the_config_in_force(
    path: Path, db: store.SqliteStore
) -> None:
    db.append("config_versions", config_row("c", OLDER))  # 1: in force
    db.append("config_versions", {**config_row("s", OLD), "role": "candidate"})  # 2
    db.purge(90 * DAY, now=NOW)
    assert tables(path, "config_versions") == [1]  # the candidate's old load goes


def test_config_versions_in_force_or_named_by_kept_events_survive(
    path: Path, db: store.SqliteStore
) -> None:
    db.append("config_versions", config_row("a", OLDER))  # 1: named by a kept event
    db.append("config_versions", config_row("b", OLDER))  # 2: named by nobody kept
    db.append("config_versions", config_row("x", OLDER, "rejected"))  # 3
    db.append("config_versions", config_row("a", OLD, "reloaded"))  # 4: a's latest: kept
    db.append("events", {"ts": OLD, "config_hash": "b"})  # 5
    db.append("config_versions", config_row("c", OLD))  # 6: in force
    db.append("events", {"ts": NEW, "config_hash": "a"})  # 7
    report = db.purge(90 * DAY, now=NOW)
    assert tables(path, "config_versions") == [4, 6]
    assert report.kept == {"config_versions": 2}
    assert report.removed == {"config_versions": 4 - 2 + 1, "events": 1}
    assert db.verify().ok


def test_purging_again_keeps_what_is_still_needed_and_drops_the_rest(
    path: Path, db: store.SqliteStore
) -> None:
    db.append("tool_pins", pin_row("first-seen", "v1", OLDER))  # 1
    db.append("config_versions", config_row("a", OLDER))  # 2
    db.append("events", {"ts": OLD, "config_hash": "a"})  # 3
    db.append("events", {"ts": NEW, "config_hash": "a"})  # 4
    first = db.purge(90 * DAY, now=NOW)
    assert first.kept == {"tool_pins": 1, "config_versions": 1}  # 5: the purge record
    db.append("config_versions", config_row("b", NEW))  # 6: now in force
    db.append("events", {"ts": store.iso(NOW + 10 * DAY), "config_hash": "b"})  # 7
    second = db.purge(5 * DAY, now=NOW + 10 * DAY)
    assert second.removed == {"config_versions": 1, "events": 1, "checkpoints": 1}
    assert second.kept == {"tool_pins": 1, "config_versions": 1}
    assert tables(path, "config_versions") == [6]
    assert tables(path, "tool_pins") == [1]
    assert db.verify().ok
    assert db.last_purge() == store.PurgeRecord(
        8,
        db.last_purge().ts,  # type: ignore[union-attr]
        2,
        6,
        db.row_hashes([6])[6],
        store.iso(NOW + 5 * DAY),
        {1: db.row_hashes([1])[1], 6: db.row_hashes([6])[6]},
    )


@pytest.mark.parametrize(
    ("tamper", "problem", "at"),
    [
        (
            "UPDATE tool_pins SET definition_digest = 'x' WHERE seq = 1",
            "row content does not match its row_hash: edited (or forged)",
            ("tool_pins", 1),
        ),
        (
            "DELETE FROM tool_pins WHERE seq = 1",
            "seq 1, kept by the purge recorded at seq 6, is missing: removed",
            ("tool_pins", 1),
        ),
        (
            "INSERT INTO events (seq, ts, prev_hash, row_hash) VALUES (2, 'x', 'p', 'r')",
            "row at seq 2 lies in the range purged up to seq 4: inserted",
            ("events", 2),
        ),
    ],
)
def test_kept_rows_are_checked_one_by_one(
    path: Path, db: store.SqliteStore, tamper: str, problem: str, at: tuple[str, int]
) -> None:
    db.append("tool_pins", pin_row("first-seen", "reads rows", OLDER))
    db.append("events", {"ts": OLDER})
    db.append("tool_pins", pin_row("changed", "drops tables", OLD))
    db.append("events", {"ts": OLD})
    db.append("events", {"ts": NEW})
    db.purge(90 * DAY, now=NOW)
    with sqlite3.connect(path, isolation_level=None) as conn:
        conn.execute(tamper)
    report = db.verify()
    assert (report.ok, report.problem, report.at) == (False, problem, at)


def test_a_store_of_schema_1_migrates_and_gets_an_id(
    path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from holdgate.store import schema

    with monkeypatch.context() as patched:
        patched.setattr(schema, "MIGRATIONS", schema.MIGRATIONS[:1])
        patched.setattr(schema, "SCHEMA_VERSION", 1)
        patched.setitem(schema.COLUMNS, "checkpoints", schema._V1["checkpoints"])
        with store.SqliteStore(path) as old:  # a purge as schema 1 recorded it
            old.append("events", {"ts": OLD})
            head = old.chain_head()[1]  # row 1 is the head
            with sqlite3.connect(path, isolation_level=None) as conn:
                conn.execute("DELETE FROM events")
            record = {"first_seq": 1, "last_seq": 1, "last_hash": head, "removed": {"events": 1}}
            old.append("checkpoints", record)
            old.append("events", {"ts": NEW})
    with store.SqliteStore(path) as new:
        assert len(new.store_id) == 32
        assert new.verify().ok
        assert new.last_purge() is not None and new.last_purge().kept == {}  # type: ignore[union-attr]
