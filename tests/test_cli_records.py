"""`holdgate sessions | export | verify | purge` over a store built here, output exact."""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path

import psycopg
import pytest
from click.testing import CliRunner, Result

from holdgate import store
from holdgate.cli.main import main

T0 = 1_700_000_000.0  # 2023-11-14T22:13:20Z


def event(n: int, ts: float, **fields: object) -> dict[str, object]:
    return {
        "ts": store.iso(ts),
        "flow_id": f"f{n}",
        "session_id": "s1",
        "direction": "request",
        "user": "alice",
        "groups": ["support"],
        "upstream": "demo",
        "method": "tools/call",
        "target": "get_customer",
        "decision": "allow",
        "rule": "support",
        "status": 200,
        **fields,
    }


@pytest.fixture
def db(tmp_path: Path) -> str:
    path = tmp_path / "audit.sqlite3"
    with store.SqliteStore(path) as opened:
        opened.append(
            "sessions",
            {"session_id": "s1", "user": "alice", "upstream": "demo", "first_seen": store.iso(T0)},
        )
        opened.append("events", event(1, T0 + 1))
        opened.append(
            "events",
            event(2, T0 + 2, direction="response", decision="pass", rule=None, masked={"email": 2}),
        )
        opened.append(
            "events",
            event(
                3,
                T0 + 3,
                target="exec_shell",
                decision="deny",
                rule="no shell",
                status=200,
                extra={"refused": {"kind": "denied"}},
            ),
        )
    return str(path)


def run(*args: str) -> Result:
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def test_sessions_list(db: str) -> None:
    with store.SqliteStore(db) as opened:
        grouped = {"session_id": "hg-1", "user": "bob", "upstream": "demo", "kind": "grouped"}
        opened.append("sessions", {**grouped, "client": "cli/1", "first_seen": store.iso(T0 + 5)})
        opened.append("events", event(5, T0 + 6, session_id="hg-1", user="bob"))
    result = run("sessions", "list", "--db", db)
    assert result.exit_code == 0
    assert result.output == (
        "s1  alice  demo  mcp  -  2023-11-14T22:13:20.000Z .. 2023-11-14T22:13:23.000Z  "
        "3 events, 1 denied\n"
        'hg-1  bob  demo  grouped  "cli/1"  2023-11-14T22:13:25.000Z .. '
        "2023-11-14T22:13:26.000Z  1 events, 0 denied\n"
    )
    shown = run("sessions", "show", "hg-1", "--db", db)
    assert [line.split()[2] for line in shown.output.splitlines()] == ["bob"]


def test_sessions_show(db: str) -> None:
    result = run("sessions", "show", "s1", "--db", db)
    assert result.exit_code == 0
    assert result.output.splitlines() == [
        "#2      2023-11-14T22:13:21.000Z  alice      request       tools/call get_customer  "
        "allow by 'support' [200]",
        "#3      2023-11-14T22:13:22.000Z  alice      response      tools/call get_customer  "
        "pass [200] masked email=2",
        "#4      2023-11-14T22:13:23.000Z  alice      request       tools/call exec_shell  "
        "deny by 'no shell' [200]",
    ]


def test_sessions_show_takes_a_unique_prefix(db: str) -> None:
    with store.SqliteStore(db) as opened:
        for session in ("s1-other", "t9-abc"):
            opened.append("sessions", {"session_id": session, "user": "bob", "upstream": "demo"})
            opened.append("events", event(7, T0 + 7, session_id=session, user="bob"))
    assert run("sessions", "show", "t9", "--db", db).output.split()[2] == "bob"
    ambiguous = CliRunner().invoke(main, ["sessions", "show", "s", "--db", db])
    assert ambiguous.exit_code == 1
    assert ambiguous.output == (
        "Error: session prefix 's' matches 2 sessions; give more of the id:\n  s1\n  s1-other\n"
    )
    assert run("sessions", "show", "s1", "--db", db).output.count("\n") == 3  # exact id wins
    nothing = CliRunner().invoke(main, ["sessions", "show", "zz", "--db", db])
    assert nothing.exit_code == 1 and "no events for session 'zz'" in nothing.output


def test_sessions_show_says_when_a_call_was_asked_and_who_decided_how(db: str) -> None:
    with store.SqliteStore(db) as opened:
        opened.create_approval(
            {
                "approval_id": "a1",
                "requester": "alice",
                "upstream": "demo",
                "tool": "run_sql",
                "rule": "sql",
                "approvers": '["dba"]',
                "created": store.iso(T0 + 4),
                "expires": "2999-01-01T00:00:00.000Z",
            }
        )
        opened.decide_approval(
            "a1",
            "approved",
            "dana",
            ("dba",),
            "ok",
            channel="cli",
            identity={"via": "api_key", "key": "dana"},
        )
        opened.append("events", event(5, T0 + 5, target="run_sql", approval_id="a1"))
    lines = run("sessions", "show", "s1", "--db", db).output.splitlines()
    assert lines[-2].endswith("approval a1 [200]")
    assert lines[-1].startswith(
        "    approval a1: asked 2023-11-14T22:13:24.000Z, approved by dana at "
    )
    assert lines[-1].endswith("[via cli; API key dana; groups dba; qualified by dba]")


def test_sessions_list_since_a_duration(db: str, tmp_path: Path) -> None:
    with store.SqliteStore(db) as opened:
        opened.append("events", event(9, time.time() - 60, session_id="s2", user="bob"))
    result = run("sessions", "list", "--db", db, "--since", "1h")
    assert [line.split()[0] for line in result.output.splitlines()] == ["s2"]


