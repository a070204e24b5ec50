"""Router: which upstream MCP server a request is for; 404 when none is configured.

The route is chosen from where the request really goes (reverse target, absolute URL or
CONNECT target), never from the Host header a client writes: credentials are injected
for the upstream routed to, so they may only ever travel to the server the config names.
The Host and Origin a client writes are checked before anything else (DNS rebinding:
`holdgate.protocol.rebinding`), and no upstream connection is opened before a request
is decided (`connection_strategy=lazy`, which the Router owns). An upstream that cannot
be reached or fails is answered as a JSON-RPC error naming it (`http_seams`).
"""

from __future__ import annotations

import asyncio
from functools import lru_cache
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from mitmproxy import ctx, exceptions, http

from holdgate.addons import http_seams
from holdgate.addons.flowstate import (
    RECORDED_STREAM_BYTES,
    FlowState,
    Refusal,
    Route,
    fail_closed,
    json_response,
    refuse,
    state,
)
from holdgate.config.gateway_config import GatewayConfig, Upstream, path_problem, route, split_host
from holdgate.protocol.jsonrpc import (
    INTERNAL_ERROR,
    INVALID_REQUEST,
    BodyError,
    dumps,
    error_object,
    loads_strict_text,
    shown,
)
from holdgate.protocol.rebinding import FrontNames, HostPattern, OriginPattern, front_problem
from holdgate.protocol.sse import SSEDecoder, SSEError, SSEEvent, encode_comment, encode_event

if TYPE_CHECKING:
    from holdgate.addons.config_loader import ConfigLoader


WELL_KNOWN = "/.well-known/oauth-protected-resource"
BODYLESS = ("GET", "DELETE", "HEAD")
# How long a POST waits for a GET stream of its session that reached the gateway first.
STREAM_OPEN_WAIT = 1.0


class StreamsOpening:
    """The GET streams of each session on their way to the upstream, in arrival order.

    A server sends requests that belong to no call (an `elicitation/create` from a tool
    that does not tie it to its call) on the session's GET stream, and drops them while
    none is open. A client that opens the stream and then calls a tool sends the GET first;
    through the gateway the GET takes a new upstream connection while the call reuses one,
    so the call could reach the server first and its question be lost. A POST of a session
    therefore waits (at most STREAM_OPEN_WAIT, once per GET) until the GETs that arrived
    before it have their response headers: the server sees them in the client's order.
    """

    def __init__(self) -> None:
        self._opening: dict[str, dict[int, asyncio.Event]] = {}

    def opening(self, session: str, flow_key: int) -> None:
        self._opening.setdefault(session, {})[flow_key] = asyncio.Event()

    def opened(self, session: str, flow_key: int) -> None:
        waiting = self._opening.get(session)
        if waiting is None:
            return
        event = waiting.pop(flow_key, None)
        if event is not None:
            event.set()
        if not waiting:
            del self._opening[session]

    async def after_earlier_streams(self, session: str) -> None:
        waiting = self._opening.get(session)
        if not waiting:
            return
        earlier = list(waiting.items())
        done, _ = await asyncio.wait(
            [asyncio.ensure_future(event.wait()) for _, event in earlier],
            timeout=STREAM_OPEN_WAIT,
        )
        if len(done) < len(earlier):  # a GET whose headers do not come: wait for it once only
            for key, event in earlier:
                if not event.is_set():
                    self.opened(session, key)


