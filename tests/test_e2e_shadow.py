"""The shadow policy through a real mitmdump in front of the demo server.

A candidate (`holdgate_shadow`) that tightens one call (on a raw argument the record masks),
loosens another and counts its own rate limit: clients get what the policy in force
decides, the decision rows say where the candidate differs, `holdgate shadow report` lists
both with their masked arguments, and a candidate that reloads, breaks or cannot load at
start is recorded and never touches the policy in force.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import time
from pathlib import Path

import pytest
from mcp import MCPError

from helpers.clients import connect
from helpers.configs import ALICE, identity
from helpers.processes import holdgate_cli, stop
from helpers.recordings import read_every_file

pytestmark = pytest.mark.anyio

EMAIL = "maria.keller@example.com"
CONFIG = (
    "version: 1\n"
    + identity("alice", "bob")
    + """upstreams:
  - name: demo
    url: {url}
rules:
  - name: listing
    match: {{method: [initialize, "notifications/*", ping, tools/list]}}
    action: allow
  - name: no shell
    match: {{tool: "exec_*"}}
    action: deny
  - name: support reads customers
    match: {{groups: [support], tool: [get_customer, search_customers]}}
    action: allow
masking:
  - name: pii
    detectors: [email]
    strategy: partial
"""
)
CANDIDATE = """version: 1
upstreams:
  - name: demo
    url: http://127.0.0.1:9
rules:
  - name: listing
    match: {method: [initialize, "notifications/*", ping, tools/list]}
    action: allow
  - name: no searches by email
    match: {tool: search_customers, args: {"$.query": {search: "@"}}}
    action: deny
  - name: support runs shell
    match: {groups: [support], tool: exec_shell}
    action: allow
  - name: support reads customers
    match: {groups: [support], tool: [get_customer, search_customers]}
    action: allow
    limit: 1/min
  - name: refunds need a manager
    match: {tool: refund_order}
    action: approve
    approvers: [managers]
