"""Approvals through MCP elicitation: the token, the client's capability, the store's side
(single use, expiry, restarts) and the rule switch. The end-to-end path is in
test_e2e_elicited_approvals.py."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from helpers.approvals import approval_request
from holdgate import store
from holdgate.approvals import elicitation as el
from holdgate.configfile import ConfigError, parse_yaml
from holdgate.policy.rules import parse_rules
from holdgate.store import schema

KEY = b"k" * 32
NOW = 1_800_000_000.0
CAPABLE = {
    "io.modelcontextprotocol/protocolVersion": "2026-07-28",
    "io.modelcontextprotocol/clientCapabilities": {"elicitation": {"url": {}}},
}


def token(approval_id: str = "a1", user: str = "alice", digest: str = "d" * 64) -> str:
    return el.state_token(KEY, approval_id, user, "db", digest)


def test_a_token_holds_only_for_its_approval_identity_upstream_and_call() -> None:
    good = token()
    assert el.is_gateway_state(good) and el.token_approval(good) == "a1"
    assert el.token_holds(KEY, good, "a1", "alice", "db", "d" * 64)
    assert not el.token_holds(KEY, good, "a1", "bob", "db", "d" * 64)
    assert not el.token_holds(KEY, good, "a1", "alice", "other", "d" * 64)
    assert not el.token_holds(KEY, good, "a1", "alice", "db", "e" * 64)
    assert not el.token_holds(b"x" * 32, good, "a1", "alice", "db", "d" * 64)
    # a status-page capability is no requestState, and the reverse
    assert el.status_token(KEY, "a1") not in good
    assert el.status_token_holds(KEY, "a1", el.status_token(KEY, "a1"))
    assert not el.status_token_holds(KEY, "a2", el.status_token(KEY, "a1"))


@pytest.mark.parametrize(
    "value",
    [
        el.STATE_PREFIX,
        el.STATE_PREFIX + "a1",
        el.STATE_PREFIX + "a1." + "0" * 10,
        el.STATE_PREFIX + "../etc." + "0" * 64,
        el.STATE_PREFIX + "a" * 65 + "." + "0" * 64,
        el.STATE_PREFIX + "." + "0" * 64,
    ],
)
def test_malformed_tokens_name_no_approval(value: str) -> None:
    assert el.is_gateway_state(value)
    assert el.token_approval(value) is None


def test_an_upstreams_own_request_state_is_not_the_gateways() -> None:
    assert not el.is_gateway_state("opaque-upstream-state")
    assert not el.is_gateway_state(None)
    assert not el.is_gateway_state({"a": 1})


def call(meta: Any = CAPABLE, method: str = "tools/call", **params: Any) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": 7, "method": method, "params": {"_meta": meta, **params}}


@pytest.mark.parametrize(
    ("message", "header", "expected"),
    [
        (call(), None, True),
        (call(method="resources/read"), None, True),
        (call(method="tools/list"), None, False),  # not a method the client retries
        (call({**CAPABLE, "io.modelcontextprotocol/protocolVersion": "2025-11-25"}), None, False),
        (
            call({"io.modelcontextprotocol/clientCapabilities": {"elicitation": {"url": {}}}}),
            "2026-07-28",
            True,
        ),
        (
            call({"io.modelcontextprotocol/clientCapabilities": {"elicitation": {"form": {}}}}),
            "2026-07-28",
            False,
        ),
        (
            call({**CAPABLE, "io.modelcontextprotocol/clientCapabilities": {"elicitation": True}}),
            None,
            False,
        ),
        (call("not a dict"), "2026-07-28", False),
        ({"jsonrpc": "2.0", "method": "tools/call", "params": {"_meta": CAPABLE}}, None, False),
        (call({**CAPABLE, "io.modelcontextprotocol/protocolVersion": 20260728}), None, False),
    ],
)
def test_only_a_modern_client_declaring_url_elicitation_gets_a_link(
    message: dict[str, Any], header: str | None, expected: bool
) -> None:
    assert el.accepts_url_elicitation(message, header) is expected


def test_the_gateways_round_is_taken_out_before_the_call_leaves() -> None:
    retry = call(
        name="run_sql",
        arguments={"q": 1},
        requestState=token(),
        inputResponses={el.INPUT_KEY: {"action": "accept"}, "upstream-q": {"action": "accept"}},
    )
    out = el.without_gateway_round(retry)
    assert out["params"] == {
        "_meta": CAPABLE,
        "name": "run_sql",
        "arguments": {"q": 1},
        "inputResponses": {"upstream-q": {"action": "accept"}},
    }
    assert "requestState" in retry["params"]  # the original is left as it was
    only_ours = call(inputResponses={el.INPUT_KEY: {"action": "accept"}}, requestState="x")
    assert "inputResponses" not in el.without_gateway_round(only_ours)["params"]


@pytest.mark.parametrize(
    ("responses", "answer"),
    [
        ({el.INPUT_KEY: {"action": "accept"}}, "accept"),
        ({el.INPUT_KEY: {"action": "decline"}}, "decline"),
        ({el.INPUT_KEY: {"action": "ACCEPT"}}, None),
        ({el.INPUT_KEY: "accept"}, None),
        ({"other": {"action": "accept"}}, None),
        ([], None),
    ],
)
def test_the_clients_answer(responses: Any, answer: str | None) -> None:
    assert el.client_answer(call(inputResponses=responses)) == answer


def test_the_status_page_escapes_everything_and_shows_no_arguments() -> None:
    record: Any = {
        "approval_id": "a1",
        "state": "pending",
        "tool": "<script>alert(1)</script>",
        "upstream": "db",
        "requester": "alice",
        "rule": "r & <b>",
        "expires": "2026-12-01T00:00:00Z",
        "args_masked": '{"query": "DELETE FROM t"}',
    }
    page = el.status_page(record, ["dba"])
    assert "<script>" not in page and "&lt;script&gt;" in page
    assert "r &amp; &lt;b&gt;" in page and "DELETE" not in page
    assert 'http-equiv="refresh"' in page
    settled = el.status_page({**record, "state": "denied", "decider": "dana"}, ["dba"])
    assert "refresh" not in settled and "Denied" in settled and "dana" in settled


# --- the store ---------------------------------------------------------------------------


def request(approval_id: str, via: str | None = "elicitation", expires: float = NOW + 300) -> Any:
    return approval_request(approval_id, NOW, expires=store.iso(expires), via=via)


@pytest.fixture
def db(tmp_path: Path) -> Iterator[store.SqliteStore]:
    with store.SqliteStore(tmp_path / "audit.sqlite3") as opened:
        yield opened


def test_an_approval_is_redeemed_once_and_only_by_its_requester(db: store.SqliteStore) -> None:
    db.create_approval(request("e1"))
    assert not db.redeem_approval("e1", "alice", "too early")  # still pending
    db.decide_approval("e1", "approved", "dana", ["dba"], now=NOW)
    assert not db.redeem_approval("e1", "bob", "not bob's")
    assert db.redeem_approval("e1", "alice", "call forwarded")
    assert not db.redeem_approval("e1", "alice", "replayed")
    record = db.approval("e1")
    assert record is not None and record["state"] == "approved"  # an annotation
    assert [h["state"] for h in record["history"]] == ["pending", "approved", "redeemed"]
    assert not db.redeem_approval("nope", "alice", "unknown")
    assert db.verify().ok


def test_a_restart_expires_held_approvals_only(db: store.SqliteStore) -> None:
    db.create_approval(request("held", via="hold"))
    db.create_approval(request("old", via=None))  # a row from before schema 3: held
    db.create_approval(request("linked"))
    assert db.expire_pending("gateway restarted") == 2
    states = {r["approval_id"]: r["state"] for r in db.approvals()}
    assert states == {"held": "expired", "old": "expired", "linked": "pending"}


def test_overdue_elicitation_approvals_are_closed(db: store.SqliteStore) -> None:
    db.create_approval(request("due", expires=NOW + 10))
    db.create_approval(request("later", expires=NOW + 100))
    db.create_approval(request("held", via="hold", expires=NOW + 10))  # its hold expires it
    assert db.expire_overdue("nobody decided in time", now=NOW + 50) == 1
    states = {r["approval_id"]: r["state"] for r in db.approvals()}
    assert states == {"due": "expired", "later": "pending", "held": "pending"}


def test_a_schema_2_store_migrates_and_still_verifies(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "audit.sqlite3"
    with monkeypatch.context() as patched:
        patched.setattr(schema, "MIGRATIONS", schema.MIGRATIONS[:2])
        patched.setattr(schema, "SCHEMA_VERSION", 2)
        patched.setitem(schema.COLUMNS, "approvals", schema._V1["approvals"])
        with store.SqliteStore(path) as old:
            old.create_approval({k: v for k, v in request("a1").items() if k != "via"})
    with sqlite3.connect(path) as conn:
        assert store.schema_version(conn) == 2
    with store.SqliteStore(path) as new:
        assert new.verify().ok
        found = new.approval("a1")
        assert found is not None and found["via"] is None and found["state"] == "pending"
        assert new.expire_pending("gateway restarted") == 1  # a v2 approval was held


# --- the rule switch ----------------------------------------------------------------------

RULE = "rules:\n  - name: a\n    match: {}\n    action: approve\n    approvers: [dba]\n"


def test_approval_via_is_per_rule_and_holds_by_default() -> None:
    def via(text: str) -> str:
        return parse_rules(parse_yaml(text, "t.yaml").root.child("rules")).rules[0].approval_via

    assert via(RULE) == "hold"
    assert via(RULE + "    approval_via: elicitation\n") == "elicitation"


@pytest.mark.parametrize(
    ("text", "where", "fragment"),
    [
        (RULE + "    approval_via: link\n", "t.yaml:6:5", "one of hold, elicitation"),
        (
            "rules:\n  - name: a\n    match: {}\n    action: allow\n    approval_via: hold\n",
            "t.yaml:5:5",
            "only applies to rules with action: approve",
        ),
    ],
)
def test_a_careless_approval_via_is_named(text: str, where: str, fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment) as info:
        parse_rules(parse_yaml(text, "t.yaml").root.child("rules"))
    assert str(info.value).startswith(where)
