"""In-process MCP flows for the addon tests, the way mitmproxy tests its own addons.

    with gateway(tmp_path, CONFIG, Router, Authentication) as tctx:  # a taddons.context
        flow = mcp_flow(call("get_customer"), ALICE)
        await send(tctx, flow)            # requestheaders, request: through every addon
        await answer(tctx, flow, reply)   # responseheaders, response (unless refused)

Hooks are dispatched by mitmproxy's own addon manager (`handle_lifecycle`) to the
gateway's `Pipeline`, which calls the addons in the order given, so each test drives the
real chain and asserts on what comes
out: `flow.response`, `flow.comment`, `flow.marked`, the request that would leave, the
store's rows. Nothing here knows how the addons keep their per-flow state, nor how
`default_addons()` wires them: `gateway()` takes the addons from it, by class.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from mitmproxy import hooks, http
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

from holdgate.addons import default_addons, http_seams
from holdgate.addons.audit_store import AuditStore
from holdgate.addons.config_loader import ConfigLoader
from holdgate.addons.pipeline import Pipeline
from holdgate.protocol.jsonrpc import NAME_PARAM

UPSTREAM_HOST = "127.0.0.1"
UPSTREAM_PORT = 9  # never connected to: these flows never leave the process
UPSTREAM_URL = f"http://{UPSTREAM_HOST}:{UPSTREAM_PORT}"
GATEWAY_ADDRESS = ("127.0.0.1", 8080)


def write_config(folder: Path, text: str, name: str = "holdgate.yaml") -> str:
    path = folder / name
    path.write_text(text)
    return str(path)


@contextmanager
def gateway(
    folder: Path,
    config_text: str,
    *kinds: type,
    before: tuple[type, object] | None = None,
    **options: str,
) -> Iterator[taddons.context]:
    """A `taddons.context` with the gateway's own addons (`default_addons()`, in its
    order, behind one `Pipeline` as in the gateway; only those of the classes given, if
    any, and always the services: ConfigLoader and AuditStore), configured with
    `config_text`, a store in `folder` and no approvals API. `before`: (class, addon) puts
    a test's own addon just before the one of that class. The `done` hooks run on leaving
    (or at `finish`), which flushes the store."""
    services = (ConfigLoader, AuditStore)
    chosen = [a for a in default_addons() if not kinds or isinstance(a, (*services, *kinds))]
    if before is not None:
        index = next(i for i, a in enumerate(chosen) if isinstance(a, before[0]))
        chosen.insert(index, before[1])
    wanted = {
        "holdgate_config": write_config(folder, config_text),
        "holdgate_store": str(folder / "audit.sqlite3"),
        "holdgate_recordings": "",
        "holdgate_admin": "",
        **options,
    }
    with taddons.context(Pipeline(chosen)) as tctx:
        tctx.options.update(**{k: v for k, v in wanted.items() if k in tctx.options})
        find(tctx, ConfigLoader).announce_start()  # as its `running` hook does
        try:
            yield tctx
        finally:
            finish(tctx)


def finish(tctx: taddons.context) -> None:
    """Run the addons' `done` hooks once (the AuditStore closes and flushes the store)."""
    if getattr(tctx, "finished", False):
        return
    tctx.finished = True  # type: ignore[attr-defined]
    for addon in tctx.master.addons.chain:
        tctx.master.addons.invoke_addon_sync(addon, hooks.DoneHook())


def store_rows(folder: Path, sql: str) -> list[dict[str, Any]]:
    """Rows of the store `gateway(folder, …)` wrote (read after `finish`)."""
    with sqlite3.connect(folder / "audit.sqlite3") as db:
        db.row_factory = sqlite3.Row
        return [dict(row) for row in db.execute(sql)]


def find[T](tctx: taddons.context, kind: type[T]) -> T:
    """The context's addon of class `kind` (a stage of its `Pipeline`)."""
    (pipeline,) = [a for a in tctx.master.addons.chain if isinstance(a, Pipeline)]
    (found,) = [a for a in pipeline.stages if isinstance(a, kind)]
    return found


def call(tool: str, arguments: dict[str, Any] | None = None, msg_id: Any = 1) -> dict[str, Any]:
    params = {"name": tool, "arguments": arguments or {}}
    return {"jsonrpc": "2.0", "id": msg_id, "method": "tools/call", "params": params}


def request_message(method: str, msg_id: Any = 1, **params: Any) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": msg_id, "method": method, "params": params}


def mirrored(body: Any, headers: dict[str, str]) -> dict[str, str]:
    """`headers` with the Mcp-Method / Mcp-Name a 2026-07-28 client mirrors from a single
    request, unless the test gives its own (a hostile or old client would not send them)."""
    lowered = {k.lower() for k in headers}
    version = {k.lower(): v for k, v in headers.items()}.get("mcp-protocol-version")
    if version != "2026-07-28" or not isinstance(body, dict) or "method" not in body:
        return headers
    out = dict(headers)
    if "mcp-method" not in lowered:
        out["Mcp-Method"] = body["method"]
    name_key = NAME_PARAM.get(body["method"])
    params = body.get("params")
    if name_key and "mcp-name" not in lowered and isinstance(params, dict) and params.get(name_key):
        out["Mcp-Name"] = str(params[name_key])
    return out


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
    client_host: str | None = None,
) -> http.HTTPFlow:
    """A client's request as mitmproxy hands it to the addons (`body`: JSON or bytes).
    `client_host`: the Host the client wrote ("" for none), in reverse mode replaced by
    the upstream's before any hook runs."""
    content = (
        body if isinstance(body, bytes) else b"" if body is None else json.dumps(body).encode()
    )
    fields = [
        (b"Content-Type", b"application/json"),
        (b"Accept", b"application/json, text/event-stream"),
    ]
    fields += [(k.encode(), v.encode()) for k, v in mirrored(body, headers or {}).items()]
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
    flow.client_conn.timestamp_tls_setup = None  # plain HTTP from the client
    # mitmproxy has already put the upstream's address in the Host header; what the client
    # wrote is kept beside the flow (the gateway's own address unless a test names one).
    http_seams.note_client_hosts(
        flow, (client_host or "{}:{}".format(*GATEWAY_ADDRESS),) if client_host != "" else ()
    )
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
