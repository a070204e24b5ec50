"""Router: which upstream MCP server a request is for; 404 when none is configured."""

from __future__ import annotations

from urllib.parse import urlsplit

from mitmproxy import http

from configloader import ConfigLoader
from holdgate.config import route
from holdgate.jsonrpc import INVALID_REQUEST
from holdgate.proxy import fail_closed, objects, refuse, state

WELL_KNOWN = "/.well-known/oauth-protected-resource"


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
        st["config_hash"] = config.digest
        st["front"] = front_url(flow)
        path, _, query = flow.request.path.partition("?")
        if WELL_KNOWN in path:
            st["local"] = "resource-metadata"
            return
        found = route(config.upstreams, flow.request.pretty_host, path)
        if found is None:
            refuse(
                flow,
                404,
                INVALID_REQUEST,
                f"no upstream is configured for {flow.request.pretty_host}{path}",
                kind="no-upstream",
            )
            return
        upstream, rest = found
        st["upstream"] = upstream.name
        st["client_addr"] = flow.client_conn.peername[0] if flow.client_conn.peername else None
        objects(flow).extra["upstream"] = upstream
        length = flow.request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > self.loader.max_body:
            refuse(
                flow,
                413,
                INVALID_REQUEST,
                f"request body of {length} bytes is over the {self.loader.max_body}-byte limit "
                "(holdgate_max_body)",
                kind="malformed",
            )
            return
        # Policy decides on the whole body, so it must never be streamed past us.
        flow.request.stream = False
        if upstream.url:
            target = urlsplit(upstream.url)
            flow.request.scheme = target.scheme
            flow.request.host = target.hostname or ""
            flow.request.port = target.port or (443 if target.scheme == "https" else 80)
            flow.request.host_header = target.netloc
            base = target.path.rstrip("/")
            flow.request.path = base + rest + (f"?{query}" if query else "")


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
