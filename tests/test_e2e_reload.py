"""Hot reload through a real mitmdump: a good new config takes over, a bad one is refused."""

from __future__ import annotations

import sqlite3
import time

from helpers.clients import META, MODERN, raw_post

BASE = """
version: 1
upstreams:
  - name: demo
    url: {url}
    inject:
      headers: {{Authorization: "Bearer literal-upstream-secret"}}
rules:
  - name: reads
    match: {{tool: [{tools}]}}
    action: allow
"""
HEADERS = {**MODERN, "Mcp-Method": "tools/call", "Mcp-Name": "get_customer"}
CALL = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "tools/call",
    "params": {"name": "get_customer", "arguments": {"customer_id": 1}, "_meta": META},
}


def decision(gw) -> str:
    body = raw_post(gw.url + "/mcp", CALL, HEADERS).json()
    return "denied" if "error" in body else "allowed"


def wait_for(predicate, seconds: float = 15.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.2)
    return False


def test_good_reload_takes_effect_and_bad_reload_keeps_the_last_good(demo, gateway_factory):
    gw = gateway_factory(BASE.format(url=demo.url, tools="search_customers"), demo.url)
    assert decision(gw) == "denied"
    time.sleep(1.1)  # a new mtime for the watcher
    gw.config.write_text(BASE.format(url=demo.url, tools="get_customer"))
    assert wait_for(lambda: decision(gw) == "allowed"), gw.log_text()
    gw.config.write_text(
        BASE.format(url=demo.url, tools="get_customer") + "  - name: x\n"
        "    match: {tol: y}\n    action: deny\n"
    )
    assert wait_for(lambda: "reload rejected" in gw.log_text()), gw.log_text()
    assert "unknown key 'tol'; did you mean 'tool'?" in gw.log_text()
    assert decision(gw) == "allowed"  # the last good config is still in force
    assert gw.proc.poll() is None
    versions = wait_for(lambda: len(config_versions(gw.db)) == 3)
    rows = config_versions(gw.db)
    assert versions, rows
    assert [r["outcome"] for r in rows] == ["loaded", "reloaded", "rejected"]
    assert rows[1]["detail"] == f"replaces sha256 {rows[0]['config_hash']}"
    assert "unknown key 'tol'" in rows[2]["detail"] and rows[2]["content"] is None
    assert all(r["source"] == str(gw.config) for r in rows)
    with sqlite3.connect(gw.db) as conn:  # each row names the replica that loaded it
        registered = [r[0] for r in conn.execute("SELECT replica FROM replicas")]
    assert len(registered) == 1
    assert [(r["replica"], r["role"]) for r in rows] == [(registered[0], "active")] * 3
    assert "get_customer" in rows[1]["content"]
    assert "[secret]" in rows[0]["content"]
    for part in gw.db.parent.glob(gw.db.name + "*"):  # the store and its WAL
        assert b"literal-upstream-secret" not in part.read_bytes(), part


def config_versions(db) -> list[dict]:
    with sqlite3.connect(db) as conn:
        conn.row_factory = sqlite3.Row
        return [dict(r) for r in conn.execute("SELECT * FROM config_versions ORDER BY seq")]
