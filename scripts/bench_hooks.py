"""One measurement of the `hooks` bench scenario, in a process of its own.

    python scripts/bench_hooks.py --tree TREE --config FILE --token FILE --calls N
        [--dispatch pipeline|addons] [--writer process|thread]

Imports Holdgate from TREE (this checkout, or another revision's worktree for `bench.py
--against`), drives N `tools/call` flows through mitmproxy's addon manager in-process
(requestheaders, request, responseheaders, response: no sockets) and prints as JSON the CPU
per call of the process, of its event loop thread alone, and of its child processes (the
audit writer's, with `--writer process`, and the recordings writer). `pipeline`: the addons
behind the Pipeline (when TREE has one); `addons`: dispatched one by one by mitmproxy, as
before the Pipeline. `--writer`: `holdgate_audit_writer` (TREE's default when not given).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
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
    parser.add_argument("--writer", choices=["process", "thread"])
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
    try:
        from holdgate.addons.http_seams import note_client_hosts
    except ImportError:  # a revision from before the seam
        note_client_hosts = None

    def new_flow() -> http.HTTPFlow:
        request = tutils.treq(
            host="127.0.0.1", port=9, method=b"POST", path=b"/mcp", headers=http.Headers(fields)
        )
        request.content = body
        flow = tflow.tflow(req=request)
        flow.client_conn.proxy_mode = mode
        flow.client_conn.sockname = ("127.0.0.1", 8080)
        flow.client_conn.timestamp_tls_setup = None
        if note_client_hosts is not None:  # the Host the client wrote, as the seam keeps it
            note_client_hosts(flow, ("127.0.0.1:8080",))
        return flow

    with tempfile.TemporaryDirectory() as tmp, taddons.context(*chain) as tctx:
        tctx.options.update(
            holdgate_config=str(args.config),
            holdgate_store=str(Path(tmp) / "audit.sqlite3"),
            holdgate_recordings=str(Path(tmp) / "rec"),
            holdgate_admin="",
        )
        if args.writer is not None:
            tctx.options.update(holdgate_audit_writer=args.writer)
        manager = tctx.master.addons
        for addon in manager.chain:
            manager.invoke_addon_sync(addon, hooks.RunningHook())
        flows = [new_flow() for _ in range(args.calls)]  # built before: not measured
        started = time.process_time(), time.thread_time(), children_cpu()
        for flow in flows:
            await manager.handle_lifecycle(HttpRequestHeadersHook(flow))
            await manager.handle_lifecycle(HttpRequestHook(flow))
            if flow.response is not None:
                raise SystemExit(f"the gateway refused the bench call: {flow.response.text}")
            flow.response = http.Response.make(200, RESULT, {"Content-Type": "application/json"})
            await manager.handle_lifecycle(HttpResponseHeadersHook(flow))
            await manager.handle_lifecycle(HttpResponseHook(flow))
        ended = time.process_time(), time.thread_time(), children_cpu()
        for addon in manager.chain:
            manager.invoke_addon_sync(addon, hooks.DoneHook())
    spent = [1e6 * (b - a) / args.calls for a, b in zip(started, ended, strict=True)]
    return {
        "dispatch": dispatch,
        "cpu_us_per_call": spent[0],
        "loop_cpu_us_per_call": spent[1],
        "children_cpu_us_per_call": spent[2],
    }


def children_cpu() -> float:
    """CPU seconds of this process's children so far (read from /proc while they run)."""
    ticks = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # a process that just ended
        if int(fields[1]) == os.getpid():
            ticks += int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


if __name__ == "__main__":
    main()
