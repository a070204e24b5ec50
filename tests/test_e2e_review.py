"""Access reviews end to end: traffic of several identities through a real gateway, a
certification campaign over it (CLI and the approvals API), a candidate policy from its
revocations replayed on the same traffic, and the report read back from headless Chromium."""

from __future__ import annotations

import json
import re
import socket
import sqlite3
import urllib.error
import urllib.request
from pathlib import Path

import anyio
import pytest
from click.testing import CliRunner
from mcp import MCPError

from helpers import oneshot
from helpers.approvals import DELETE, wait_for_pending
from helpers.browser import dump_dom
from helpers.clients import connect
from helpers.configs import ALICE, BOB, CAROL, identity
from helpers.processes import free_port, holdgate_cli
from holdgate import store
from holdgate.cli.main import main

CONFIG = (
    "version: 1\n"
    + identity("alice", "bob", "carol", "dana")
    + """upstreams:
  - name: demo
    url: {url}
review:
  reviewers: [compliance]
rules:
  - name: destructive SQL needs a DBA
    match: {{tool: run_sql, args: {{"$.query": {{search: "(?i)delete"}}}}}}
    action: approve
    approvers: [dba]
    timeout: 20s
  - name: support reads customers
    match: {{groups: [support], tool: [get_customer, search_customers]}}
    action: allow
    limit: 120/min
  - name: engineering SQL
    match: {{groups: [engineering], tool: run_sql}}
    action: allow
  - name: listing
    match: {{method: [initialize, "notifications/*", ping, tools/list, server/discover]}}
    action: allow
masking:
  - name: pii
    detectors: [email]
    strategy: redact
"""
)
EVIL_TOOL = "<img src=x onerror=alert(1)>"
EVIL_REASON = "<script>alert(1)</script> not needed"


