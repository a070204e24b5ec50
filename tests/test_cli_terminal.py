"""What `holdgate` prints to a terminal cannot drive it: a hostile client's tool name and
arguments, shown to the approver, arrive as escapes; a file or a pipe gets the bytes."""

from __future__ import annotations

import io
import json
import os
import pty
import select
import subprocess
import unicodedata
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from helpers.processes import HOLDGATE
from holdgate import store
from holdgate.cli.terminal import TerminalGuard
from holdgate.escapes import inert

# A client's tool name that redraws the approver's line (erase it, back to its start,
# write an innocent name), then an OSC 52 clipboard write, a C1 CSI and a bidi override.
HOSTILE_TOOL = "run_sql\x1b[2K\rget_customer"
HOSTILE_ARGS = '{"query":"DROP TABLE orders\x9b2J \u202eelbat\u2028x"}'
DRIVING = ("\x1b", "\x9b", "\u202e", "\u2028", "\r")


@pytest.mark.parametrize(
    ("raw", "shown"),
    [
        ("plain text, größe, 名前", "plain text, größe, 名前"),
        ("a\tb\nc\r\n", "a\tb\nc\r\n"),
        ("\x1b[31mred", "\\u001b[31mred"),
        ("\x9b2J", "\\u009b2J"),
        ("evil\u202etxt", "evil\\u202etxt"),
        ("line\u2028sep\u2029", "line\\u2028sep\\u2029"),
        ("back\rover", "back\\u000dover"),
        ("tag\U000e0041", "tag\\udb40\\udc41"),
        ("\x00\x7f", "\\u0000\\u007f"),
    ],
)
def test_a_driving_character_is_shown_as_its_escape(raw: str, shown: str) -> None:
    assert inert(raw) == shown


@given(st.text())
def test_nothing_that_drives_a_terminal_is_left(raw: str) -> None:
    shown = inert(raw)
    assert all(
        char in "\t\n"
        or unicodedata.category(char) not in ("Cc", "Cf", "Zl", "Zp")
        or (char == "\r" and shown[i + 1 : i + 2] == "\n")
        for i, char in enumerate(shown)
    )


@given(st.text())
def test_json_output_stays_the_same_json(value: str) -> None:
    text = json.dumps({"v": value}, ensure_ascii=False)
    assert json.loads(inert(text)) == {"v": value}


def test_a_line_end_split_across_writes_is_kept_and_a_lone_return_is_not() -> None:
    sink = io.StringIO()
    guard = TerminalGuard(sink)
    guard.write("one\r")
    guard.write("\ntwo\r")
    guard.write("three\r")
    guard.flush()
    assert sink.getvalue() == "one\r\ntwo\\u000dthree\\u000d"


@pytest.fixture
def hostile_db(tmp_path: Path) -> str:
    path = tmp_path / "audit.sqlite3"
    with store.SqliteStore(path) as opened:
        opened.create_approval(
            {
                "approval_id": "a1",
                "requester": "mallory",
                "upstream": "db",
                "method": "tools/call",
                "tool": HOSTILE_TOOL,
                "args_masked": HOSTILE_ARGS,
                "rule": "sql needs a dba",
                "approvers": '["dba"]',
                "created": "2026-11-01T00:00:00.000Z",
                "expires": "2999-01-01T00:00:00.000Z",
                "ts": "2026-11-01T00:00:00.000Z",
            }
        )
    return str(path)


def on_a_terminal(*args: str) -> str:
    """The real `holdgate` with its stdout and stderr on a pseudo-terminal: what it wrote."""
    main, child = pty.openpty()
    try:
        proc = subprocess.Popen([HOLDGATE, *args], stdout=child, stderr=child)
        os.close(child)
        child = -1
        out = b""
        for _ in range(2000):  # bounded: at most 2000 reads of up to 64 KiB
            ready, _, _ = select.select([main], [], [], 30)
            if not ready:
                break
            try:
                chunk = os.read(main, 65536)
            except OSError:  # the child closed the terminal
                break
            if not chunk:
                break
            out += chunk
        assert proc.wait(timeout=60) == 0, out
    finally:
        os.close(main)
        if child != -1:
            os.close(child)
    return out.decode()


def test_the_approver_sees_a_hostile_tool_name_and_arguments_as_escapes(hostile_db: str) -> None:
    for command in (["approvals", "list"], ["approvals", "show", "a1"]):
        shown = on_a_terminal(*command, "--db", hostile_db)
        assert not any(char in shown.replace("\r\n", "\n") for char in DRIVING), shown
        assert "run_sql\\u001b[2K\\u000dget_customer" in shown
        assert "DROP TABLE orders\\u009b2J \\u202eelbat\\u2028x" in shown


def test_a_pipe_gets_the_bytes_as_stored(hostile_db: str) -> None:
    piped = subprocess.run(
        [HOLDGATE, "approvals", "list", "--db", hostile_db],
        capture_output=True,
        timeout=60,
        check=True,
    ).stdout.decode()
    # click itself drops ANSI styles (`ESC [...m`-like sequences) off a terminal; the rest
    # is as stored
    assert "db/run_sql\rget_customer" in piped and HOSTILE_ARGS in piped
