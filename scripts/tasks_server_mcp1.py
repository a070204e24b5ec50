"""An MCP server with tasks (MCP 2025-11-25), on the official Python SDK 1.x.

Run by `.venv-mcp1/bin/python` (the SDK 1.x cannot share the gateway's venv, which has
2.x): `make .venv-mcp1/.installed-stamp` builds it. The tests start it as a subprocess.

It runs stateless, as a server behind a load balancer does: every request is a session
of its own, so the SDK cannot bind a task to the session that created it, and whoever
holds a task id may read or cancel the task. Its tasks/list lists every task in its
store, a page of two at a time (the SDK's in-memory store pages by task id). That is
the upstream the gateway must make safe. Tools:
- `customer_report(customer)` (task optional): a report carrying an e-mail address and a
  card number;
- `purge_orders(before)` (task optional): a destructive call (an approve rule's tool);
- `slow_report(seconds)` (task required): works for a while, then reports.
Each JSON-RPC message received is appended, as one JSON line, to `--log`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import warnings
from collections.abc import AsyncIterator
from typing import Any

import anyio
import mcp.types as types
import uvicorn
from mcp.server.experimental.task_context import ServerTaskContext
from mcp.server.lowlevel import Server
from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
from mcp.shared.experimental.tasks.in_memory_task_store import InMemoryTaskStore
from starlette.applications import Starlette
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

REPORT = "customer {customer}: mail jane.roe@example.com, card 4111 1111 1111 1111"
PAGE = 2


def build_server() -> Server[Any, Any]:
    server: Server[Any, Any] = Server("holdgate-tasks-demo")
    store = InMemoryTaskStore(page_size=PAGE)
    server.experimental.enable_tasks(store=store)

    @server.list_tools()
    async def list_tools() -> list[types.Tool]:
        def tool(name: str, prop: str, kind: str, support: str) -> types.Tool:
            return types.Tool(
                name=name,
                inputSchema={"type": "object", "properties": {prop: {"type": kind}}},
                execution=types.ToolExecution(taskSupport=support),  # type: ignore[arg-type]
            )

        return [
            tool("customer_report", "customer", "string", types.TASK_OPTIONAL),
            tool("purge_orders", "before", "string", types.TASK_OPTIONAL),
            tool("slow_report", "seconds", "number", types.TASK_REQUIRED),
        ]

    @server.call_tool()
    async def call_tool(name: str, arguments: dict[str, Any]) -> Any:
        async def work(task: ServerTaskContext) -> types.CallToolResult:
            if name == "slow_report":
                await anyio.sleep(float(arguments.get("seconds", 1)))
            text = (
                f"purged orders before {arguments.get('before')}"
                if name == "purge_orders"
                else REPORT.format(customer=arguments.get("customer", "?"))
            )
            return types.CallToolResult(content=[types.TextContent(type="text", text=text)])

        ctx = server.request_context
        if ctx.experimental.is_task:
            return await ctx.experimental.run_task(work)
        return await work(None)  # type: ignore[arg-type]

    @server.experimental.list_tasks()
    async def list_tasks(request: types.ListTasksRequest) -> types.ListTasksResult:
        cursor = request.params.cursor if request.params else None
        tasks, next_cursor = await store.list_tasks(cursor)
        return types.ListTasksResult(tasks=tasks, nextCursor=next_cursor)

    return server


def logging_app(app: Any, log: str | None) -> Any:
    """The ASGI app, appending every POSTed JSON-RPC body to `log` (one line each)."""

    async def logged(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or log is None or scope["method"] != "POST":
            await app(scope, receive, send)
            return
        chunks: list[bytes] = []
        more = True
        while more:
            message = await receive()
            chunks.append(message.get("body", b""))
            more = message.get("more_body", False)
        body = b"".join(chunks)
        with open(log, "a", encoding="utf-8") as sink:
            sink.write(json.dumps(json.loads(body or b"null")) + "\n")
        sent = False

        async def replay() -> dict[str, Any]:
            nonlocal sent
            if sent:
                return await receive()
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        await app(scope, replay, send)

    return logged


def main() -> None:
    # The SDK 1.x warns that its experimental tasks API goes away in 2.0; that is why
    # these peers run on 1.x.
    warnings.simplefilter("ignore", DeprecationWarning)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--log", help="append every JSON-RPC body received to this file")
    args = parser.parse_args()
    manager = StreamableHTTPSessionManager(app=build_server(), stateless=True)

    class Endpoint:  # an ASGI app (not a function), so Starlette's Route passes it through
        async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
            await manager.handle_request(scope, receive, send)

    @contextlib.asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        async with manager.run():
            yield

    app = Starlette(routes=[Route("/mcp", endpoint=Endpoint())], lifespan=lifespan)
    uvicorn.run(logging_app(app, args.log), host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
