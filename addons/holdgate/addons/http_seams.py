"""Seams into mitmproxy's HttpStream: error answers, and the Host the client wrote.

Error answers: what an addon answers in the `error` hook is what the client gets.

When an upstream cannot be reached, or fails before its response reached the client,
mitmproxy runs the `error` hook and then answers the client itself with an HTML page
(`make_error_response`), whatever the hook did; a stream it cuts without a word. An MCP
client needs a JSON-RPC error it can read. `install()` wraps the two `HttpStream` steps
that send that page (`handle_protocol_error`, `check_body_size`) so that an answer
registered during the hook goes out instead:

- `answer(flow, response)`: a whole response, when none of the upstream's reached the
  client yet;
- `end_stream(flow, tail)`: the bytes that end a response already streaming (an SSE
  event), then a clean end of the message instead of a cut.

Nothing registered: mitmproxy's own behaviour. A kill (mitmweb, a client gone) is never
answered. (mitmproxy #7999 proposes the same for the hook itself; until it ships, this is
the seam, checked against the installed mitmproxy by the tests.)

The Host the client wrote: in reverse mode mitmproxy replaces the Host header with the
upstream's address before any hook runs (unless `keep_host_header`, which would also
change the upstream's TLS name). `client_hosts(flow)` keeps what the client sent, for
the DNS-rebinding check.
"""

from __future__ import annotations

import functools
import weakref
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Any

from mitmproxy import http
from mitmproxy.proxy.layers.http import HttpStream, SendHttp
from mitmproxy.proxy.layers.http._events import (
    ErrorCode,
    HttpEvent,
    ResponseData,
    ResponseEndOfMessage,
    ResponseHeaders,
    ResponseProtocolError,
)
from mitmproxy.proxy.layers.http._hooks import HttpRequestHeadersHook


@dataclass(frozen=True)
class UpstreamFailure:
    """Where the server side of a flow failed (what went wrong is `flow.error`)."""

    reached: bool  # a connection to the upstream was made (the request may have run)
    streaming: bool  # the response's headers had already gone to the client


@dataclass(frozen=True)
class _Answer:
    response: http.Response | None = None
    tail: bytes | None = None


_failures: weakref.WeakKeyDictionary[http.HTTPFlow, UpstreamFailure] = weakref.WeakKeyDictionary()
_answers: weakref.WeakKeyDictionary[http.HTTPFlow, _Answer] = weakref.WeakKeyDictionary()


_client_hosts: weakref.WeakKeyDictionary[http.HTTPFlow, tuple[str, ...]] = (
    weakref.WeakKeyDictionary()
)


def client_hosts(flow: http.HTTPFlow) -> tuple[str, ...] | None:
    """Every Host header (or the HTTP/2 authority) the client sent, before mitmproxy
    rewrote them; None if the seam never saw the flow's headers."""
    return _client_hosts.get(flow)


def note_client_hosts(flow: http.HTTPFlow, hosts: tuple[str, ...]) -> None:
    """Keep the Host headers a client sent with its flow (the seam's job; tests that build
    flows in process say it themselves)."""
    _client_hosts[flow] = hosts


def _keeping_client_host(step: Callable[..., Commands]) -> Callable[..., Commands]:
    """Wrap `state_wait_for_request_headers`: note the client's Host before the rewrite."""

    @functools.wraps(step)
    def wrapper(stream: HttpStream, event: Any) -> Commands:
        request = getattr(event, "request", None)
        written: tuple[str, ...] = ()
        if isinstance(request, http.Request):
            written = tuple(request.headers.get_all("host"))
            if not written and request.authority:
                written = (request.authority,)
        steps = step(stream, event)
        reply: Any = None
        while True:
            try:
                command = steps.send(reply)
            except StopIteration as stop:
                return stop.value
            if isinstance(command, HttpRequestHeadersHook):
                note_client_hosts(command.flow, written)
            reply = yield command

    return wrapper


def upstream_failure(flow: http.HTTPFlow) -> UpstreamFailure | None:
    """The upstream's failure, while the `error` hook of a flow that failed upstream runs."""
    return _failures.get(flow)


def answer(flow: http.HTTPFlow, response: http.Response) -> None:
    """Send `response` instead of mitmproxy's error page (from the `error` hook)."""
    _answers[flow] = _Answer(response=response)


def end_stream(flow: http.HTTPFlow, tail: bytes) -> None:
    """End a response already streaming with `tail` and a clean end (from the `error` hook)."""
    _answers[flow] = _Answer(tail=tail)


Commands = Generator[Any, Any, Any]


def _streaming(stream: HttpStream) -> bool:
    return bool(stream.server_state == stream.state_stream_response_body)


def _answering(step: Callable[..., Commands], *, then_close: bool) -> Callable[..., Commands]:
    """Wrap an HttpStream step: its error for the client becomes the registered answer.
    `then_close`: for a request body cut at the size limit (`check_body_size(True)`) the
    client may still be sending, so mitmproxy's error follows the answer: having answered
    already, it only closes the connection."""

    @functools.wraps(step)
    def wrapper(stream: HttpStream, *args: Any) -> Commands:
        flow = getattr(stream, "flow", None)
        event = args[0] if args else None
        if flow is not None and isinstance(event, ResponseProtocolError):
            _failures[flow] = UpstreamFailure(
                reached=event.code != ErrorCode.CONNECT_FAILED,
                streaming=_streaming(stream),
            )
        closing = then_close and args == (True,)
        steps = step(stream, *args)
        reply: Any = None
        try:
            while True:
                try:
                    command = steps.send(reply)
                except StopIteration as stop:
                    return stop.value
                events = _answer_for(stream, command)
                for event in events:
                    yield SendHttp(event, stream.context.client)
                if events and not closing:
                    reply = None
                    continue
                reply = yield command
        finally:
            if flow is not None:
                _failures.pop(flow, None)

    return wrapper


def _answer_for(stream: HttpStream, command: Any) -> list[HttpEvent]:
    """The events to send instead of `command`, mitmproxy's error for the client (none: send
    it). An answer of the wrong kind for where the response is is dropped: mitmproxy's."""
    if not (
        isinstance(command, SendHttp)
        and command.connection is stream.context.client
        and isinstance(command.event, ResponseProtocolError)
        and command.event.code != ErrorCode.KILL
    ):
        return []
    found = _answers.pop(stream.flow, None)
    if found is None:
        return []
    sid = stream.stream_id
    events: list[HttpEvent] = []
    if found.response is not None and not _streaming(stream):
        events.append(ResponseHeaders(sid, found.response, end_stream=False))
        if found.response.raw_content:
            events.append(ResponseData(sid, found.response.raw_content))
    elif found.tail is not None and _streaming(stream):
        events.append(ResponseData(sid, found.tail))
    else:
        return []
    events.append(ResponseEndOfMessage(sid))
    return events


_installed = False


def install() -> None:
    """Wrap mitmproxy's HttpStream once (idempotent)."""
    global _installed
    if _installed:
        return
    _installed = True
    HttpStream.handle_protocol_error = _answering(  # type: ignore[method-assign]
        HttpStream.handle_protocol_error, then_close=False
    )
    HttpStream.check_body_size = _answering(  # type: ignore[method-assign]
        HttpStream.check_body_size, then_close=True
    )
    step = HttpStream.state_wait_for_request_headers
    HttpStream.state_wait_for_request_headers = _keeping_client_host(step)  # type: ignore[method-assign]
