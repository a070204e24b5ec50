"""The foundation through a real mitmdump and the demo server, with the official MCP client."""

from __future__ import annotations

import http.client
import json
import subprocess

import pytest
from mcp import MCPError

from helpers.clients import META, MODERN, connect, raw_post
from helpers.processes import free_port, gateway_command, start_demo, stop
from helpers.upstreams import Reply

pytestmark = pytest.mark.anyio

CONFIG = """
version: 1
upstreams:
  - name: demo
    url: {url}
rules:
  - name: shell is not for agents
    match: {{tool: ["exec_*"]}}
    action: deny
    reason: shell access is not granted through the gateway
  - name: lookups
    match: {{method: tools/call, tool: ["get_*", "search_*", "slow_echo", "stream_report"]}}
    action: allow
  - name: listing
    match: {{method: [initialize, "notifications/*", ping, tools/list, server/discover]}}
    action: allow
"""


def tools_call(name: str, args: dict, msg_id: int | str = 1) -> dict:
    params = {"name": name, "arguments": args, "_meta": META}
    return {"jsonrpc": "2.0", "id": msg_id, "method": "tools/call", "params": params}


@pytest.mark.parametrize("mode", ["auto", "legacy"])
async def test_initialize_list_and_allowed_call(gateway, demo, mode):
    async with connect(gateway.url + "/mcp", mode=mode) as client:
        tools = await client.list_tools()
        assert "get_customer" in {t.name for t in tools.tools}
        result = await client.call_tool("get_customer", {"customer_id": 1})
        assert not result.is_error
        assert "@" in result.content[0].text  # the upstream's real record came back
    assert any(m.get("params", {}).get("name") == "get_customer" for m in demo.messages())


@pytest.mark.parametrize("mode", ["auto", "legacy"])
async def test_denied_call_is_a_jsonrpc_error_naming_the_rule(gateway, demo, mode):
    async with connect(gateway.url + "/mcp", mode=mode) as client:
        with pytest.raises(MCPError) as info:
            await client.call_tool("exec_shell", {"command": "id"})
        assert info.value.code == -32003
        assert "shell is not for agents" in info.value.message
        # the session survives the refusal
        assert not (await client.call_tool("get_customer", {"customer_id": 2})).is_error
    assert not any(m.get("params", {}).get("name") == "exec_shell" for m in demo.messages())


async def test_default_deny_for_unlisted_tool(gateway):
    async with connect(gateway.url + "/mcp") as client:
        with pytest.raises(MCPError) as info:
            await client.call_tool("run_sql", {"query": "select 1"})
    assert info.value.code == -32003
    assert "default-deny" in info.value.message


def test_batch_with_one_denied_message_never_reaches_the_upstream(tmp_path, gateway_factory):
    demo = start_demo(tmp_path, "--stateless", "--json-response")
    try:
        gw = gateway_factory(CONFIG.format(url=demo.url), demo.url)
        batch = [
            {
                "jsonrpc": "2.0",
                "id": 1,
                "method": "tools/call",
                "params": {"name": "get_customer", "arguments": {"customer_id": 1}},
            },
            {
                "jsonrpc": "2.0",
                "id": 2,
                "method": "tools/call",
                "params": {"name": "exec_shell", "arguments": {"command": "rm -rf /"}},
            },
        ]
        response = raw_post(gw.url + "/mcp", batch)
        names = [m["params"]["name"] for m in demo.messages() if m.get("method")]
        assert "exec_shell" not in names
        assert names == ["get_customer"]
        # This upstream (SDK 2.x) refuses batches itself; whatever it says, the denied
        # message's refusal is merged into the answer.
        answers = response.json()
        answers = answers if isinstance(answers, list) else [answers]
        denied = [a for a in answers if a.get("id") == 2]
        assert denied and denied[0]["error"]["code"] == -32003
    finally:
        stop(demo.proc)


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        (b"{not json", 400, -32700),
        (
            b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"get_customer",'
            b'"name":"exec_shell","arguments":{}}}',
            400,
            -32700,
        ),
        (b'{"jsonrpc":"2.0","id":1}', 400, -32600),
        (b"[]", 400, -32600),
        (  # a lone surrogate: Python reads "get_customer\ud800", Go "get_customer\ufffd"
            b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":'
            b'"get_customer\\ud800","arguments":{}}}',
            400,
            -32700,
        ),
        (
            b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"get_customer",'
            b'"arguments":{"customer_id":1e400}}}',
            400,
            -32700,
        ),
    ],
)
def test_malformed_bodies_are_refused_and_not_forwarded(gateway, demo, body, status, code):
    response = raw_post(gateway.url + "/mcp", body)
    assert response.status == status
    assert response.json()["error"]["code"] == code
    assert demo.requests() == []


