"""Every config mistake in one pass through a real mitmdump: at start (exit 1, all named)
and on reload (all logged, the last good config stays in force)."""

from __future__ import annotations

import subprocess
import time

from helpers.clients import META, MODERN, raw_post
from helpers.processes import free_port, gateway_command

THREE_MISTAKES = """\
version: 1
upstreams:
  - name: demo
    url: {url}
    prefx: /demo
rules:
  - name: reads
    match: {{tol: get_customer}}
    action: allow
masking:
  - name: pii
    detectors: [emial]
"""

GOOD = """\
version: 1
upstreams:
  - name: demo
    url: {url}
rules:
  - name: reads
    match: {{tool: get_customer}}
    action: allow
"""

TWO_MISTAKES = GOOD + "  - name: writes\n    match: {{tool: set_*}}\n    action: alow\n"
TWO_MISTAKES += "  - name: other\n    match: {{upstream: nowhere}}\n    action: allow\n"


def test_a_config_with_three_mistakes_stops_the_gateway_naming_all_three(tmp_path, demo):
    config = tmp_path / "three.yaml"
    config.write_text(THREE_MISTAKES.format(url=demo.url))
    cmd = gateway_command("--listen-host", "127.0.0.1", "--listen-port", str(free_port()))
    cmd += ["--set", f"holdgate_config={config}", "--set", "holdgate_admin="]
    cmd += ["--set", f"holdgate_store={tmp_path / 'a.sqlite3'}"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=60, cwd=tmp_path)
    output = done.stdout + done.stderr
    assert done.returncode == 1, output
    assert "holdgate_config: 3 errors:" in output
    expected = [
        f"{config}:5:5: upstreams[0].prefx: unknown key 'prefx'; did you mean 'prefix'?",
        f"{config}:8:13: rules['reads'].match.tol: unknown key 'tol'; did you mean 'tool'?",
        f"{config}:12:17: masking['pii'].detectors[0]: unknown detector 'emial'; valid: ",
    ]
    positions = [output.index(line) for line in expected]  # each named, in file order
    assert positions == sorted(positions), output


def call(gw) -> str:
    body = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "tools/call",
        "params": {"name": "get_customer", "arguments": {"customer_id": 1}, "_meta": META},
    }
    headers = {**MODERN, "Mcp-Method": "tools/call", "Mcp-Name": "get_customer"}
    answer = raw_post(gw.url + "/mcp", body, headers).json()
    return "denied" if "error" in answer else "allowed"


def test_a_reload_with_two_mistakes_logs_both_and_keeps_the_last_good(demo, gateway_factory):
    gw = gateway_factory(GOOD.format(url=demo.url), demo.url)
    assert call(gw) == "allowed"
    time.sleep(1.1)  # a new mtime for the watcher
    gw.config.write_text(TWO_MISTAKES.format(url=demo.url))
    deadline = time.monotonic() + 15
    while "reload rejected" not in gw.log_text() and time.monotonic() < deadline:
        time.sleep(0.2)
    log = gw.log_text()
    assert "reload rejected, keeping the last good config: 2 errors:" in log, log
    first = log.index(
        f"{gw.config}:11:5: rules['writes'].action: expected one of allow, deny, approve; "
        "got 'alow'"
    )
    second = log.index(
        f"{gw.config}:13:13: rules['other'].match.upstream: no upstream named 'nowhere'; "
        "known: demo"
    )
    assert first < second
    assert call(gw) == "allowed"  # the last good config is still in force
    assert gw.proc.poll() is None