class Router:
    def __init__(self, loader: ConfigLoader) -> None:
        self.loader = loader
        self._lazy = False
        self.streams = StreamsOpening()

    def load(self, loader: Any) -> None:
        http_seams.install()

    def configure(self, updated: set[str]) -> None:
        """Own `connection_strategy`: lazy, so no upstream is connected to before a request
        is decided (mitmproxy's default, eager, connects as a client connects). The first
        configure sets it (a `--set connection_strategy=eager` cannot be told from the
        default, so it is overridden); a later change to eager is refused and rolled back."""
        if "connection_strategy" not in updated:
            return
        if ctx.options.connection_strategy != "lazy":
            if self._lazy:
                raise exceptions.OptionsError(
                    "connection_strategy: Holdgate runs with `lazy` only, so that no upstream "
                    "is connected to before its request is checked; leave the option unset"
                )
            ctx.options.update(connection_strategy="lazy")
        self._lazy = True

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
        regular = flow.client_conn.proxy_mode.type_name != "reverse"
        written = http_seams.client_hosts(flow)
        if written is None:  # the seam is not in place (a mitmproxy it does not fit)
            raise RuntimeError("the Host the client sent was not kept; it cannot be checked")
        problem = front_problem(
            written,
            request.headers.get_all("origin"),
            _front_names(flow, config, regular),
        )
        if problem is not None:
            refuse(flow, 403, INVALID_REQUEST, problem, kind="host-refused")
            return
        # Checked here, where the client's names are known; the upstream, which sees the
        # gateway's request to its own address, would refuse an Origin it was never told of.
        request.headers.pop("origin", None)
        if WELL_KNOWN in path:
            st.local = "resource-metadata"
            return
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
        client_addr = flow.client_conn.peername[0] if flow.client_conn.peername else None
        st.route = Route(config, upstream, client_addr)
        if request.method in BODYLESS and _announces_body(request.headers):
            refuse(
                flow,
                400,
                INVALID_REQUEST,
                f"an HTTP {request.method} carries no MCP message; send it without a body",
                kind="malformed",
            )
            return
        session = request.headers.get("mcp-session-id")
        if request.method == "GET" and session:
            self.streams.opening(session, id(flow))
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

    @fail_closed
    async def request(self, flow: http.HTTPFlow) -> None:
        session = flow.request.headers.get("mcp-session-id")
        if flow.request.method == "POST" and session:
            await self.streams.after_earlier_streams(session)

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        self._stream_settled(flow)

    def _stream_settled(self, flow: http.HTTPFlow) -> None:
        session = flow.request.headers.get("mcp-session-id")
        if flow.request.method == "GET" and session:
            self.streams.opened(session, id(flow))

    def error(self, flow: http.HTTPFlow) -> None:
        """A body cut at the size limit, or an upstream that failed, is answered as a
        JSON-RPC error and put on record; never mitmproxy's HTML page or an empty reply."""
        self._stream_settled(flow)
        st = state(flow)
        if flow.error is None:
            return
        if "body_size_limit" in flow.error.msg:
            # Answered even if refused already: that answer never left (the body was still
            # being read); the refusal on record stays the first one.
            request_cut = flow.error.msg.startswith("Request")
            cut = Refusal(
                413 if request_cut else 502,
                INVALID_REQUEST,
                "the request body is over holdgate_max_body; it was cut while being read "
                "and never forwarded"
                if request_cut
                else "the upstream's response is over holdgate_max_body; it was withheld",
                "malformed" if request_cut else "upstream-failed",
            )
            st.refused = st.refused or cut
            response = json_response(
                cut.status, error_object(None, INVALID_REQUEST, cut.message), _closing(flow)
            )
            http_seams.answer(flow, response)
            flow.response = response
            return
        if st.refused is not None:
            return
        failure = http_seams.upstream_failure(flow)
        if failure is None or not st.routed:
            return  # the client's side failed (gone, killed): nobody to answer
        message, detail = failure_message(st.route.upstream, flow.error.msg, failure.reached)
        ids = _request_ids(st)
        if failure.streaming and flow.response is not None:
            st.refused = Refusal(
                flow.response.status_code, INTERNAL_ERROR, message, "upstream-failed", detail
            )
            unanswered = [i for i in ids if not _answered(st, i)]
            # Each call still waiting gets its error; a stream that answered every call (or a
            # GET stream, which answers none) ends with a comment, which clients skip.
            tail = b"".join(
                encode_event(
                    SSEEvent(
                        data=dumps(error_object(i, INTERNAL_ERROR, message)).decode("utf-8"),
                        event="message",
                    )
                )
                for i in unanswered
            ) or encode_comment(message)
            st.keep_for_recording(tail)
            http_seams.end_stream(flow, tail)
            return
        st.refused = Refusal(502, INTERNAL_ERROR, message, "upstream-failed", detail)
        errors = [error_object(i, INTERNAL_ERROR, message) for i in ids] or [
            error_object(None, INTERNAL_ERROR, message)
        ]
        response = json_response(502, errors if len(errors) > 1 else errors[0], _closing(flow))
        http_seams.answer(flow, response)
        flow.response = response


def _closing(flow: http.HTTPFlow) -> dict[str, str]:
    """HTTP/1: close the connection after an error answer (the request or the upstream's
    answer was cut, so what is left on the wire is unknown)."""
    return {"Connection": "close"} if flow.request.http_version.startswith("HTTP/1") else {}


