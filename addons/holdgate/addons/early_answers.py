"""A request refused on its headers is answered at once, and its body is never read.

mitmproxy sends a response an addon set in `requestheaders` only after it has read the
request's whole body (`HttpStream.state_consume_request_body`): a caller with no valid
credential could make the gateway read up to `holdgate_max_body` for each request, and
one that sends its headers and then waits got its 401 only when it gave up. mitmproxy has
no hook for answering early, so `EarlyAnswers` wraps that one step of its HTTP state
machine: when an addon answered in `requestheaders` and a body is still to come, the
answer goes out as any answer does (the `responseheaders` and `response` hooks run, so the
refusal is recorded), then the connection is closed and what the client still sends is
never read. Requests without a body, or not answered on their headers, are untouched.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable, Generator
from typing import Any

from mitmproxy.proxy.layers.http import HttpStream, SendHttp
from mitmproxy.proxy.layers.http._events import ErrorCode, ResponseProtocolError
from mitmproxy.proxy.layers.http._hooks import HttpResponseHeadersHook

logger = logging.getLogger(__name__)

StateStep = Callable[..., Generator[Any, Any, None]]
CLOSED_EARLY = "answered on the request's headers; the rest of the body was not read"
# Marks a step `answer_before_body` made, on the function itself: a reload of the script
# may import this module afresh, and must still find mitmproxy's step wrapped.
WRAPPED_MARK = "holdgate_answers_before_body"


def answer_before_body(step: StateStep) -> StateStep:
    """`HttpStream.state_wait_for_request_headers`, then the early answer when one is due."""

    @functools.wraps(step)
    def wrapped(stream: HttpStream, event: Any) -> Generator[Any, Any, None]:
        yield from step(stream, event)
        flow = getattr(stream, "flow", None)
        body_pending = (
            not event.end_stream and stream.client_state == stream.state_consume_request_body
        )
        if flow is None or flow.response is None or not body_pending or flow.error:
            return
        if not (flow.request.is_http2 or flow.request.is_http3):  # no such header in h2/h3
            flow.response.headers["Connection"] = "close"
        flow.response.timestamp_start = time.time()
        yield HttpResponseHeadersHook(flow)
        if (yield from stream.check_killed(True)):
            return
        stream.client_state = stream.state_errored  # whatever else arrives is dropped
        yield from stream.send_response()
        yield SendHttp(
            ResponseProtocolError(stream.stream_id, CLOSED_EARLY, ErrorCode.GENERIC_CLIENT_ERROR),
            stream.context.client,
        )
        flow.live = False

    wrapped.__dict__[WRAPPED_MARK] = True
    return wrapped


def install() -> None:
    """Wrap mitmproxy's step once per process (a reload of the script finds it wrapped)."""
    current = HttpStream.state_wait_for_request_headers
    if current.__dict__.get(WRAPPED_MARK):
        return
    HttpStream.state_wait_for_request_headers = answer_before_body(current)  # type: ignore[method-assign]
    logger.debug("holdgate: requests refused on their headers are answered before the body")


class EarlyAnswers:
    """Installs `answer_before_body` when the gateway loads (see the module docstring)."""

    def load(self, loader: object) -> None:
        install()