def test_oversized_body_is_413(demo, gateway_factory):
    gw = gateway_factory(CONFIG.format(url=demo.url), demo.url, options={"holdgate_max_body": "1k"})
    big = tools_call("get_customer", {"pad": "x" * 4096})
    response = raw_post(gw.url + "/mcp", big)
    # Cut by mitmproxy while it is read, so it is never buffered; answered as JSON-RPC.
    assert response.status == 413
    assert "over holdgate_max_body" in response.json()["error"]["message"]
    assert demo.requests() == []


def test_unknown_content_encoding_is_refused(gateway, demo):
    response = raw_post(
        gateway.url + "/mcp", tools_call("get_customer", {}), {"Content-Encoding": "x-weird"}
    )
    assert response.status == 400
    assert demo.requests() == []


def test_mcp_name_header_that_disagrees_with_body_is_refused(gateway, demo):
    headers = {**MODERN, "Mcp-Method": "tools/call", "Mcp-Name": "get_customer"}
    response = raw_post(gateway.url + "/mcp", tools_call("exec_shell", {"command": "id"}), headers)
    assert response.status == 400
    assert "Mcp-Name" in response.json()["error"]["message"]
    assert demo.requests() == []


def test_no_upstream_is_404(demo, gateway_factory):
    config = CONFIG.format(url=demo.url).replace(
        f"    url: {demo.url}", f"    url: {demo.url}\n    prefix: /crm"
    )
    gw = gateway_factory(config, demo.url)
    response = raw_post(gw.url + "/other/mcp", tools_call("get_customer", {}))
    assert response.status == 404
    assert response.json()["error"]["code"] == -32600
    ok = raw_post(
        gw.url + "/crm/mcp",
        tools_call("get_customer", {"customer_id": 1}),
        {**MODERN, "Mcp-Method": "tools/call", "Mcp-Name": "get_customer"},
    )
    assert ok.status == 200, ok.body


async def test_sse_response_streams_through_intact(gateway, demo):
    """stream_report answers as an event stream of several events; all arrive, in order."""
    seen = []

    async def on_log(params):
        seen.append(params.data)

    async with connect(gateway.url + "/mcp", mode="legacy", logging_callback=on_log) as client:
        result = await client.call_tool("stream_report", {"count": 4})
    assert not result.is_error
    assert len(seen) >= 4


def test_bad_config_stops_the_gateway_at_start(tmp_path, demo):
    config = tmp_path / "bad.yaml"
    config.write_text(
        "version: 1\nupstreams: [{name: d, url: 'http://127.0.0.1:1'}]\n"
        "rules:\n  - name: x\n    match: {tol: y}\n    action: allow\n"
    )
    cmd = gateway_command("--listen-host", "127.0.0.1")
    cmd += ["--listen-port", str(free_port()), "--set", f"holdgate_config={config}"]
    cmd += ["--set", f"holdgate_store={tmp_path / 'a.sqlite3'}", "--set", "holdgate_admin="]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert done.returncode == 1
    assert "bad.yaml:5:13: rules['x'].match.tol: unknown key 'tol'; did you mean 'tool'?" in (
        done.stdout + done.stderr
    )