# What a client may learn of an upstream's failure: a category, never the address or the
# network library's words (they map the internal network for whoever calls).
_FAILURE_CATEGORIES = (
    ("refused", "the connection was refused"),
    ("timed out", "it timed out"),
    ("timeout", "it timed out"),
    ("tls", "the TLS handshake failed"),
    ("ssl", "the TLS handshake failed"),
    ("certificate", "the TLS handshake failed"),
    ("name or service", "its name did not resolve"),
    ("getaddrinfo", "its name did not resolve"),
    ("resolve", "its name did not resolve"),
    ("reset", "the connection was reset"),
    ("closed", "the connection was closed"),
)


def failure_category(error: str) -> str:
    """The kind of a network failure, in words a client may read."""
    lowered = error.lower()
    for needle, category in _FAILURE_CATEGORIES:
        if needle in lowered:
            return category
    return "the connection failed"


def failure_message(upstream: Upstream, error: str, reached: bool) -> tuple[str, str]:
    """What a client is told of an upstream that failed (which one, what kind of failure,
    whether the call can have run there), and what the record keeps besides (its
    address and the error as the network layer put it)."""
    error = " ".join(error.split())[:300]  # one line, as it goes into an SSE comment too
    category = failure_category(error)
    where = f"upstream {upstream.name!r}"
    if not reached:
        told = f"{where} could not be reached ({category}); the request was not forwarded"
    else:
        told = (
            f"{where} failed before its answer was complete ({category}); the request was "
            "forwarded and may have run"
        )
    address = f" at {upstream.url}" if upstream.url else ""
    return told, f"{told} [{where}{address}: {error}]"


def _request_ids(st: FlowState) -> list[str | int]:
    """The ids of the requests (not notifications) of the flow's body, in order."""
    return [
        d.message.id for d in st.decided if d.message.kind == "request" and d.message.id is not None
    ]


def _answered(st: FlowState, msg_id: str | int) -> bool:
    """Whether the stream the client got already carries the answer to `msg_id`. Past the
    first RECORDED_STREAM_BYTES it cannot be told: taken as answered (never answer twice)."""
    if len(st.streamed) >= RECORDED_STREAM_BYTES:
        return True
    decoder = SSEDecoder(max_event_bytes=RECORDED_STREAM_BYTES)
    try:
        events = decoder.feed(bytes(st.streamed))
    except SSEError:
        return True
    for event in events:
        try:
            message = loads_strict_text(event.data or "")
        except BodyError:
            continue
        for item in message if isinstance(message, list) else [message]:
            if (
                isinstance(item, dict)
                and item.get("id") == msg_id
                and ("result" in item or "error" in item)
            ):
                return True
    return False


def _front_names(flow: http.HTTPFlow, config: GatewayConfig, regular: bool) -> FrontNames:
    """The names a client may use for this gateway: the socket it reached (the listen
    address of its mode), `listen_host`, the approvals' public URL, the configured
    `allowed_hosts`/`allowed_origins`; as a regular proxy, the server the request goes to."""
    sock = flow.client_conn.sockname
    own: list[tuple[str, int]] = []
    if regular:
        own.append((flow.request.host.lower(), flow.request.port))
    elif sock:
        own.append((str(sock[0]).lower(), int(sock[1])))
        listen_host = getattr(ctx.options, "listen_host", "")
        if listen_host:
            own.append((listen_host.lower(), int(sock[1])))
    return _built_front_names(
        tuple(own),
        flow.client_conn.tls_established,
        not regular,
        config.approvals.public_url,
        config.allowed_hosts,
        config.allowed_origins,
    )


@lru_cache(maxsize=256)
def _built_front_names(
    own: tuple[tuple[str, int], ...],
    tls: bool,
    check_host: bool,
    public_url: str | None,
    allowed_hosts: tuple[HostPattern, ...],
    allowed_origins: tuple[OriginPattern, ...],
) -> FrontNames:
    """`FrontNames.build`, once per listener and config: every request on a listener asks
    the same (bounded, as a regular proxy's `own` names whatever server was asked for)."""
    return FrontNames.build(
        own,
        tls=tls,
        check_host=check_host,
        public_url=public_url,
        allowed_hosts=allowed_hosts,
        allowed_origins=allowed_origins,
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
