"""In-process MCP flows for the addon tests, the way mitmproxy tests its own addons.

    with taddons.context(*addons) as tctx:
        tctx.options.update(holdgate_config=str(path))
        flow = mcp_flow(call("get_customer"), ALICE)
        await send(tctx, flow)            # requestheaders, request: through every addon
        await answer(tctx, flow, reply)   # responseheaders, response (unless refused)

Hooks are dispatched by mitmproxy's own addon manager (`handle_lifecycle`), in the order
the addons were added, so each test drives the real chain and asserts on what comes
out: `flow.response`, `flow.comment`, `flow.marked`, the request that would leave, the
store's rows. Nothing here knows how the addons keep their per-flow state.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from mitmproxy import http
from mitmproxy.flow import Error
from mitmproxy.proxy.layers.http import (
    HttpErrorHook,
    HttpRequestHeadersHook,
    HttpRequestHook,
    HttpResponseHeadersHook,
    HttpResponseHook,
)
from mitmproxy.proxy.mode_specs import ProxyMode
from mitmproxy.test import taddons, tflow, tutils

UPSTREAM_HOST = "127.0.0.1"
UPSTREAM_PORT = 9  # never connected to: these flows never leave the process
UPSTREAM_URL = f"http://{UPSTREAM_HOST}:{UPSTREAM_PORT}"
GATEWAY_ADDRESS = ("127.0.0.1", 8080)


def write_config(folder: Path, text: str, name: str = "holdgate.yaml") -> str:
    path = folder / name
    path.write_text(text)
    return str(path)


def call(tool: str, arguments: dict[str, Any] | None = None, msg_id: Any = 1) -> dict[str, Any]:
    params = {"name": tool, "arguments": arguments or {}}
    return {"jsonrpc": "2.0", "id": msg_id, "method": "tools/call", "params": params}


def request_message(method: str, msg_id: Any = 1, **params: Any) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": msg_id, "method": method, "params": params}


def mcp_flow(
    body: Any = None,
    headers: dict[str, str] | None = None,
    *,
    method: str = "POST",
    path: str = "/mcp",
    host: str = UPSTREAM_HOST,
    port: int = UPSTREAM_PORT,
    mode: str = f"reverse:{UPSTREAM_URL}",
    host_header: str | None = None,
) -> http.HTTPFlow:
    """A client's request as mitmproxy hands it to the addons (`body`: JSON or bytes)."""
    content = (
        body if isinstance(body, bytes) else b"" if body is None else json.dumps(body).encode()
    )
    fields = [
        (b"Content-Type", b"application/json"),
        (b"Accept", b"application/json, text/event-stream"),
    ]
    fields += [(k.encode(), v.encode()) for k, v in (headers or {}).items()]
    if content:
        fields.append((b"Content-Length", str(len(content)).encode()))
    request = tutils.treq(
        host=host,
        port=port,
        method=method.encode(),
        path=path.encode(),
        headers=http.Headers(fields),
        content=content,
    )
    request.host_header = host_header or f"{host}:{port}"
    flow = tflow.tflow(req=request)
    flow.client_conn.proxy_mode = ProxyMode.parse(mode)
    flow.client_conn.sockname = GATEWAY_ADDRESS
    return flow


def json_response(
    value: Any, status: int = 200, headers: dict[str, str] | None = None
) -> http.Response:
    return http.Response.make(
        status, json.dumps(value).encode(), {"Content-Type": "application/json", **(headers or {})}
    )


def result(msg_id: Any, value: Any) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": msg_id, "result": value}


async def send(tctx: taddons.context, flow: http.HTTPFlow) -> http.HTTPFlow:
    """The request side: requestheaders then request, through every addon. A response an
    addon made itself (a refusal) then passes the response hooks, as in mitmproxy."""
    await tctx.master.addons.handle_lifecycle(HttpRequestHeadersHook(flow))
    await tctx.master.addons.handle_lifecycle(HttpRequestHook(flow))
    if flow.response is not None:
        await tctx.master.addons.handle_lifecycle(HttpResponseHeadersHook(flow))
        await tctx.master.addons.handle_lifecycle(HttpResponseHook(flow))
    return flow


async def answer(tctx: taddons.context, flow: http.HTTPFlow, response: http.Response) -> None:
    """The upstream's answer: responseheaders, then (for a body not streamed) response."""
    flow.response = response
    await tctx.master.addons.handle_lifecycle(HttpResponseHeadersHook(flow))
    if not flow.response.stream:
        await tctx.master.addons.handle_lifecycle(HttpResponseHook(flow))


async def fail(tctx: taddons.context, flow: http.HTTPFlow, message: str) -> None:
    """The flow ends in an error (the client went away, the upstream was unreachable)."""
    flow.error = Error(message)
    await tctx.master.addons.handle_lifecycle(HttpErrorHook(flow))


def response_json(flow: http.HTTPFlow) -> Any:
    assert flow.response is not None, "no response"
    return json.loads(flow.response.content or b"null")


def error_of(flow: http.HTTPFlow) -> tuple[int, int, str]:
    """(HTTP status, JSON-RPC code, message) of a refusal the gateway answered."""
    assert flow.response is not None, "the flow was not answered"
    error = response_json(flow)["error"]
    return flow.response.status_code, error["code"], error["message"]
