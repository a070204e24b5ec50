"""Try the demo gateway with the official MCP client: list, call, and see what is refused.

.venv/bin/python scripts/demo_client.py --key demo-alice-support
"""

from __future__ import annotations

import argparse
import asyncio
import json

import httpx2
from mcp import Client, MCPError
from mcp.client.streamable_http import streamable_http_client


async def run(url: str, key: str, read_timeout: float) -> None:
    timeout = httpx2.Timeout(30, read=read_timeout)
    async with httpx2.AsyncClient(headers={"X-API-Key": key}, timeout=timeout) as http:
        async with Client(streamable_http_client(url, http_client=http), cache=None) as client:
            tools = await client.list_tools()
            print("tools this identity may use:", [t.name for t in tools.tools])
            for name, args in (
                ("search_customers", {"query": "a", "limit": 2}),
                ("get_service_config", {"service": "billing"}),
                ("exec_shell", {"command": "cat /etc/passwd"}),
            ):
                try:
                    result = await client.call_tool(name, args)
                except MCPError as refused:
                    text = f"refused by the gateway: {refused}"
                else:
                    text = " ".join(getattr(c, "text", "") for c in result.content)
                print(f"\n{name}({json.dumps(args)}) ->\n  {text[:400]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--url", default="http://127.0.0.1:8080/mcp")
    parser.add_argument("--key", default="demo-alice-support")
    parser.add_argument(
        "--read-timeout", type=float, default=900, help="seconds; held approvals need a long one"
    )
    args = parser.parse_args()
    asyncio.run(run(args.url, args.key, args.read_timeout))


if __name__ == "__main__":
    main()