def test_raw_json_of_denied_single_call(gateway, demo):
    headers = {**MODERN, "Mcp-Method": "tools/call", "Mcp-Name": "exec_shell"}
    response = raw_post(
        gateway.url + "/mcp", tools_call("exec_shell", {"command": "id"}, 7), headers
    )
    assert response.status == 200
    body = response.json()
    assert body["id"] == 7
    assert body["error"]["code"] == -32003
    assert json.dumps(body).count("shell is not for agents") == 1
    assert demo.requests() == []


async def test_legacy_sse_transport_is_decided_and_answered_on_the_stream(
    tmp_path, gateway_factory
):
    """HTTP+SSE (2024-11-05): GET /sse stream, POSTs to /messages/, answers on the stream."""
    from mcp import Client
    from mcp.client.sse import sse_client

    legacy = start_demo(tmp_path, "--transport", "sse")
    try:
        gw = gateway_factory(CONFIG.format(url=legacy.url), legacy.url)
        async with Client(sse_client(gw.url + "/sse"), mode="legacy", cache=None) as client:
            tools = await client.list_tools()
            assert "get_customer" in {t.name for t in tools.tools}
            result = await client.call_tool("get_customer", {"customer_id": 1})
            assert "@" in result.content[0].text
            with pytest.raises(MCPError) as info:
                await client.call_tool("exec_shell", {"command": "id"})
            assert info.value.code == -32003
        posted = [b for b in legacy.received_bodies() if isinstance(b, dict)]
        assert "exec_shell" not in json.dumps(posted)
    finally:
        stop(legacy.proc)


def test_routing_header_sent_twice_is_refused(gateway, demo):
    body = json.dumps(tools_call("get_customer", {"customer_id": 1}))
    conn = http.client.HTTPConnection("127.0.0.1", gateway.port, timeout=10)
    conn.putrequest("POST", "/mcp")
    for name, value in [
        ("Content-Type", "application/json"),
        ("Accept", "application/json, text/event-stream"),
        ("MCP-Protocol-Version", "2026-07-28"),
        ("Mcp-Method", "tools/call"),
        ("Mcp-Name", "get_customer"),
        ("Mcp-Name", "exec_shell"),
        ("Content-Length", str(len(body))),
    ]:
        conn.putheader(name, value)
    conn.endheaders(body.encode())
    response = conn.getresponse()
    assert response.status == 400
    assert "sent 2 times" in json.loads(response.read())["error"]["message"]
    assert demo.requests() == []


def torn_events() -> Reply:
    """Two events (a long progress notice, then the result) in 700-byte HTTP chunks, as on
    a slow link: no piece holds a whole event."""
    progress = {
        "jsonrpc": "2.0",
        "method": "notifications/progress",
        "params": {"progressToken": 1, "progress": 1, "message": "x" * 3000},
    }
    result = {"jsonrpc": "2.0", "id": 1, "result": {"content": [], "isError": False}}
    stream = b"".join(
        b"event: message\ndata: " + json.dumps(m).encode() + b"\n\n" for m in (progress, result)
    )
    pieces = [stream[start : start + 700] for start in range(0, len(stream), 700)]
    headers = [("Content-Type", "text/event-stream")]
    return Reply(200, pieces, headers, framing="chunked", pause=0.02)


def test_events_torn_across_network_chunks_arrive_whole(gateway_factory, fake_upstream):
    """A chunk holding no complete event must send nothing, not an empty HTTP chunk (which
    would end the response for the client mid-stream)."""
    upstream = fake_upstream(lambda request: torn_events())
    gw = gateway_factory(CONFIG.format(url=upstream.url), upstream.url)
    headers = {**MODERN, "Mcp-Method": "tools/call", "Mcp-Name": "get_customer"}
    answer = raw_post(gw.url + "/mcp", tools_call("get_customer", {}), headers)
    assert answer.status == 200
    events = [e for e in answer.body.decode().split("\n\n") if e.strip()]
    messages = [json.loads(e.split("data: ", 1)[1]) for e in events]
    assert [m.get("method") or m.get("id") for m in messages] == ["notifications/progress", 1]
    assert messages[0]["params"]["message"] == "x" * 3000
