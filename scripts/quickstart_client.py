"""The README's SDK example: one call through the demo gateway with the official MCP client.

.venv/bin/python scripts/quickstart_client.py [URL] [API_KEY]
"""

import asyncio
import sys

import httpx2
from mcp import Client
from mcp.client.streamable_http import streamable_http_client


async def main(url: str, key: str) -> None:
    # A held call waits for a person: the read timeout must outlast the rule's `timeout`.
    timeout = httpx2.Timeout(30, read=900)
    async with httpx2.AsyncClient(headers={"X-API-Key": key}, timeout=timeout) as http:
        async with Client(streamable_http_client(url, http_client=http)) as client:
            result = await client.call_tool("search_customers", {"query": "a"})
            print(result.content[0].text)


if __name__ == "__main__":
    url = sys.argv[1] if len(sys.argv) > 1 else "http://127.0.0.1:8080/mcp"
    key = sys.argv[2] if len(sys.argv) > 2 else "demo-alice-support"
    asyncio.run(main(url, key))
