"""`holdgate review`: the access review per identity, from the store and the rules."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from helpers import oneshot
from helpers.clients import connect
from helpers.configs import ALICE, identity
from holdgate import store
from holdgate.cli.main import main

RULES = (
    "version: 1\n"
    + identity("alice")
    + """upstreams:
  - name: demo
    url: {url}
rules:
  - name: listing
    match: {{method: [initialize, "notifications/*", ping, tools/list]}}
    action: allow
  - name: support
    match: {{groups: [support], tool: ["get_customer", "search_customers"]}}
    action: allow
masking:
  - name: pii
    detectors: [email]
    strategy: redact
"""
)


def review(db: Path, config: Path) -> str:
    result = CliRunner().invoke(
        main, ["review", "--db", str(db), "--config", str(config)], catch_exceptions=False
    )
    assert result.exit_code == 0, result.output
    return result.output


def test_masked_exposures_count_each_row_once(tmp_path: Path) -> None:
    config = tmp_path / "holdgate.yaml"
    config.write_text(RULES.format(url="http://127.0.0.1:9"))
    db = tmp_path / "audit.sqlite3"
    common = {"user": "alice", "groups": ["support"], "upstream": "demo", "method": "tools/call"}
    with store.SqliteStore(db) as opened:
        opened.append(
            "events",
            {
                **common,
                "direction": "request",
                "target": "get_customer",
                "decision": "allow",
                "masked": {"email": 1},
            },  # an e-mail in the call's own arguments
        )
        opened.append(
            "events",
            {
                **common,
                "direction": "response",
                "target": "get_customer",
                "decision": "pass",
                "masked": {"email": 2},
            },
        )
    assert "masked exposures: email 3\n" in review(db, config)


@pytest.mark.anyio
async def test_a_search_through_the_gateway_is_counted_once(demo, gateway_factory) -> None:
    """The request row carried the response's findings too: one search of two customers
    showed twice the e-mails it masked."""
    gw = gateway_factory(RULES.format(url=demo.url), demo.url)
    async with connect(gw.url + "/mcp", ALICE) as client:
        await client.call_tool("search_customers", {"query": "a"})
    gw.proc.terminate()
    gw.proc.wait(timeout=10)
    rows = oneshot.export_rows(gw.db)
    answered = sum(
        json.loads(r["masked"] or "{}").get("email", 0) for r in rows if r["direction"] != "request"
    )
    in_requests = [r["masked"] for r in rows if r["direction"] == "request"]
    assert answered > 0 and in_requests == [None] * len(in_requests)
    assert f"masked exposures: email {answered}\n" in review(gw.db, gw.config)


def test_sessions_and_clients_per_identity_in_every_format(tmp_path: Path) -> None:
    config = tmp_path / "holdgate.yaml"
    config.write_text(RULES.format(url="http://127.0.0.1:9"))
    db = tmp_path / "audit.sqlite3"
    call = {"user": "alice", "groups": ["support"], "upstream": "demo", "method": "tools/call"}
    with store.SqliteStore(db) as opened:
        for session, client in (("hg-1", "cli/1.0"), ("hg-2", "ide/2 <b>"), ("s-3", None)):
            opened.append(
                "sessions",
                {"session_id": session, "user": "alice", "client": client, "kind": "grouped"},
            )
            opened.append(
                "events",
                {**call, "session_id": session, "direction": "request", "target": "get_customer"},
            )
    assert "sessions: 3; clients: ` cli/1.0, ide/2 <b> `\n" in review(db, config)

    def rendered(fmt: str) -> str:
        args = ["review", "--db", str(db), "--config", str(config), "--format", fmt]
        return CliRunner().invoke(main, args, catch_exceptions=False).output

    assert "sessions: 3; clients: cli/1.0, ide/2 &lt;b&gt;</p>" in rendered("html")
    header, row = rendered("csv").splitlines()[:2]
    assert header.endswith(",sessions,clients") and row.endswith(",3,cli/1.0 | ide/2 <b>")


def test_campaign_status_shows_control_characters_escaped(tmp_path: Path) -> None:
    """A reviewer's reason and a tool name reach a terminal: an escape sequence in them
    (a hyperlink, a cursor move, a cleared line) is shown, never acted on."""
    from holdgate.store.campaign_records import ItemSpec

    db = tmp_path / "audit.sqlite3"
    evil = "get\x1b]8;;http://127.0.0.1:9/x\x07click\x1b]8;;\x07\x1b[2K\u202e"
    with store.SqliteStore(db) as opened:
        spec = ItemSpec("alice", "demo", "tool", evil, "support", {"calls": 1})
        period = ("2026-01-01T00:00:00Z", "2026-02-01T00:00:00Z")
        cid = opened.start_campaign("rc-1", period, "h", "carol", {}, [spec]).campaign_id
    certified = CliRunner().invoke(
        main,
        [
            "review",
            "certify",
            f"{cid}.1",
            "keep",
            "--break-glass",
            "--as",
            "carol",
            "--reason",
            evil,
            "--db",
            str(db),
        ],
        catch_exceptions=False,
    )
    status = CliRunner().invoke(main, ["review", "status", cid, "--db", str(db)])
    for result in (certified, status):
        assert result.exit_code == 0, result.output
        assert "\x1b" not in result.output and "\x07" not in result.output
        assert "\u202e" not in result.output
        assert "get\\u001b]8;;http://127.0.0.1:9/x\\u0007click" in result.output
