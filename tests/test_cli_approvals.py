"""`holdgate approvals …` over a store built here: the store's rules, mapped to messages."""

from __future__ import annotations

import getpass
import json
import threading
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from helpers import oneshot
from holdgate import store
from holdgate.cli.main import main

LATER = "2999-01-01T00:00:00.000Z"


def request(approval_id: str, expires: str = LATER) -> dict[str, object]:
    return {
        "approval_id": approval_id,
        "requester": "alice",
        "upstream": "db",
        "method": "tools/call",
        "tool": "run_sql",
        "args_masked": '{"query":"DELETE FROM orders"}',
        "rule": "sql needs a dba",
        "approvers": '["dba"]',
        "created": "2026-11-01T00:00:00.000Z",
        "expires": expires,
        "ts": "2026-11-01T00:00:00.000Z",
    }


@pytest.fixture
def db(tmp_path: Path) -> str:
    path = tmp_path / "audit.sqlite3"
    with store.SqliteStore(path) as opened:
        opened.create_approval(request("a1"))
        opened.create_approval(request("a2", expires="2001-01-01T00:00:00.000Z"))
    return str(path)


def run(*args: str) -> Result:
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def history(db: str, approval_id: str) -> list[tuple[str, str | None, str | None]]:
    found = oneshot.approval(db, approval_id)
    assert found is not None
    return [(h["state"], h.get("decider"), h.get("reason")) for h in found["history"]]


def test_list_and_show(db: str) -> None:
    line = (
        f"a1  pending   alice -> db/run_sql  rule 'sql needs a dba'  approvers dba  expires {LATER}"
    )
    listed = run("approvals", "list", "--db", db).output.splitlines()
    assert listed[:2] == [line, '    arguments: {"query":"DELETE FROM orders"}']
    assert run("approvals", "show", "a1", "--db", db).output == (
        f"{line}\n"
        'arguments: {"query":"DELETE FROM orders"}\n'
        "  2026-11-01T00:00:00.000Z  pending\n"
    )


BREAK_GLASS = ("--break-glass", "--reason")


def test_break_glass_decides_in_the_store_and_is_recorded_as_such(db: str) -> None:
    result = run(
        "approvals", "approve", "a1", "--as", "dana", *BREAK_GLASS, "ticket 42", "--db", db
    )
    assert result.output.startswith("a1 approved by dana  [BREAK-GLASS: written to the store")
    assert history(db, "a1")[-1] == ("approved", "dana", "ticket 42")
    found = oneshot.approval(db, "a1")
    assert found is not None and found["channel"] == "break-glass"
    decided_as = json.loads(found["decided_as"] or "{}")
    assert (decided_as["via"], decided_as["groups"]) == ("break-glass", None)
    assert decided_as["os_user"] == getpass.getuser()
    assert run("approvals", "list", "--db", db).output.count("\n") == 2  # a2 is left
    shown = run("approvals", "show", "a1", "--db", db).output
    assert "approved by dana (ticket 42)  [via break-glass; written to the store by OS user" in (
        shown
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--as", "dana"], "--as is for break-glass only"),
        (["--as", "dana", "--reason", "x"], "--as is for break-glass only"),
        (["--break-glass"], "--break-glass needs --as NAME and --reason TEXT"),
        (["--break-glass", "--as", "dana"], "--break-glass needs --reason TEXT (who"),
        (["--break-glass", "--reason", "x"], "--break-glass needs --as NAME (who"),
        ([], "no credential: pass your own with --token or $HOLDGATE_TOKEN"),
    ],
)
@pytest.mark.parametrize("verb", ["approve", "deny"])
def test_deciding_without_a_credential_or_full_break_glass_is_a_usage_error(
    db: str, verb: str, args: list[str], message: str
) -> None:
    unset = {"HOLDGATE_TOKEN": None, "HOLDGATE_GATEWAY": None}  # the person's shell's
    result = CliRunner(env=unset).invoke(main, ["approvals", verb, "a1", *args, "--db", db])
    assert result.exit_code == 2
    assert message in result.output
    assert history(db, "a1") == [("pending", None, None)]  # nothing written


def test_a_token_goes_to_the_gateway_never_the_store(db: str) -> None:
    """Without a gateway to answer, a decision with a token fails: it is never written to
    the store as the CLI's own word."""
    result = CliRunner().invoke(
        main,
        [
            "approvals",
            "approve",
            "a1",
            "--token",
            "k",
            "--gateway",
            "http://127.0.0.1:9",
            "--db",
            db,
        ],
    )
    assert (
        result.exit_code == 1 and "cannot reach the gateway at http://127.0.0.1:9" in result.output
    )
    assert history(db, "a1") == [("pending", None, None)]


@pytest.mark.parametrize(
    ("args", "message", "recorded"),
    [
        (
            ["approve", "a1", "--as", "alice", *BREAK_GLASS, "x"],
            "alice requested this call and cannot decide it (separation of duties)",
            True,
        ),
        (
            ["deny", "a2", "--as", "dana", *BREAK_GLASS, "x"],
            "approval a2 expired at 2001-01-01T00:00:00.000Z; the decision came too late",
            True,
        ),
        (["approve", "zz", "--as", "dana", *BREAK_GLASS, "x"], "no approval zz", False),
    ],
)
def test_refusals_are_messages_with_exit_status_1(
    db: str, args: list[str], message: str, recorded: bool
) -> None:
    result = CliRunner().invoke(main, ["approvals", *args, "--db", db])
    assert result.exit_code == 1
    assert result.output == f"Error: {message}\n"
    if recorded:
        verb = "approved" if args[0] == "approve" else "denied"
        assert history(db, args[1])[-1] == (
            "refused_attempt",
            args[3],
            f"{verb} refused: {message}",
        )


def test_a_second_decision_is_refused(db: str) -> None:
    run("approvals", "deny", "a1", "--as", "dana", *BREAK_GLASS, "x", "--db", db)
    result = CliRunner().invoke(
        main, ["approvals", "approve", "a1", "--as", "erin", *BREAK_GLASS, "x", "--db", db]
    )
    assert result.exit_code == 1
    assert result.output == "Error: approval a1 is denied (by dana)\n"


def test_watch_shows_new_requests(db: str) -> None:
    result = run("approvals", "watch", "--db", db, "--count", "2", "--interval", "0")
    assert [line.split()[0] for line in result.output.splitlines()] == ["a1", "a2"]


def test_watch_waits_for_the_store(tmp_path: Path) -> None:
    """`watch` may start before the gateway creates the store; it keeps looking."""
    path = tmp_path / "later.sqlite3"

    def create() -> None:
        with store.SqliteStore(path) as opened:
            opened.create_approval(request("a9"))

    timer = threading.Timer(0.3, create)
    timer.start()
    result = run("approvals", "watch", "--db", str(path), "--count", "1", "--interval", "0.05")
    timer.join()
    assert result.output.split()[0] == "a9"
