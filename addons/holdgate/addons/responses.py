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
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import parse_qs, urlsplit

import re2
from mitmproxy import http

from holdgate.addons.flowstate import (
    MessageContext,
    fail_closed,
    keep_refusal_body,
    refuse,
    state,
)
from holdgate.config.gateway_config import GatewayConfig, Upstream
from holdgate.masking.injected import InjectedForms, StreamTails, forms_for
from holdgate.masking.masker import ProfilesInEffect, mask_text
from holdgate.protocol.bodies import decode_bounded
from holdgate.protocol.jsonrpc import (
    INTERNAL_ERROR,
    INVALID_REQUEST,
    BodyError,
    dumps,
    error_object,
    loads_strict,
    loads_strict_text,
    shown,
)
from holdgate.protocol.sse import SSEDecoder, SSEError, SSEEvent, encode_event
from holdgate.protocol.verbatim import verbatim

if TYPE_CHECKING:
    from holdgate.addons.config_loader import ConfigLoader


logger = logging.getLogger("holdgate")

KNOWN_ENCODINGS = {"", "identity", "gzip", "deflate", "br", "zstd"}


class ResponseStage(Protocol):
    """An addon that sees each response message; returns it (maybe changed) or None to drop it."""

    def on_message(self, flow: http.HTTPFlow, message: Any, context: MessageContext) -> Any: ...


class Responses:
    def __init__(self, loader: ConfigLoader, stages: Sequence[ResponseStage]) -> None:
        self.loader = loader
        self.stages = tuple(stages)
        self._guards: dict[Upstream, Guard] = {}
        loader.checks.append(self.prepare_guards)

    def run_stages(
        self, flow: http.HTTPFlow, message: Any, transport: str, tails: StreamTails | None = None
    ) -> Any:
        """Each stage sees the previous one's output; a dropped message still reaches the last
        stage (the recorder) so the drop is on record. A token exchanged for this caller is
        scrubbed first, so not even the record sees it echoed (`tails`: of the stream)."""
        message = delegated_guard(flow).value(flow, message, tails)
        context = MessageContext(transport)
        for stage in self.stages[:-1]:
            passed = stage.on_message(flow, message, context)
            if passed is None:  # the recorder gets the message as it was before the drop
                context.dropped = context.dropped or f"dropped by {type(stage).__name__}"
                break
            message = passed
        if self.stages:
            self.stages[-1].on_message(flow, message, context)
        return None if context.dropped else message

    def prepare_guards(self, config: GatewayConfig) -> str | None:
        """Compile each upstream's injected values once, as its config loads (a config
        whose values cannot be compiled is refused)."""
        guards = {}
        for upstream in config.upstreams:
            found = self._guards.get(upstream)
            if found is None:
                try:
                    found = Guard(forms_for(upstream.secrets))
                except re2.error as exc:
                    return (
                        f"upstream {upstream.name!r}: its injected headers cannot be searched "
                        f"for in responses ({exc}); shorten them"
                    )
            guards[upstream] = found
        # The previous config's guards stay for flows it routed (kept a few reloads).
        if len(self._guards) > 64:
            self._guards.clear()
        self._guards.update(guards)
        return None

    def guard(self, flow: http.HTTPFlow) -> Guard:
        """The injected values of this flow's upstream, to keep out of what the client gets."""
        upstream = state(flow).route.upstream
        found = self._guards.get(upstream)
        if found is None:  # its config's guards were dropped after many reloads
            found = self._guards[upstream] = Guard(forms_for(upstream.secrets))
        return found

    @fail_closed
    def responseheaders(self, flow: http.HTTPFlow) -> None:
        st = state(flow)
        if not st.routed or flow.response is None or st.refused is not None:
            return
        config = st.route.config
        response = flow.response
        encoding = response.headers.get("content-encoding", "").strip().lower()
        if encoding not in KNOWN_ENCODINGS:
            refuse(
                flow,
                502,
                INVALID_REQUEST,
                f"upstream used unknown Content-Encoding {shown(encoding)}",
            )
            return
        self.clean_headers(flow, config)
        if _is_event_stream(response):
            if encoding not in ("", "identity"):
                refuse(flow, 502, INVALID_REQUEST, "upstream compressed an event stream; refused")
                return
            # Events are rewritten (masked), so the upstream's length no longer holds.
            response.headers.pop("content-length", None)
            if flow.request.http_version == "HTTP/1.1":
                response.headers["transfer-encoding"] = "chunked"
            elif flow.request.http_version == "HTTP/1.0":
                response.headers["connection"] = "close"
            response.stream = SSEPass(flow, self, self.loader.max_body)
            return
        length = response.headers.get("content-length", "")
        if length.isdigit() and int(length) > self.loader.max_body:
            refuse(
                flow,
                502,
                INVALID_REQUEST,
                f"upstream response of {length} bytes is over holdgate_max_body",
            )

    @fail_closed
    def response(self, flow: http.HTTPFlow) -> None:
        st = state(flow)
        if st.refused is not None:
            keep_refusal_body(flow)  # never the upstream's body under a refusal's headers
            return
        if not st.routed or flow.response is None:
            return
        if flow.response.stream:
            return
        pending = st.pending_errors
        try:
            content = decode_bounded(
                flow.response.raw_content or b"",
                flow.response.headers.get("content-encoding", ""),
                self.loader.max_body,
            )
        except BodyError as exc:
            refuse(flow, 502, INVALID_REQUEST, f"upstream response refused: {exc.message}")
            return
        ctype = flow.response.headers.get("content-type", "")
        accepted = flow.response.status_code == 202
        if not content.strip() or (accepted and pending and "json" not in ctype):
            # "Accepted" (the legacy transport's answers travel on the event stream). A 202
            # that carries a body is checked like any other: nothing reaches the client
            # past the response stages.
            if pending:
                flow.response.status_code = 200
                flow.response.headers["content-type"] = "application/json"
                flow.response.content = dumps(pending if len(pending) > 1 else pending[0])
            return
        if "json" not in ctype:
            if pending or (
                flow.request.method == "POST"
                and 200 <= flow.response.status_code < 300
                and not accepted
            ):
                refuse(
                    flow,
                    502,
                    INVALID_REQUEST,
                    f"upstream answered an MCP call with {ctype or 'no type'}",
                )
                return
            # An error page (a proxy's 502, a stack trace) can carry data too: masked as text.
            try:
                text = flow.response.get_text(strict=True) or ""
            except ValueError:
                refuse(
                    flow,
                    502,
                    INVALID_REQUEST,
                    f"upstream sent a {ctype or 'untyped'} body that is not "
                    "text, so it cannot be checked for sensitive data",
                )
                return
            masked = self.run_stages(flow, text, "text")
            flow.response.text = self.guard(flow).text(
                flow, masked if isinstance(masked, str) else ""
            )
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
        out = self.guard(flow).value(flow, out)
        if verbatim(content, items, out):
            return  # nothing changed: the upstream's own bytes go out
        flow.response.content = dumps(out if batch or len(out) > 1 else out[0])

    def clean_headers(self, flow: http.HTTPFlow, config: GatewayConfig) -> None:
        """What the client gets of the upstream's headers: no injected value, no cookie the
        upstream may not set, none the config drops, values masked like bodies."""
        response = flow.response
        assert response is not None
        st = state(flow)
        upstream = st.route.upstream
        guard = self.guard(flow)
        rules = config.response_headers
        effect = None
        if rules.mask:
            groups = st.identity.groups if st.authenticated else ()
            effect = config.masking.profiles_for(upstream.name, None, groups)
        for name in list(response.headers.keys()):
            key = name.lower()
            if key in rules.drop or (key == "set-cookie" and not upstream.pass_cookies):
                del response.headers[name]
                continue
            if key in STRUCTURAL_HEADERS:
                continue
            values = response.headers.get_all(name)
            delegated = delegated_guard(flow)
            cleaned = [delegated.text(flow, guard.text(flow, value)) for value in values]
            if effect is not None:
                cleaned = [_masked_text(flow, value, effect) for value in cleaned]
            if cleaned != values:
                response.headers.set_all(name, cleaned)


