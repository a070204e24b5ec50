"""Glue shared by every Holdgate addon: per-flow state, refusals, and failing closed.

mitmproxy logs an exception raised in an addon hook and then forwards the flow
anyway. `fail_closed` wraps every hook so that an error becomes a 502 JSON-RPC
refusal instead; it is the one mechanism all addons use.
"""

from __future__ import annotations

import functools
import inspect
import json
import logging
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from mitmproxy import http

from holdgate import STATE_KEY
from holdgate.protocol.jsonrpc import INTERNAL_ERROR, Body, error_object

logger = logging.getLogger("holdgate")

RECORDED_STREAM_BYTES = 1024 * 1024


def state(flow: http.HTTPFlow) -> dict[str, Any]:
    """What the gateway decided about this flow, as plain JSON-like values (saved with it)."""
    return flow.metadata.setdefault(STATE_KEY, {})


def is_mcp(flow: http.HTTPFlow) -> bool:
    """Flows the gateway handles (routed to an upstream); others it refuses or serves itself."""
    return "upstream" in state(flow)


class FlowObjects:
    """Per-flow Python objects that must not go into flow.metadata (parsed body, codecs)."""

    def __init__(self) -> None:
        self.body: Body | None = None
        self.pending_errors: list[dict[str, Any]] = []
        self.extra: dict[str, Any] = {}
        self.streamed = bytearray()
        self.streamed_truncated = False

    def keep_for_recording(self, data: bytes) -> None:
        """Keep the first RECORDED_STREAM_BYTES of a stream as the client got it."""
        room = RECORDED_STREAM_BYTES - len(self.streamed)
        if len(data) > room:
            self.streamed_truncated = True
        self.streamed += data[: max(room, 0)]


_objects: weakref.WeakKeyDictionary[http.HTTPFlow, FlowObjects] = weakref.WeakKeyDictionary()


def objects(flow: http.HTTPFlow) -> FlowObjects:
    found = _objects.get(flow)
    if found is None:
        found = _objects[flow] = FlowObjects()
    return found


def quoted(text: str, limit: int = 80) -> str:
    """Client-supplied text made safe to show: JSON-quoted (control characters escaped,
    ASCII only, so it can go into a header too) and cut at `limit` characters."""
    shown = json.dumps(text[:limit])
    return shown + "…" if len(text) > limit else shown


def json_response(
    status: int, payload: Any, headers: dict[str, str] | None = None
) -> http.Response:
    body = json.dumps(payload, ensure_ascii=False).encode("utf-8")
    return http.Response.make(status, body, {"Content-Type": "application/json", **(headers or {})})


def refuse(
    flow: http.HTTPFlow,
    status: int,
    code: int,
    message: str,
    *,
    msg_id: str | int | None = None,
    kind: str = "refused",
    headers: dict[str, str] | None = None,
) -> None:
    """Answer the client ourselves; the request never reaches the upstream."""
    flow.response = json_response(status, error_object(msg_id, code, message), headers)
    st = state(flow)
    st["refused"] = {"status": status, "code": code, "message": message, "kind": kind}


RESPONSE_HOOKS = frozenset({"responseheaders", "response"})


def refuse_internal(flow: http.HTTPFlow, where: str, exc: BaseException) -> None:
    """Turn an unexpected error into a 502 refusal (never a pass) and say where it happened."""
    logger.error("holdgate: %s failed (%s: %s); flow refused", where, type(exc).__name__, exc)
    withheld = (
        "response was withheld"
        if where.rsplit(".", 1)[-1] in RESPONSE_HOOKS
        else ("request was not forwarded")
    )
    message = f"internal error in the gateway ({where}); the {withheld}"
    refuse(flow, 502, INTERNAL_ERROR, message, kind="internal-error")
    state(flow)["error"] = {"where": where, "type": type(exc).__name__}
    if flow.intercepted:
        flow.resume()  # a held flow must not wait for ever on a refusal


Hook = Callable[..., Any]


def fail_closed(hook: Hook) -> Hook:
    """Wrap an addon hook so an exception refuses the flow instead of forwarding it.

    Request-phase hooks also skip flows another addon already refused.
    """
    where_prefix = hook.__qualname__

    def skip(flow: Any) -> bool:
        return (
            isinstance(flow, http.HTTPFlow)
            and hook.__name__ in ("request", "requestheaders")
            and "refused" in state(flow)
        )

    if inspect.iscoroutinefunction(hook):

        @functools.wraps(hook)
        async def async_wrapper(self: Any, flow: Any, *args: Any) -> Any:
            if skip(flow):
                return None
            try:
                return await hook(self, flow, *args)
            except Exception as exc:  # noqa: BLE001 - the one place every error becomes a refusal
                refuse_internal(flow, where_prefix, exc)
                return None

        return async_wrapper

    @functools.wraps(hook)
    def wrapper(self: Any, flow: Any, *args: Any) -> Any:
        if skip(flow):
            return None
        try:
            return hook(self, flow, *args)
        except Exception as exc:  # noqa: BLE001 - the one place every error becomes a refusal
            refuse_internal(flow, where_prefix, exc)
            return None

    return wrapper


def header_lists(headers: http.Headers) -> dict[str, list[str]]:
    """Lowercased header names mapped to every value sent (duplicates kept, to refuse them)."""
    out: dict[str, list[str]] = {}
    for name in headers.keys():
        key = name.lower()
        if key not in out:
            out[key] = headers.get_all(name)
    return out


@dataclass
class MessageContext:
    """What the response stages learn about one message as it passes them."""

    transport: str  # "json", "sse", or "text" (a non-JSON error body)
    answers: tuple[str, str | None] | None = None  # (method, target) of the request answered
    findings: dict[str, int] = field(default_factory=dict)
    exemptions: tuple[str, ...] = ()
    dropped: str | None = None


def session_key(flow: http.HTTPFlow) -> str | None:
    """The MCP session a flow belongs to: Mcp-Session-Id, or the legacy transport's query id."""
    found = flow.request.headers.get("mcp-session-id")
    if found:
        return found
    extra = objects(flow).extra
    if "query_session" not in extra:  # parsing the query is costly; it does not change
        extra["query_session"] = flow.request.query.get("session_id")
    return extra["query_session"] or extra.get("session_key")


class Correlator:
    """Which request a response answers, across flows (legacy SSE answers on another flow).

    Bounded: the oldest entries go first once `limit` is reached.
    """

    def __init__(self, limit: int = 50_000) -> None:
        self.limit = limit
        self._requests: dict[tuple[str, str], tuple[str, str | None]] = {}

    def remember(self, session: str, msg_id: Any, method: str, target: str | None) -> None:
        if len(self._requests) >= self.limit:
            self._requests.pop(next(iter(self._requests)))
        self._requests[(session, json.dumps(msg_id))] = (method, target)

    def pop(self, session: str, msg_id: Any) -> tuple[str, str | None] | None:
        return self._requests.pop((session, json.dumps(msg_id)), None)