def api(admin: str, path: str, headers: dict, body: dict | None = None):
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(
        f"http://{admin}{path}", data=data, headers=headers, method="POST" if data else "GET"
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def cli(*args: str):
    return holdgate_cli(*args)


async def traffic(gw) -> None:
    async with connect(gw.url + "/mcp", ALICE) as client:
        await client.call_tool("get_customer", {"customer_id": 1})
        await client.call_tool("search_customers", {"query": "a"})
        for tool in ("exec_shell", EVIL_TOOL):
            with pytest.raises(MCPError):
                await client.call_tool(tool, {"command": "id"})
    async with connect(gw.url + "/mcp", CAROL) as client:
        await client.call_tool("get_customer", {"customer_id": 2})
    async with connect(gw.url + "/mcp", BOB) as client:
        async with anyio.create_task_group() as tg:
            tg.start_soon(client.call_tool, "run_sql", DELETE)
            pending = await wait_for_pending(gw.db, "bob")
            done = cli(
                "approvals",
                "approve",
                pending["approval_id"],
                "--as",
                "dana",
                "--reason",
                "ticket 42",
                "--db",
                str(gw.db),
            )
            assert done.returncode == 0, done.stderr
        await client.call_tool("run_sql", {"query": "SELECT 1"})
    with anyio.fail_after(15):  # the writer thread commits within a moment
        while (
            len(
                [
                    r
                    for r in oneshot.export_rows(gw.db)
                    if r["method"] == "tools/call" and r["direction"] == "request"
                ]
            )
            < 7
        ):
            await anyio.sleep(0.1)


@pytest.mark.anyio
async def test_a_campaign_from_real_traffic_to_a_replayed_candidate(
    demo, gateway_factory, tmp_path
) -> None:
    admin = f"127.0.0.1:{free_port()}"
    gw = gateway_factory(CONFIG.format(url=demo.url), demo.url, options={"holdgate_admin": admin})
    await traffic(gw)
    db = str(gw.db)
    with store.SqliteStore(gw.db) as opened:  # a tool that changed: an exception
        opened.append(
            "tool_pins",
            {
                "upstream": "demo",
                "tool": "get_customer",
                "event": "changed",
                "detail": "description changed",
            },
        )

    started = cli(
        "review",
        "campaign",
        "start",
        "--period",
        "1d",
        "--config",
        str(gw.config),
        "--as",
        "carol",
        "--db",
        db,
    )
    assert started.returncode == 0, started.stderr
    cid = re.search(r"campaign (rc-\S+) started", started.stdout).group(1)
    with store.SqliteStore(gw.db) as opened:
        campaign = opened.campaign(cid)
    items = {(i.user, i.target): i for i in campaign.items}
    assert items[("alice", "search_customers")].usage["calls"] == 1
    assert ("alice", "exec_shell") not in items  # a denial is no grant
    assert items[("bob", "run_sql")].rule == "engineering SQL"
    revoked = items[("alice", "search_customers")]

    selfish = cli(
        "review",
        "certify",
        items[("alice", "get_customer")].item_id,
        "keep",
        "--as",
        "alice",
        "--reason",
        "I need it",
        "--db",
        db,
    )
    assert selfish.returncode == 1 and "separation of duties" in selfish.stderr

    # over the API: reviewers only, decisions through the same rules
    assert api(admin, "/campaigns", BOB)[0] == 403
    path = f"/campaigns/{cid}/items/{revoked.item_id}/certify"
    status, body = api(admin, path, BOB, {"decision": "keep", "reason": "fine"})
    assert status == 403 and "not in the reviewer groups" in body["error"]
    status, body = api(
        admin,
        f"/campaigns/{cid}/items/{cid}.999/certify",
        CAROL,
        {"decision": "keep", "reason": "x"},
    )
    assert status == 404
    status, body = api(admin, path, CAROL, {"decision": "revoke", "reason": EVIL_REASON})
    assert status == 200 and body["state"] == "revoke" and body["reviewer"] == "carol"
    status, body = api(admin, path, CAROL, {"decision": "keep", "reason": "changed my mind"})
    assert status == 409 and "decided already" in body["error"]
    status, listed = api(admin, f"/campaigns/{cid}", CAROL)
    assert status == 200 and listed["progress"]["revoke"] == 1

    for item in campaign.items:
        if item.item_id != revoked.item_id:
            reviewer = "dana" if item.user == "carol" else "carol"
            done = cli(
                "review",
                "certify",
                item.item_id,
                "keep",
                "--as",
                reviewer,
                "--reason",
                "in use",
                "--db",
                db,
            )
            assert done.returncode == 0, done.stderr
    status_text = cli("review", "status", cid, "--db", db).stdout
    assert f"{len(campaign.items) - 1} keep, 1 revoke" in status_text
    assert cli("review", "campaign", "close", cid, "--as", "carol", "--db", db).returncode == 0

    candidate = tmp_path / "candidate.yaml"
    applied = cli(
        "review", "apply", cid, "--out", str(candidate), "--config", str(gw.config), "--db", db
    )
    assert applied.returncode == 0, applied.stderr
    assert cli("policy", "check", str(candidate)).returncode == 0
    replayed = cli("policy", "replay", str(candidate), "--db", db, "--format", "json")
    assert replayed.returncode == 0, replayed.stderr
    (changed,) = json.loads(replayed.stdout)["changed"]  # exactly the revoked use
    assert changed["recorded"] == {"action": "allow", "rule": "support reads customers"}
    assert changed["candidate"]["action"] == "deny" and changed["count"] == 1
    assert [(m["user"], m["target"]) for m in changed["messages"]] == [
        ("alice", "search_customers")
    ]

    report = tmp_path / "review.html"
    made = cli(
        "review",
        "--campaign",
        cid,
        "--format",
        "html",
        "--as",
        "auditor-eve",
        "--config",
        str(gw.config),
        "--db",
        db,
        "-o",
        str(report),
    )
    assert made.returncode == 0, made.stderr
    dom = await anyio.to_thread.run_sync(dump_dom, report.as_uri())
    text = re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", dom))
    assert "generated" in text and "by auditor-eve" in text and "hash chain intact" in text
    assert "tool-changed" in text and "demo get_customer" in text
    assert "revoke carol" in text
    assert "&lt;script&gt;alert(1)&lt;/script&gt; not needed" in dom and "<script" not in dom
    assert "&lt;img src=x onerror=alert(1)&gt;" in dom and "<img" not in dom
    assert "REFUSED demo tool exec_shell" in text


def test_apply_refuses_a_tampered_store_and_another_config(tmp_path: Path) -> None:
    config = tmp_path / "holdgate.yaml"
    config.write_text(CONFIG.format(url="http://127.0.0.1:9"))
    db = tmp_path / "audit.sqlite3"
    with store.SqliteStore(db) as opened:
        opened.append(
            "events",
            {
                "user": "alice",
                "groups": ["support"],
                "upstream": "demo",
                "method": "tools/call",
                "target": "get_customer",
                "direction": "request",
                "decision": "allow",
                "rule": "support reads customers",
            },
        )

    def run(*args: str):
        return CliRunner().invoke(main, ["review", *args, "--db", str(db)], catch_exceptions=False)

    started = run("campaign", "start", "--config", str(config), "--as", "carol")
    cid = re.search(r"campaign (rc-\S+) started", started.output).group(1)
    assert run("certify", f"{cid}.1", "revoke", "--as", "carol", "--reason", "gone").exit_code == 0
    out = str(tmp_path / "candidate.yaml")
    still_open = run("apply", cid, "--out", out, "--config", str(config))
    assert still_open.exit_code == 1 and "still open: close it first" in still_open.output
    assert run("campaign", "close", cid).exit_code == 0
    other = tmp_path / "other.yaml"
    other.write_text(config.read_text() + "\n# edited\n")
    moved = run("apply", cid, "--out", out, "--config", str(other))
    assert moved.exit_code == 1 and "is not the config campaign" in moved.output
    with sqlite3.connect(db) as raw:  # someone rewrites a decision behind the chain's back
        raw.execute("UPDATE certifications SET state = 'keep' WHERE state = 'revoke'")
    tampered = run("apply", cid, "--out", out, "--config", str(config))
    assert tampered.exit_code == 1 and "hash chain is broken" in tampered.output
    assert not Path(out).exists()


PIXEL = "![pixel](http://127.0.0.1:9/track.png?who=reviewer)"
LINK = "[x](javascript:alert(1))"


@pytest.mark.anyio
async def test_a_hostile_client_name_and_tool_are_inert_in_every_report(
    demo, gateway_factory, tmp_path
) -> None:
    """A client names itself with an image and a link, calls a tool named with Markdown and
    HTML: the Markdown report (as GitHub renders it) and the HTML report (as Chromium builds
    it) show them as text, with no image, link or heading of theirs."""
    import cmarkgfm
    from cmarkgfm.cmark import Options
    from mcp.types import Implementation

    gw = gateway_factory(CONFIG.format(url=demo.url), demo.url)
    evil_tool = f"{LINK}\n# owned\n`` <img src=x> |"
    info = Implementation(name=PIXEL, version=f"1 {LINK}")
    async with connect(gw.url + "/mcp", ALICE, client_info=info) as client:
        await client.call_tool("get_customer", {"customer_id": 1})
        with pytest.raises(MCPError):
            await client.call_tool(evil_tool, {"command": PIXEL})
    with anyio.fail_after(15):
        while not any(r["target"] == evil_tool for r in oneshot.export_rows(gw.db)):
            await anyio.sleep(0.1)
    pages = {}
    for fmt in ("md", "html", "json", "csv"):
        out = tmp_path / f"review.{fmt}"
        made = cli("review", "--format", fmt, "--as", "auditor", "--db", str(gw.db), "-o", str(out))
        assert made.returncode == 0, made.stderr
        pages[fmt] = out.read_text()
    assert PIXEL in pages["md"]  # the client's name is in the report, as a code span
    github = cmarkgfm.github_flavored_markdown_to_html(
        pages["md"], options=Options.CMARK_OPT_UNSAFE
    )
    (tmp_path / "review-md.html").write_text(github)
    for page in ("review-md.html", "review.html"):
        dom = await anyio.to_thread.run_sync(dump_dom, (tmp_path / page).as_uri())
        assert "track.png" in dom and "javascript:alert" in dom, page  # shown as text
        assert "<img" not in dom and "<a " not in dom and "owned</h1>" not in dom, page
    assert json.loads(pages["json"])["identities"][0]["clients"] == [f"{PIXEL}/1 {LINK}"]


def api_is_down(admin: str) -> bool:
    host, _, port = admin.rpartition(":")
    try:
        socket.create_connection((host, int(port)), timeout=1).close()
    except OSError:
        return True
    return False


@pytest.mark.anyio
async def test_refused_certifications_are_bounded_per_caller(demo, gateway_factory) -> None:
    """A non-reviewer floods the certify API with 64 KiB reasons: every attempt is refused,
    the first 10 a minute are recorded one by one, the rest counted into the caller's next
    recorded refusal; no stored reason is longer than its bound."""
    from holdgate.store.campaign_records import REASON_CHARS, ItemSpec

    admin = f"127.0.0.1:{free_port()}"
    gw = gateway_factory(CONFIG.format(url=demo.url), demo.url, options={"holdgate_admin": admin})
    spec = ItemSpec("alice", "demo", "tool", "get_customer", "support reads customers", {})
    period = ("2026-01-01T00:00:00Z", "2026-02-01T00:00:00Z")
    with store.SqliteStore(gw.db) as opened:
        cid = opened.start_campaign("rc-flood", period, "h", "carol", {}, [spec]).campaign_id
    with anyio.fail_after(15):  # the approvals API listens once the gateway runs
        while api_is_down(admin):
            await anyio.sleep(0.1)
    path = f"/campaigns/{cid}/items/{cid}.1/certify"
    flood = {"decision": "keep", "reason": "x" * (60 * 1024)}

    def refused_rows() -> list[dict]:
        with store.SqliteStore(gw.db) as opened:
            (item,) = opened.campaign(cid).items
        return list(item.refused)

    for _ in range(30):
        status, body = await anyio.to_thread.run_sync(api, admin, path, BOB, flood)
        assert status == 403 and "not in the reviewer groups" in body["error"]
    assert len(refused_rows()) == 10
    await anyio.sleep(6.5)  # one refusal's worth of budget back (10 a minute)
    status, _ = await anyio.to_thread.run_sync(api, admin, path, BOB, flood)
    assert status == 403
    rows = refused_rows()
    assert len(rows) == 11 and all(r["reviewer"] == "bob" for r in rows)
    assert (
        "20 refused attempts by this caller before this one were not recorded"
        in (rows[-1]["reason"])
    )
    status, body = await anyio.to_thread.run_sync(api, admin, path, CAROL, flood)
    assert status == 200 and body["state"] == "keep"
    stored = body["reason"]
    assert len(stored) < REASON_CHARS + 50 and stored.endswith(
        f"[truncated: {60 * 1024} characters]"
    )


@pytest.mark.anyio
async def test_suggestions_keep_approvals_and_limits_and_replay_no_looser(
    demo, gateway_factory
) -> None:
    """Bob's DELETE went through the DBA approval: his suggestion still asks a DBA. Alice's
    grant had a limit: hers keeps it. Every call recorded, replayed against each identity's
    suggestion (pasted as an operator would), is decided no more loosely than by the policy
    in force, and each use as it was. Bob's approval, decided by a name taken at its word,
    is an exception of the review."""
    import textwrap

    from helpers.decisions import looser
    from holdgate.config.gateway_config import load_config, parse_config_text
    from holdgate.policy.policytest import build_message, caller_for

    gw = gateway_factory(CONFIG.format(url=demo.url), demo.url)
    await traffic(gw)
    made = cli("review", "--format", "json", "--config", str(gw.config), "--db", str(gw.db))
    assert made.returncode == 0, made.stderr
    review = json.loads(made.stdout)
    people = {p["user"]: p for p in review["identities"]}
    bob = people["bob"]["suggested_rules"]
    (held,) = [r for r in bob if r["action"] == "approve"]
    assert held["match"]["users"] == ["bob"] and held["match"]["tool"] == ["run_sql"]
    assert held["approvers"] == ["dba"] and held["timeout"] == "20s"
    assert held["match"]["args"] == {"$.query": {"search": "(?i)delete"}}
    assert "action: approve" in people["bob"]["suggestion"]
    (alice,) = [r for r in people["alice"]["suggested_rules"] if r["action"] == "allow"]
    assert alice["limit"] == "120/min"
    assert alice["match"]["tool"] == ["get_customer", "search_customers"]

    active = load_config(str(gw.config), secrets=False).policy
    head = "version: 1\nupstreams:\n  - {name: demo, url: 'http://127.0.0.1:9'}\nrules:\n"
    calls = [
        r
        for r in oneshot.export_rows(gw.db)
        if r["direction"] == "request" and r["method"] == "tools/call" and r["user"]
    ]
    assert {r["user"] for r in calls} == {"alice", "bob", "carol"}
    for row in calls:
        text = people[row["user"]]["suggestion"]
        suggested = parse_config_text(head + textwrap.indent(text, "  ")).policy
        caller = caller_for(row["user"], tuple(json.loads(row["groups"])))
        args = json.loads(row["args_masked"] or "{}")
        message = build_message("tools/call", row["target"], args)
        before = active.evaluate(caller, "demo", message)
        after = suggested.evaluate(caller, "demo", message)
        assert looser(after, before) is None, (row["user"], row["target"], after, before)
        if before.action != "deny":  # a use: decided as it was
            assert (after.action, after.limit, after.approvers) == (
                before.action,
                before.limit,
                before.approvers,
            )
    bob_approval = [f for f in review["exceptions"] if f["subject"].endswith("run_sql for bob")]
    assert {f["kind"] for f in bob_approval} & {"decider-not-approver", "break-glass"}