STRUCTURAL_HEADERS = frozenset(
    {
        "content-type",
        "content-length",
        "content-encoding",
        "transfer-encoding",
        "connection",
        "date",
        "mcp-session-id",
        "mcp-protocol-version",
    }
)


class Guard:
    """Keeps the values the gateway injected out of what the client gets (an upstream that
    echoes its Authorization header would hand the caller the gateway's credential), in
    every form `InjectedForms` knows; a hit is replaced, counted and logged."""

    def __init__(self, forms: InjectedForms) -> None:
        self.forms = forms

    def value(self, flow: http.HTTPFlow, value: Any, tails: StreamTails | None = None) -> Any:
        """A parsed message (or list of them) with every injected value replaced; the very
        object when none is in it. `tails`: the message is the next of that stream."""
        if not self.forms:
            return value
        scrubbed, count = self.forms.scrub_value(value, tails)
        self._found(flow, count)
        return scrubbed

    def text(self, flow: http.HTTPFlow, text: str, tails: StreamTails | None = None) -> str:
        if not self.forms:
            return text
        scrubbed, count = self.forms.scrub_text(text, tails)
        self._found(flow, count)
        return scrubbed

    def _found(self, flow: http.HTTPFlow, count: int) -> None:
        if count:
            st = state(flow)
            st.reflected_secret += count
            logger.error(
                "holdgate: upstream %s sent back a credential the gateway injected; replaced",
                st.route.upstream.name if st.routed else "?",
            )


_NO_FORMS = InjectedForms(())


def delegated_guard(flow: http.HTTPFlow) -> Guard:
    """The guard of the token exchanged for this flow's caller (compiled with the token)."""
    delegation = state(flow).delegation
    forms = delegation.forms if delegation is not None else None
    return Guard(forms if forms is not None else _NO_FORMS)


