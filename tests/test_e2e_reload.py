"""Hot reload through a real mitmdump: a good new config takes over, a bad one is refused."""

from __future__ import annotations

import time

from mcpclient import raw_post

BASE = """
version: 1
upstreams:
  - name: demo
    url: {url}
rules:
  - name: reads
    match: {{tool: [{tools}]}}
    action: allow
"""
HEADERS = {
    "MCP-Protocol-Version": "2026-07-28",
    "Mcp-Method": "tools/call",
    "Mcp-Name": "get_customer",
}
META = {
    "io.modelcontextprotocol/protocolVersion": "2026-07-28",
    "io.modelcontextprotocol/clientCapabilities": {},
}
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