def test_export_since_a_duration_finds_recent_rows(db: str) -> None:
    """`--since 7d` was compared as text with the times and matched nothing."""
    with store.SqliteStore(db) as opened:
        opened.append("events", event(8, time.time() - 8 * 86400))
        opened.append("events", event(9, time.time() - 3600))
    result = run("export", "--db", db, "--since", "7d")
    assert result.exit_code == 0
    assert [json.loads(line)["flow_id"] for line in result.output.splitlines()] == ["f9"]
    until = run("export", "--db", db, "--until", "7d")
    assert [json.loads(line)["flow_id"] for line in until.output.splitlines()] == [
        "f1",
        "f2",
        "f3",
        "f8",
    ]


@pytest.mark.parametrize(
    ("since", "until", "flows"),
    [
        ("2023-11-14T22:13:22Z", None, ["f2", "f3"]),
        ("2023-11-14T23:13:22+01:00", None, ["f2", "f3"]),  # offsets are understood
        ("2023-11-14T22:13:21.500Z", "2023-11-14T22:13:23Z", ["f2"]),
        ("2023-11-14", None, ["f1", "f2", "f3"]),
    ],
)
def test_export_between_iso_times(db: str, since: str, until: str | None, flows: list[str]) -> None:
    args = ["export", "--db", db, "--since", since] + (["--until", until] if until else [])
    result = run(*args)
    assert [json.loads(line)["flow_id"] for line in result.output.splitlines()] == flows


def test_a_time_that_is_neither_is_a_usage_error(db: str) -> None:
    result = CliRunner().invoke(main, ["export", "--db", db, "--since", "last week"])
    assert result.exit_code == 2
    assert (
        "Invalid value for '--since': 'last week' is neither an ISO time "
        "(2026-11-01T00:00:00Z) nor a duration back from now (7d, 12h, 30m)" in result.output
    )


def test_export_csv_has_the_export_fields(db: str) -> None:
    result = run("export", "--db", db, "--format", "csv", "--user", "alice")
    lines = result.output.splitlines()
    assert lines[0] == ",".join(store.EXPORT_FIELDS)
    assert len(lines) == 4


def test_export_sqlite_writes_a_standalone_file(db: str, tmp_path: Path) -> None:
    out = tmp_path / "feed.sqlite3"
    result = run("export", "--db", db, "--format", "sqlite", "-o", str(out))
    assert result.exit_code == 0
    assert result.stderr.splitlines()[-1] == f"3 events written to {out}"
    with sqlite3.connect(out) as conn:
        flows = [f for (f,) in conn.execute("SELECT flow_id FROM events ORDER BY seq")]
    assert flows == ["f1", "f2", "f3"]


def test_verify_and_purge(db: str, tmp_path: Path) -> None:
    assert run("verify", "--db", db).output == "ok: 4 rows, head #4, hash chain intact\n"
    purged = run("purge", "--db", db, "--older-than", "1d", "--recordings", str(tmp_path))
    assert purged.output == (
        "removed 3 events, 1 sessions (seq 1..4); 0 flow files; checkpoint seq 5\n"
    )
    assert run("verify", "--db", db).output == "ok: 1 rows, head #5, hash chain intact\n"


def test_purge_removes_every_flow_file_of_a_purged_session(db: str, tmp_path: Path) -> None:
    recordings = tmp_path / "recordings"
    recordings.mkdir()
    gone = [recordings / name for name in ("s1.mitm", "s1+20261101T000000Z.mitm")]
    gone.append(recordings / "s1+20261101T000011Z.mitm")
    kept = recordings / "s10+20261101T000000Z.mitm"  # another session, same prefix
    for path in [*gone, kept]:
        path.write_bytes(b"")
    purged = run("purge", "--db", db, "--older-than", "1d", "--recordings", str(recordings))
    assert "; 3 flow files;" in purged.output
    assert [p.exists() for p in gone] == [False, False, False]
    assert kept.exists()


def test_a_broken_chain_fails_verify(db: str) -> None:
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE events SET decision = 'allow' WHERE seq = 4")
    result = CliRunner().invoke(main, ["verify", "--db", db])
    assert result.exit_code == 1
    assert result.output == (
        "Error: chain broken at events seq 4: row content does not match its row_hash: "
        "edited (or forged) (4 rows checked before it)\n"
    )


@pytest.mark.parametrize(
    "command", [["sessions", "list"], ["export"], ["verify"], ["approvals", "list"]]
)
def test_readers_say_when_there_is_no_store(tmp_path: Path, command: list[str]) -> None:
    missing = tmp_path / "nope.sqlite3"
    result = CliRunner().invoke(main, [*command, "--db", str(missing)])
    assert result.exit_code == 1
    assert result.output == (
        f"Error: no audit store at {missing}; pass --store with the gateway's holdgate_store\n"
    )
    assert not missing.exists()


def test_a_postgresql_store_is_verified_like_any(pg_url: str) -> None:
    with store.open_store(pg_url) as opened:
        opened.append("events", {"ts": store.iso(), "user": "alice"})
    result = CliRunner().invoke(main, ["verify", "--db", pg_url])
    assert result.exit_code == 0, result.output
    assert result.output == "ok: 1 rows, head #1, hash chain intact\n"
    with psycopg.connect(pg_url, autocommit=True) as conn:  # an edit made behind its back
        conn.execute("UPDATE events SET \"user\" = 'mallory'")
    tampered = CliRunner().invoke(main, ["verify", "--db", pg_url])
    assert tampered.exit_code == 1 and "edited" in tampered.output