def _masked_text(flow: http.HTTPFlow, value: str, effect: ProfilesInEffect) -> str:
    outcome = mask_text(value, effect)
    if not outcome.findings:
        return value
    state(flow).count_masked(outcome.findings)
    return outcome.value if isinstance(outcome.value, str) else ""


def _is_event_stream(response: http.Response) -> bool:
    ctype: str = response.headers.get("content-type", "")
    return ctype.split(";")[0].strip().lower() == ("text/event-stream")


class SSEPass:
    """The per-chunk stream callable: decode events, run the stages on each, re-encode."""

    def __init__(self, flow: http.HTTPFlow, streams: Responses, max_event: int) -> None:
        self.flow = flow
        self.streams = streams
        self.decoder = SSEDecoder(max_event_bytes=max_event)
        self.cut = False
        self.pending = list(state(flow).pending_errors)
        self.effect_checked = False
        self.effect: ProfilesInEffect | None = None
        self.tails = StreamTails()
        self.delegated_tails = StreamTails()

    def __call__(self, chunk: bytes) -> list[bytes]:
        """The bytes to send for one upstream chunk: none while an event is incomplete.

        Never an empty bytes: mitmproxy would write it as a zero-length chunk, which ends
        a chunked response for the client in the middle of the stream.
        """
        if self.cut:
            return []
        out = [self._encode_pending()] if self.pending else []
        try:
            try:
                events = self.decoder.feed(chunk) if chunk else self.decoder.close()
            except SSEError as exc:
                # The events completed before the fault are whole: they pass, then the cut.
                out.extend(self.process(event) for event in exc.events)
                raise
            out.extend(self.process(event) for event in events)
        except Exception as exc:  # noqa: BLE001 - a failing stream is cut, never passed raw
            out.append(self._cut(exc))
        data = b"".join(out)
        state(self.flow).keep_for_recording(data)
        return [data] if data else []

    def _encode_pending(self) -> bytes:
        data = b"".join(
            encode_event(SSEEvent(data=dumps(err).decode(), event="message"))
            for err in self.pending
        )
        self.pending.clear()
        return data

    def process(self, event: SSEEvent) -> bytes:
        if event.data is None:
            # Comments (keep-alives) and bare fields: the text they carry is not needed.
            return encode_event(
                SSEEvent(
                    data=None,
                    event=self.field(event.event),
                    id=self.field(event.id),
                    retry=event.retry,
                    comments=("",) * min(len(event.comments), 1),
                )
            )
        try:
            message: Any = loads_strict_text(event.data)
        except BodyError:
            message = event.data  # e.g. the legacy transport's `endpoint` event
            if event.event == "endpoint":
                # Answers to POSTs on that endpoint arrive on this stream: same session.
                found = parse_qs(urlsplit(event.data).query).get("session_id")
                if found:
                    state(self.flow).stream_session = found[0]
        result = self.streams.run_stages(self.flow, message, "sse", self.delegated_tails)
        event_id = self.field(event.id)
        if result is None:
            return encode_event(SSEEvent(data=None, event=None, id=event_id, comments=("dropped",)))
        guard = self.streams.guard(self.flow)
        if isinstance(result, str):
            data = guard.text(self.flow, result, self.tails)
        else:
            result = guard.value(self.flow, result, self.tails)
            if verbatim(event.data.encode("utf-8"), (message,), (result,)):
                data = event.data  # nothing changed: the upstream's own text goes out
            else:
                data = dumps(result).decode("utf-8")
        return encode_event(
            SSEEvent(data=data, event=self.field(event.event), id=event_id, retry=event.retry)
        )

    def field(self, value: str | None) -> str | None:
        """An `id:` or `event:` value as the client may see it: masked, no injected value."""
        if value is None:
            return None
        if not self.effect_checked:
            self.effect_checked = True
            st = state(self.flow)
            route = st.route
            groups = st.identity.groups if st.authenticated else ()
            self.effect = route.config.masking.profiles_for(route.upstream.name, None, groups)
        value = self.streams.guard(self.flow).text(self.flow, value)
        value = delegated_guard(self.flow).text(self.flow, value)
        return _masked_text(self.flow, value, self.effect) if self.effect else value

    def _cut(self, exc: BaseException) -> bytes:
        self.cut = True
        logger.error("holdgate: event stream cut (%s: %s)", type(exc).__name__, exc)
        state(self.flow).stream_cut = {"type": type(exc).__name__, "message": str(exc)[:200]}
        notice = error_object(
            None, INTERNAL_ERROR, f"the gateway cut this stream: {type(exc).__name__}"
        )
        asyncio.get_running_loop().call_soon(_kill, self.flow)
        return encode_event(SSEEvent(data=dumps(notice).decode("utf-8"), event="message"))


def _kill(flow: http.HTTPFlow) -> None:
    if flow.killable:
        flow.kill()