"""


def write_candidate(folder: Path, text: str) -> tuple[Path, str]:
    path = folder / "candidate.yaml"
    path.write_text(text)
    return path, hashlib.sha256(text.encode()).hexdigest()


def rows(db: Path, sql: str) -> list[sqlite3.Row]:
    conn = sqlite3.connect(db)
    conn.row_factory = sqlite3.Row
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


def shadow_of(row: sqlite3.Row) -> dict | None:
    return json.loads(row["extra"] or "{}").get("shadow")


def candidate_versions(db: Path) -> list[sqlite3.Row]:
    return rows(db, "SELECT * FROM config_versions WHERE role = 'candidate' ORDER BY seq")


def wait_for_version(db: Path, outcome: str, count: int = 1) -> list[sqlite3.Row]:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        found = [v for v in candidate_versions(db) if v["outcome"] == outcome]
        if len(found) >= count:
            return found
        time.sleep(0.1)
    raise AssertionError(f"no {outcome!r} candidate row: {list(map(dict, candidate_versions(db)))}")


async def calls(gateway) -> None:
    async with connect(gateway.url + "/mcp", ALICE) as client:
        for _ in range(2):  # the candidate's limit is 1/min; the active rule has none
            assert not (await client.call_tool("get_customer", {"customer_id": 1})).is_error
        assert not (await client.call_tool("search_customers", {"query": EMAIL})).is_error
        with pytest.raises(MCPError) as denied:
            await client.call_tool("exec_shell", {"command": "id"})
    assert denied.value.code == -32003 and "no shell" in str(denied.value)


async def test_the_candidate_is_recorded_beside_the_policy_in_force_and_reported(
    tmp_path, demo, gateway_factory
):
    candidate, digest = write_candidate(tmp_path, CANDIDATE)
    gw = gateway_factory(
        CONFIG.format(url=demo.url), demo.url, options={"holdgate_shadow": str(candidate)}
    )
    await calls(gw)
    # Decided by the policy in force only: the search reached the server, the shell not.
    assert demo.calls_to("search_customers") == [{"query": EMAIL}]
    assert len(demo.calls_to("get_customer")) == 2 and demo.calls_to("exec_shell") == []
    stop(gw.proc)  # the last summary row is written at shutdown

    decided = rows(gw.db, "SELECT * FROM events WHERE direction = 'request' ORDER BY seq")
    by_target = {}
    for row in decided:
        by_target.setdefault(row["target"], []).append(row)
    first, second = by_target["get_customer"]
    assert first["decision"] == second["decision"] == "allow"
    assert shadow_of(first) is None
    assert shadow_of(second) == {
        "action": "deny",
        "rule": "support reads customers",
        "config": digest,
        "kind": "tighten",
        "rate_limited": True,
    }
    (search,) = by_target["search_customers"]
    assert search["decision"] == "allow" and search["rule"] == "support reads customers"
    assert shadow_of(search) == {
        "action": "deny",
        "rule": "no searches by email",
        "config": digest,
        "kind": "tighten",
    }
    assert EMAIL not in search["args_masked"]  # decided on the raw value, recorded masked
    (shell,) = by_target["exec_shell"]
    assert shell["decision"] == "deny" and shell["rule"] == "no shell"
    assert shadow_of(shell) == {
        "action": "allow",
        "rule": "support runs shell",
        "config": digest,
        "kind": "loosen",
    }
    assert EMAIL not in gw.log_text()  # nor is any argument in the gateway's log
    # mitmweb (and the recording) shows the difference on the flow
    recorded = [f for flows in read_every_file(gw.recordings).values() for f in flows]
    (shown,) = [f for f in recorded if "exec_shell" in (f.comment or "")]
    assert shown.marked == ":crystal_ball:"
    assert "shadow loosen: exec_shell would be allow by 'support runs shell'" in shown.comment
    # The candidate's limit never counted in the shared table the policy in force uses.
    assert rows(gw.db, "SELECT * FROM rate_counters") == []

    loads = [v for v in candidate_versions(gw.db) if v["outcome"] == "loaded"]
    assert [(v["config_hash"], v["source"]) for v in loads] == [(digest, str(candidate))]
    active = rows(gw.db, "SELECT * FROM config_versions WHERE role IS NULL OR role = 'active'")
    assert [v["outcome"] for v in active] == ["loaded"]
    (summary,) = [v for v in candidate_versions(gw.db) if v["outcome"] == "summary"]
    counts = json.loads(summary["detail"])
    assert counts["changed"] == 3 and counts["errors"] == 0 and counts["skipped"] == 0
    assert counts["kinds"] == {"loosen": 1, "tighten": 2}
    assert counts["evaluated"] == counts["same"] + counts["changed"]
    assert counts["rules"]["refunds need a manager"] == 0
    assert counts["rules"]["support runs shell"] == 1

    report = holdgate_cli("shadow", "report", "--store", str(gw.db), "--format", "json")
    assert report.returncode == 0, report.stderr
    found = json.loads(report.stdout)
    kinds = [(d["kind"], d["active"]["rule"], d["candidate"]["rule"]) for d in found["differences"]]
    assert kinds[0] == ("loosen", "no shell", "support runs shell")  # loosening first
    assert sorted(kinds[1:]) == [
        ("tighten", "support reads customers", "no searches by email"),
        ("tighten", "support reads customers", "support reads customers"),
    ]
    assert found["differences"][0]["configs"] == [digest]
    loosened = found["differences"][0]["calls"]
    assert [(c["user"], c["tool"], c["arguments"]) for c in loosened] == [
        ("alice", "exec_shell", {"command": "id"})
    ]
    (by_email,) = [d for d in found["differences"] if d["candidate"]["rule"].startswith("no ")]
    (searched,) = by_email["calls"]
    assert searched["arguments"] == json.loads(search["args_masked"])
    assert EMAIL not in report.stdout
    (coverage,) = found["coverage"]
    assert coverage["config"] == digest and coverage["rules_unused"] == ["refunds need a manager"]

    gate = holdgate_cli("shadow", "report", "--store", str(gw.db), "--fail-on-loosen")
    assert gate.returncode == 1
    assert (
        "LOOSEN  deny by 'no shell' -> allow by 'support runs shell'  (1 call; "
        f"candidate {digest[:12]})"
    ) in gate.stdout
    assert "loosens 1 call(s)" in gate.stderr


async def test_a_candidate_reload_is_recorded_and_a_broken_one_keeps_the_last_good(
    tmp_path, demo, gateway_factory
):
    candidate, first = write_candidate(tmp_path, CANDIDATE)
    gw = gateway_factory(
        CONFIG.format(url=demo.url), demo.url, options={"holdgate_shadow": str(candidate)}
    )
    wait_for_version(gw.db, "loaded")
    changed = CANDIDATE.replace("limit: 1/min", "limit: 5/min")
    _, second = write_candidate(tmp_path, changed)
    (reloaded,) = wait_for_version(gw.db, "reloaded")
    assert reloaded["config_hash"] == second and reloaded["detail"] == f"replaces sha256 {first}"

    candidate.write_text(changed + "  - name: broken\n    match: {tool: x}\n    action: maybe\n")
    (rejected,) = wait_for_version(gw.db, "rejected")
    assert "action" in rejected["detail"] and rejected["config_hash"] != second
    assert "shadow policy reload rejected" in gw.log_text()
    assert "candidate.yaml:" in gw.log_text()  # the file and line of the mistake

    await calls(gw)  # still served by the policy in force, still shadowed by the last good
    assert demo.calls_to("search_customers") == [{"query": EMAIL}]
    search = rows(gw.db, "SELECT * FROM events WHERE target = 'search_customers'")
    assert shadow_of(search[0])["config"] == second
    active = rows(gw.db, "SELECT * FROM config_versions WHERE role IS NULL OR role = 'active'")
    assert [v["outcome"] for v in active] == ["loaded"]


async def test_a_candidate_that_cannot_load_at_start_stops_the_gateway_saying_where(
    tmp_path, demo, gateway_factory
):
    candidate, _ = write_candidate(tmp_path, CANDIDATE.replace("action: deny", "action: nope"))
    with pytest.raises(RuntimeError) as stopped:
        gateway_factory(
            CONFIG.format(url=demo.url), demo.url, options={"holdgate_shadow": str(candidate)}
        )
    assert "holdgate_shadow" in str(stopped.value)
    assert "candidate.yaml:11" in str(stopped.value) and "nope" in str(stopped.value)
