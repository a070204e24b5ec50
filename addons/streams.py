"""Responses: every JSON-RPC message coming back passes the response stages one by one.

JSON bodies are parsed once; `text/event-stream` bodies are streamed through the SSE
codec event by event (never buffered whole), so masking, discovery filtering and
recording work per message whatever the transport. Any failure cuts the response:
nothing unchecked reaches the client.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any, Protocol
from urllib.parse import parse_qs, urlsplit

from mitmproxy import http

from configloader import ConfigLoader
from holdgate.jsonrpc import INTERNAL_ERROR, BodyError, dumps, error_object, loads_strict
from holdgate.proxy import MessageContext, fail_closed, is_mcp, objects, refuse, state
from holdgate.sse import SSEDecoder, SSEEvent, encode_event

logger = logging.getLogger("holdgate")

KNOWN_ENCODINGS = {"", "identity", "gzip", "deflate", "br", "zstd"}


class ResponseStage(Protocol):
    """An addon that sees each response message; returns it (maybe changed) or None to drop it."""

    def on_message(self, flow: http.HTTPFlow, message: Any, context: MessageContext) -> Any: ...


class Streams:
    def __init__(self, loader: ConfigLoader, stages: Sequence[ResponseStage]) -> None:
        self.loader = loader
        self.stages = tuple(stages)

    def run_stages(self, flow: http.HTTPFlow, message: Any, transport: str) -> Any:
        """Each stage sees the previous one's output; a dropped message still reaches the last
        stage (the recorder) so the drop is on record."""
        context = MessageContext(transport)
        for stage in self.stages[:-1]:
            message = stage.on_message(flow, message, context)
            if message is None:
                break
        if self.stages:
            self.stages[-1].on_message(flow, message, context)
        return message

    @fail_closed
    def responseheaders(self, flow: http.HTTPFlow) -> None:
        if not is_mcp(flow) or flow.response is None or "refused" in state(flow):
            return
        response = flow.response
        encoding = response.headers.get("content-encoding", "").strip().lower()
        if encoding not in KNOWN_ENCODINGS:
            refuse(flow, 502, -32600, f"upstream used unknown Content-Encoding {encoding!r}")
            return
        if _is_event_stream(response):
            if encoding not in ("", "identity"):
                refuse(flow, 502, -32600, "upstream compressed an event stream; refused")
                return
            response.stream = SSEPass(flow, self, self.loader.max_body)
            return
        length = response.headers.get("content-length", "")
        if length.isdigit() and int(length) > self.loader.max_body:
            refuse(
                flow, 502, -32600, f"upstream response of {length} bytes is over holdgate_max_body"
            )

    @fail_closed
    def response(self, flow: http.HTTPFlow) -> None:
        if not is_mcp(flow) or flow.response is None or "refused" in state(flow):
            return
        if flow.response.stream:
            return
        pending = objects(flow).pending_errors
        content = flow.response.get_content(strict=True) or b""
        if len(content) > self.loader.max_body:
            refuse(flow, 502, -32600, "upstream response is over holdgate_max_body")
            return
        ctype = flow.response.headers.get("content-type", "")
        if not content.strip() or flow.response.status_code == 202:
            # "Accepted" (the legacy transport's answers travel on the event stream).
            if pending:
                flow.response.status_code = 200
                flow.response.headers["content-type"] = "application/json"
                flow.response.content = dumps(pending if len(pending) > 1 else pending[0])
            return
        if "json" not in ctype:
            if pending or flow.request.method == "POST" and 200 <= flow.response.status_code < 300:
                refuse(
                    flow, 502, -32600, f"upstream answered an MCP call with {ctype or 'no type'}"
                )
                return
            # An error page (a proxy's 502, a stack trace) can carry data too: masked as text.
            try:
                text = flow.response.get_text(strict=True) or ""
            except ValueError:
                refuse(
                    flow,
                    502,
                    -32600,
                    f"upstream sent a {ctype or 'untyped'} body that is not "
                    "text, so it cannot be checked for sensitive data",
                )
                return
            masked = self.run_stages(flow, text, "text")
            flow.response.text = masked if isinstance(masked, str) else ""
            return
        try:
            value = loads_strict(content)
        except BodyError as exc:
            refuse(flow, 502, exc.code, f"upstream sent an invalid JSON body: {exc.message}")
            return
        batch = isinstance(value, list)
        items = value if batch else [value]
        out = [m for m in (self.run_stages(flow, item, "json") for item in items) if m is not None]
        out.extend(pending)
        if not out:
            flow.response.content = b""
            flow.response.status_code = 202
            return
        flow.response.content = dumps(out if batch or len(out) > 1 else out[0])


def _is_event_stream(response: http.Response) -> bool:
    return response.headers.get("content-type", "").split(";")[0].strip().lower() == (
        "text/event-stream"
    )


class SSEPass:
    """The per-chunk stream callable: decode events, run the stages on each, re-encode."""

    def __init__(self, flow: http.HTTPFlow, streams: Streams, max_event: int) -> None:
        self.flow = flow
        self.streams = streams
        self.decoder = SSEDecoder(max_event_bytes=max_event)
        self.cut = False
        self.pending = list(objects(flow).pending_errors)

    def __call__(self, chunk: bytes) -> list[bytes]:
        """The bytes to send for one upstream chunk: none while an event is incomplete.

        Never an empty bytes: mitmproxy would write it as a zero-length chunk, which ends
        a chunked response for the client in the middle of the stream.
        """
        if self.cut:
            return []
        try:
            out = [self._encode_pending()] if self.pending else []
            events = self.decoder.feed(chunk) if chunk else self.decoder.close()
            out.extend(self.process(event) for event in events)
            data = b"".join(out)
            objects(self.flow).keep_for_recording(data)
            return [data] if data else []
        except Exception as exc:  # noqa: BLE001 - a failing stream is cut, never passed raw
            return [self._cut(exc)]

    def _encode_pending(self) -> bytes:
        data = b"".join(
            encode_event(SSEEvent(data=dumps(err).decode(), event="message"))
            for err in self.pending
        )
        self.pending.clear()
        return data

    def process(self, event: SSEEvent) -> bytes:
        if event.data is None:
            return encode_event(event)
        try:
            message: Any = loads_strict(event.data.encode("utf-8"))
        except BodyError:
            message = event.data  # e.g. the legacy transport's `endpoint` event
            if event.event == "endpoint":
                # Answers to POSTs on that endpoint arrive on this stream: same session.
                found = parse_qs(urlsplit(event.data).query).get("session_id")
                if found:
                    objects(self.flow).extra["session_key"] = found[0]
        result = self.streams.run_stages(self.flow, message, "sse")
        if result is None:
            return encode_event(SSEEvent(data=None, event=None, id=event.id, comments=("dropped",)))
        data = result if isinstance(result, str) else dumps(result).decode("utf-8")
        return encode_event(SSEEvent(data=data, event=event.event, id=event.id, retry=event.retry))

    def _cut(self, exc: BaseException) -> bytes:
        self.cut = True
        logger.error("holdgate: event stream cut (%s: %s)", type(exc).__name__, exc)
        st = state(self.flow)
        st["stream_cut"] = {"type": type(exc).__name__, "message": str(exc)[:200]}
        notice = error_object(
            None, INTERNAL_ERROR, f"the gateway cut this stream: {type(exc).__name__}"
        )
        asyncio.get_running_loop().call_soon(_kill, self.flow)
        return encode_event(SSEEvent(data=dumps(notice).decode("utf-8"), event="message"))


def _kill(flow: http.HTTPFlow) -> None:
    if flow.killable:
        flow.kill()
