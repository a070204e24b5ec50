"""The words of a decision (the console line and the mitmweb comment), and mitmweb's
columns: pure functions, literal cases (#28)."""

from __future__ import annotations

import calendar
import logging
import unicodedata

import pytest
from hypothesis import given
from hypothesis import strategies as st
from mitmproxy.exceptions import OptionsError
from mitmproxy.test import taddons, tflow

from holdgate.addons.decision_log import DecisionLog, with_comment_column
from holdgate.addons.flowstate import DecidedMessage
from holdgate.policy.decision_text import DecisionText, held_outcome, one_line
from holdgate.policy.rules import Decision
from holdgate.protocol.jsonrpc import Message

DEFAULT_COLUMNS = ["tls", "icon", "path", "method", "status", "size", "time"]
EXPIRES = calendar.timegm((2026, 12, 7, 5, 2, 11))


def test_a_denial_names_caller_call_outcome_and_rule() -> None:
    text = DecisionText("bob", "tools/call", "exec_shell", "deny", "no shell")
    assert str(text) == "bob tools/call exec_shell: deny (rule 'no shell')"


def test_a_hold_names_its_approval_approvers_and_expiry() -> None:
    text = DecisionText(
        "alice", "tools/call", "run_sql", "hold", "sql", "ab12", ("dba", "sre"), EXPIRES
    )
    assert str(text) == (
        "alice tools/call run_sql: hold (rule 'sql'; approval ab12; approvers dba, sre; "
        "expires 05:02:11Z)"
    )


def test_a_decided_hold_names_who_and_how() -> None:
    text = DecisionText(
        "alice", "tools/call", "run_sql", "approved", "sql", "ab12", decider="dana", channel="cli"
    )
    assert (
        str(text)
        == "alice tools/call run_sql: approved by dana via cli (rule 'sql'; approval ab12)"
    )


def test_nobody_and_no_method_are_said_plainly() -> None:
    assert str(DecisionText(None, None, None, "deny", "default-deny")) == (
        "(unauthenticated) (no method): deny (rule 'default-deny')"
    )


@pytest.mark.parametrize(
    ("raw", "shown"),
    [
        ("run_sql", "run_sql"),
        ("x\nholdgate decision: forged", "x\\nholdgate decision: forged"),
        ("\x1b[31mred", "\\x1b[31mred"),
        ("evil\u202etxt", "evil\\u202etxt"),
        ("größe", "größe"),
        ("a" * 300, "a" * 200 + "…"),
    ],
)
def test_a_name_is_one_printable_line(raw: str, shown: str) -> None:
    assert one_line(raw) == shown
    line = str(DecisionText(raw, "tools/call", raw, "allow", raw))
    assert "\n" not in line and "\x1b" not in line


UNSHOWN = ("Cc", "Cf", "Zl", "Zp")  # control, format (bidi), line and paragraph separators


@given(st.text(max_size=40))
def test_no_name_keeps_a_control_format_or_separator_character(raw: str) -> None:
    """The printable fast path never lets one through: each is shown as its escape."""
    shown = one_line(raw)
    assert not any(unicodedata.category(c) in UNSHOWN for c in shown)
    assert shown == "".join(
        ascii(c)[1:-1] if unicodedata.category(c) in UNSHOWN else c for c in raw
    )


@pytest.mark.parametrize(
    ("state", "outcome"),
    [(None, "hold"), ("pending", "hold"), ("approved", "approved"), ("expired", "expired")],
)
def test_a_held_message_reads_its_approval_state(state, outcome) -> None:
    assert held_outcome(state) == outcome


@pytest.mark.parametrize(
    ("current", "columns"),
    [
        (DEFAULT_COLUMNS, [*DEFAULT_COLUMNS, "comment"]),
        (["path", "status"], None),  # the operator's choice stays
        ([*DEFAULT_COLUMNS, "comment"], None),
    ],
)
def test_the_comment_column_is_added_only_to_the_default(current, columns) -> None:
    assert with_comment_column(current, DEFAULT_COLUMNS) == columns


def decided(action: str, rule: str) -> DecidedMessage:
    message = Message({}, "request", "tools/call", 1, "exec_shell", {"command": "secret-arg"})
    return DecidedMessage(message, Decision(action, rule, "why"))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("level", "logged"), [("info", logging.INFO), ("warn", logging.WARNING), ("off", None)]
)
def test_the_decision_line_is_logged_at_the_chosen_level(caplog, level, logged) -> None:
    log = DecisionLog()
    with taddons.context(log) as tctx:
        tctx.configure(log, holdgate_decision_log=level)
        caplog.set_level(logging.DEBUG, logger="holdgate")
        log.decided(tflow.tflow(), [decided("deny", "no shell")])
    lines = [r for r in caplog.records if "holdgate decision:" in r.getMessage()]
    if logged is None:
        assert lines == []
        return
    (line,) = lines
    assert line.levelno == logged
    assert line.getMessage() == (
        "holdgate decision: (unauthenticated) tools/call exec_shell: deny (rule 'no shell')"
    )
    assert "secret-arg" not in line.getMessage()


def test_an_unknown_level_is_refused_naming_the_choices() -> None:
    log = DecisionLog()
    with taddons.context(log) as tctx, pytest.raises(OptionsError, match="info, warn, off"):
        tctx.configure(log, holdgate_decision_log="loud")
