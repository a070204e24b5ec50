"""One measurement of the `hooks` bench scenario, in a process of its own.

    python scripts/bench_hooks.py --tree TREE --config FILE --token FILE --calls N
        [--dispatch pipeline|addons]

Imports Holdgate from TREE (this checkout, or another revision's worktree for `bench.py
--against`), drives N `tools/call` flows through mitmproxy's addon manager in-process
(requestheaders, request, responseheaders, response: no sockets) and prints the process
CPU per call as JSON. `pipeline`: the addons behind the Pipeline (when TREE has one);
`addons`: dispatched one by one by mitmproxy, as before the Pipeline.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tree", type=Path, required=True)
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("--token", type=Path, required=True)
    parser.add_argument("--calls", type=int, default=3000)
    parser.add_argument("--dispatch", choices=["pipeline", "addons"], default="pipeline")
    args = parser.parse_args()
    sys.path.insert(0, str(args.tree / "addons"))
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    print(json.dumps(asyncio.run(measure(args))))


async def measure(args: argparse.Namespace) -> dict[str, object]:
    from mitmproxy import hooks, http
    from mitmproxy.proxy.layers.http import (
        HttpRequestHeadersHook,
        HttpRequestHook,
        HttpResponseHeadersHook,
        HttpResponseHook,
    )
    from mitmproxy.proxy.mode_specs import ProxyMode
    from mitmproxy.test import taddons, tflow, tutils

    from bench_upstream import RESULT
    from holdgate.addons import default_addons

    addons = default_addons()
    dispatch = "addons"
    chain: list[object] = addons
    if args.dispatch == "pipeline":
        try:
            from holdgate.addons.pipeline import Pipeline
        except ImportError:  # a revision from before the Pipeline
            pass
        else:
            chain, dispatch = [Pipeline(addons)], "pipeline"
    try:
        from holdgate.addons.http_seams import note_client_hosts
    except ImportError:  # a revision from before the Host check
        note_client_hosts = None
    token = args.token.read_text().strip()
    body = json.dumps(
        {
            "jsonrpc": "2.0",
            "id": 1,
            "method": "tools/call",
            "params": {"name": "get_customer", "arguments": {"customer_id": 1}},
        }
    ).encode()
    fields = [
        (b"Content-Type", b"application/json"),
        (b"Accept", b"application/json, text/event-stream"),
        (b"Authorization", f"Bearer {token}".encode()),
        (b"Content-Length", str(len(body)).encode()),
    ]
    mode = ProxyMode.parse("reverse:http://127.0.0.1:9")

    def new_flow() -> http.HTTPFlow:
        request = tutils.treq(
            host="127.0.0.1", port=9, method=b"POST", path=b"/mcp", headers=http.Headers(fields)
        )
        request.content = body
        flow = tflow.tflow(req=request)
        flow.client_conn.proxy_mode = mode
        flow.client_conn.sockname = ("127.0.0.1", 8080)
        flow.client_conn.timestamp_tls_setup = None
        if note_client_hosts is not None:  # what the seam keeps when mitmproxy parses it
            note_client_hosts(flow, ("127.0.0.1:8080",))
        return flow

    with tempfile.TemporaryDirectory() as tmp, taddons.context(*chain) as tctx:
        tctx.options.update(
            holdgate_config=str(args.config),
            holdgate_store=str(Path(tmp) / "audit.sqlite3"),
            holdgate_recordings=str(Path(tmp) / "rec"),
            holdgate_admin="",
        )
        manager = tctx.master.addons
        for addon in manager.chain:
            manager.invoke_addon_sync(addon, hooks.RunningHook())
        flows = [new_flow() for _ in range(args.calls)]  # built before: not measured
        started = time.process_time()
        for flow in flows:
            await manager.handle_lifecycle(HttpRequestHeadersHook(flow))
            await manager.handle_lifecycle(HttpRequestHook(flow))
            if flow.response is not None:
                raise SystemExit(f"the gateway refused the bench call: {flow.response.text}")
            flow.response = http.Response.make(200, RESULT, {"Content-Type": "application/json"})
            await manager.handle_lifecycle(HttpResponseHeadersHook(flow))
            await manager.handle_lifecycle(HttpResponseHook(flow))
        spent = time.process_time() - started
        for addon in manager.chain:
            manager.invoke_addon_sync(addon, hooks.DoneHook())
    return {"dispatch": dispatch, "cpu_us_per_call": 1e6 * spent / args.calls}


if __name__ == "__main__":
    main()
