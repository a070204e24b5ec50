"""Router: which upstream MCP server a request is for; 404 when none is configured.

The route is chosen from where the request really goes (reverse target, absolute URL or
CONNECT target), never from the Host header a client writes: credentials are injected
for the upstream routed to, so they may only ever travel to the server the config names.
"""

from __future__ import annotations

from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from mitmproxy import http

from holdgate.addons.flowstate import Refusal, fail_closed, refuse, state
from holdgate.config.gateway_config import path_problem, route, split_host
from holdgate.protocol.jsonrpc import INVALID_REQUEST, shown

if TYPE_CHECKING:
    from holdgate.addons.config_loader import ConfigLoader


WELL_KNOWN = "/.well-known/oauth-protected-resource"
BODYLESS = ("GET", "DELETE", "HEAD")


class Router:
    def __init__(self, loader: ConfigLoader) -> None:
        self.loader = loader

    @fail_closed
    def requestheaders(self, flow: http.HTTPFlow) -> None:
        config = self.loader.current
        if config is None:
            refuse(flow, 503, INVALID_REQUEST, "the gateway has no valid config loaded")
            return
        st = state(flow)
        st.config = config
        st.front = front_url(flow)
        request = flow.request
        path, _, query = request.path.partition("?")
        problem = path_problem(path)
        if problem is not None:
            refuse(
                flow,
                400,
                INVALID_REQUEST,
                f"the request path {shown(path)} is refused: {problem}; send the canonical path",
                kind="malformed",
            )
            return
        if WELL_KNOWN in path:
            st.local = "resource-metadata"
            return
        regular = flow.client_conn.proxy_mode.type_name != "reverse"
        if regular and request.host_header is not None:
            named = split_host(request.host_header)[0]
            if named != request.host.lower():
                refuse(
                    flow,
                    400,
                    INVALID_REQUEST,
                    f"the Host header names {shown(request.host_header)} but the request goes "
                    f"to {shown(request.host)}; send the same server in both",
                    kind="malformed",
                )
                return
        found = route(config.upstreams, request.host, request.port, path)
        if found is None:
            refuse(
                flow,
                404,
                INVALID_REQUEST,
                f"no upstream is configured for {shown(request.pretty_host + path)}",
                kind="no-upstream",
            )
            return
        upstream, rest = found
        st.upstream = upstream
        st.client_addr = flow.client_conn.peername[0] if flow.client_conn.peername else None
        if request.method in BODYLESS and _announces_body(request.headers):
            refuse(
                flow,
                400,
                INVALID_REQUEST,
                f"an HTTP {request.method} carries no MCP message; send it without a body",
                kind="malformed",
            )
            return
        # Policy decides on the whole body, so it must never be streamed past us; bodies
        # over holdgate_max_body are cut while they are read (mitmproxy's body_size_limit).
        request.stream = False
        if upstream.url:
            target = urlsplit(upstream.url)
            request.scheme = target.scheme
            request.host = target.hostname or ""
            request.port = target.port or (443 if target.scheme == "https" else 80)
            request.host_header = target.netloc
            base = target.path.rstrip("/")
            request.path = base + rest + (f"?{query}" if query else "")

    def error(self, flow: http.HTTPFlow) -> None:
        """A body cut at the size limit is a refusal on record, not a failed pass."""
        st = state(flow)
        if flow.error is not None and "body_size_limit" in flow.error.msg and st.refused is None:
            st.refused = Refusal(
                413,
                INVALID_REQUEST,
                "the request body is over holdgate_max_body; it was cut while being read "
                "and never forwarded",
                "malformed",
            )


def _announces_body(headers: http.Headers) -> bool:
    length = headers.get("content-length", "0").strip()
    return "transfer-encoding" in headers or length not in ("", "0")


def front_url(flow: http.HTTPFlow) -> str:
    """The gateway's own base URL as the client addressed it (for RFC 9728 metadata).

    In reverse mode mitmproxy has already pointed the request at the upstream, so the
    address is the socket the client connected to; as a regular proxy, the client thinks
    it talks to the upstream host itself.
    """
    if flow.client_conn.proxy_mode.type_name == "reverse" and flow.client_conn.sockname:
        host, port = flow.client_conn.sockname[:2]
        scheme = "https" if flow.client_conn.tls_established else "http"
        host = f"[{host}]" if ":" in host else host
        return f"{scheme}://{host}:{port}"
    return f"{flow.request.scheme}://{flow.request.host_header or flow.request.host}"
