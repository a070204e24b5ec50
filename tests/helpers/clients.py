"""Clients for e2e tests: the official MCP SDK client, and raw HTTP for odd or hostile bodies."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import httpx2
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

# MCP 2026-07-28 sends its version in a header and in every request's `_meta`.
MODERN = {"MCP-Protocol-Version": "2026-07-28"}
META = {
    "io.modelcontextprotocol/protocolVersion": "2026-07-28",
    "io.modelcontextprotocol/clientCapabilities": {},
}


@asynccontextmanager
async def connect(
    url: str, headers: dict[str, str] | None = None, mode: str = "auto", **client_options: Any
) -> AsyncIterator[Client]:
    """An official-SDK client session through the gateway (`mode="legacy"`: 2025-11-25)."""
    async with httpx2.AsyncClient(headers=headers or {}, timeout=30) as http:
        transport = streamable_http_client(url, http_client=http)
        async with Client(transport, mode=mode, cache=None, **client_options) as client:  # type: ignore[arg-type]
            yield client


@dataclass
class RawResponse:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def raw_post(url: str, body: bytes | Any, headers: dict[str, str] | None = None) -> RawResponse:
    """POST bytes (or a JSON value) exactly as given, as an old or hostile client would."""
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    base = {
        "Content-Type": "application/json",
        "Accept": "application/json, text/event-stream",
        "MCP-Protocol-Version": "2025-06-18",
    }
    request = urllib.request.Request(url, data=data, headers={**base, **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return RawResponse(response.status, dict(response.headers), response.read())
    except urllib.error.HTTPError as err:
        return RawResponse(err.code, dict(err.headers), err.read())
