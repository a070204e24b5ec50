"""An MCP client using tasks (MCP 2025-11-25) on the official Python SDK 1.x.

Run by `.venv-mcp1/bin/python` (see scripts/tasks_server_mcp1.py). One action per run,
its outcome printed as one JSON object on stdout:

    create TOOL ARGS_JSON        call TOOL as a task: {"task_id", "status"}
    get TASK_ID                  tasks/get: {"status"} or {"error": {code, message}}
    result TASK_ID               tasks/result: {"result": CallToolResult} or {"error"}
    wait TASK_ID                 poll tasks/get until terminal, then tasks/result
    cancel TASK_ID               tasks/cancel: {"status"} or {"error"}
    list                         tasks/list, every page: {"task_ids": [...], "pages": n}

`--header NAME=VALUE` (repeatable) is sent with every request (the caller's API key).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import warnings
from typing import Any

import httpx
import mcp.types as types
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import McpError

MAX_PAGES = 50


async def act(session: ClientSession, action: str, args: list[str]) -> dict[str, Any]:
    tasks = session.experimental
    if action == "create":
        created = await tasks.call_tool_as_task(args[0], json.loads(args[1]), ttl=600_000)
        return {"task_id": created.task.taskId, "status": created.task.status}
    if action == "get":
        got = await tasks.get_task(args[0])
        return {"status": got.status, "task_id": got.taskId}
    if action == "result":
        result = await tasks.get_task_result(args[0], types.CallToolResult)
        return {"result": result.model_dump(mode="json", by_alias=True, exclude_none=True)}
    if action == "wait":
        async for status in tasks.poll_task(args[0]):
            last = status.status
        result = await tasks.get_task_result(args[0], types.CallToolResult)
        dumped = result.model_dump(mode="json", by_alias=True, exclude_none=True)
        return {"status": last, "result": dumped}
    if action == "cancel":
        cancelled = await tasks.cancel_task(args[0])
        return {"status": cancelled.status}
    if action == "list":
        ids: list[str] = []
        cursor: str | None = None
        for page in range(1, MAX_PAGES + 1):
            listed = await tasks.list_tasks(cursor)
            ids += [t.taskId for t in listed.tasks]
            cursor = listed.nextCursor
            if cursor is None:
                return {"task_ids": ids, "pages": page}
        raise RuntimeError(f"tasks/list still had pages after {MAX_PAGES}")
    raise SystemExit(f"unknown action {action!r}")


async def run(url: str, headers: dict[str, str], action: str, args: list[str]) -> dict[str, Any]:
    async with (
        httpx.AsyncClient(headers=headers, timeout=30) as http,
        streamable_http_client(url, http_client=http) as (read, write, _),
        ClientSession(read, write) as session,
    ):
        await session.initialize()
        try:
            return await act(session, action, args)
        except McpError as exc:
            return {"error": {"code": exc.error.code, "message": exc.error.message}}


def main() -> None:
    # The SDK 1.x warns that its experimental tasks API goes away in 2.0; that is why
    # these peers run on 1.x.
    warnings.simplefilter("ignore", DeprecationWarning)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url")
    parser.add_argument("action")
    parser.add_argument("args", nargs="*")
    parser.add_argument("--header", action="append", default=[])
    options = parser.parse_args()
    headers = dict(h.split("=", 1) for h in options.header)
    print(json.dumps(asyncio.run(run(options.url, headers, options.action, options.args))))


if __name__ == "__main__":
    main()
