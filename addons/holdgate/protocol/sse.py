"""Incremental Server-Sent Events codec for passing MCP event streams through event by event.

mitmproxy hands a stream callable arbitrary network chunks, which split events, lines, CRLF
pairs and multi-byte UTF-8 characters at any byte. `SSEDecoder` holds only the incomplete line
and event, so the gateway can inspect and re-emit each event as soon as its blank line arrives,
with memory bounded per event. Parsing follows the WHATWG EventSource rules; the deviations a
proxy needs are listed on `SSEDecoder`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_BOM = b"\xef\xbb\xbf"
_LINE_END = re.compile(rb"\r\n|\r|\n")
# Longer retry values are ignored: no sane delay needs them, and it keeps int() cheap.
_MAX_RETRY_DIGITS = 18


@dataclass(frozen=True, slots=True)
class SSEEvent:
    """One event, keeping every field that matters to the client so it can be re-emitted."""

    data: str | None
    event: str | None = None
    id: str | None = None
    retry: int | None = None
    comments: tuple[str, ...] = ()


_NOTHING = SSEEvent(data=None)


class SSEError(ValueError):
    """The stream cannot be passed on safely and must be cut.

    `events` holds the events the failing chunk completed before the fault, so the caller
    can still forward them before cutting.
    """

    events: tuple[SSEEvent, ...] = ()


class SSEDecodeError(SSEError):
    """A line is not valid UTF-8, so the gateway cannot see what the client would see."""


class SSEEventTooLarge(SSEError):
    """One event grew past the configured limit; the stream must be cut."""


class SSEDecoder:
    """Feed network chunks in, get back the events each chunk completes.

    Deviations from a browser, needed to re-emit the stream faithfully:
    - an event without data (only comments, event, id or retry) is still returned, because
      id and retry change the client's state even though a browser dispatches nothing;
    - a comment drops one leading space, like a field value, so `encode_event` round-trips it;
    - invalid UTF-8 raises `SSEDecodeError` instead of being replaced, so what the gateway
      inspects is exactly what the client decodes;
    - a retry value longer than 18 digits is ignored like any invalid one.

    An event's size is its wire size (each line plus one byte for its terminator) plus the
    pending incomplete line; past `max_event_bytes` the decoder raises `SSEEventTooLarge`.
    After any error it drops its buffers and every later `feed` raises again (fail closed).
    """

    _size: int
    _data: list[str]
    _event: str | None
    _id: str | None
    _retry: int | None
    _comments: list[str]

    def __init__(self, max_event_bytes: int = 1_048_576) -> None:
        if max_event_bytes < 1:
            raise ValueError("max_event_bytes must be positive")
        self._max = max_event_bytes
        self._head: bytes | None = b""  # first bytes, held until known not to be a BOM
        self._after_cr = False  # the last chunk ended in CR, so a leading LF completes a CRLF
        self._line = bytearray()
        self._failure: SSEError | None = None
        self._reset_event()

    @property
    def buffered_bytes(self) -> int:
        """Bytes held for the incomplete event, to check that memory stays bounded."""
        return len(self._head or b"") + len(self._line) + self._size

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        """Consume one chunk; only its own bytes are scanned, so a stream costs O(n) overall."""
        if self._failure is not None:
            raise type(self._failure)(*self._failure.args)
        if self._head is not None:
            self._head += chunk
            if len(self._head) < len(_BOM) and _BOM.startswith(self._head):
                return []
            chunk, self._head = self._head.removeprefix(_BOM), None
        events: list[SSEEvent] = []
        try:
            self._scan(chunk, events)
        except SSEError as exc:
            exc.events = tuple(events)
            self._failure = exc
            self._line.clear()
            self._reset_event()
            raise
        return events

    def close(self) -> list[SSEEvent]:
        """End of stream: always returns [].

        Every terminated event was already returned by `feed`; per spec an unterminated final
        event is discarded, not dispatched, so a client would never have seen it either.
        """
        self._head = None
        self._line.clear()
        self._reset_event()
        return []

    def _scan(self, chunk: bytes, events: list[SSEEvent]) -> None:
        if not chunk:
            return
        start = 1 if self._after_cr and chunk[0] == 0x0A else 0
        for match in _LINE_END.finditer(chunk, start):
            self._end_line(chunk, start, match.start(), events)
            start = match.end()
        self._after_cr = chunk.endswith(b"\r")
        if start < len(chunk):
            if len(self._line) + len(chunk) - start + self._size > self._max:
                raise SSEEventTooLarge(f"SSE event exceeds {self._max} bytes")
            self._line += chunk[start:]

    def _end_line(self, chunk: bytes, start: int, end: int, events: list[SSEEvent]) -> None:
        length = len(self._line) + end - start
        if length == 0:
            event = self._take_event()
            if event != _NOTHING:
                events.append(event)
            return
        self._size += length + 1
        if self._size > self._max:
            raise SSEEventTooLarge(f"SSE event exceeds {self._max} bytes")
        raw = bytes(self._line) + chunk[start:end] if self._line else chunk[start:end]
        self._line.clear()
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise SSEDecodeError(f"SSE stream is not valid UTF-8: {exc.reason}") from exc
        self._field(line)

    def _field(self, line: str) -> None:
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        match name:
            case "":
                self._comments.append(value)
            case "data":
                self._data.append(value)
            case "event":
                self._event = value
            case "id" if "\0" not in value:
                self._id = value
            case "retry" if _valid_retry(value):
                self._retry = int(value)

    def _take_event(self) -> SSEEvent:
        event = SSEEvent(
            data="\n".join(self._data) if self._data else None,
            event=self._event,
            id=self._id,
            retry=self._retry,
            comments=tuple(self._comments),
        )
        self._reset_event()
        return event

    def _reset_event(self) -> None:
        self._size = 0
        self._data = []
        self._event = None
        self._id = None
        self._retry = None
        self._comments = []


def _valid_retry(value: str) -> bool:
    return value.isascii() and value.isdigit() and len(value) <= _MAX_RETRY_DIGITS


def _one_line(value: str, what: str) -> str:
    if "\r" in value or "\n" in value:
        raise ValueError(f"SSE {what} cannot contain CR or LF")
    return value


def encode_event(event: SSEEvent) -> bytes:
    """Serialise in canonical LF form.

    Raises ValueError for values the wire cannot carry (line breaks outside data, CR in
    data, NUL in id, out-of-range retry) rather than let them split or drop fields.
    """
    lines = [f": {_one_line(comment, 'comment')}" for comment in event.comments]
    if event.event is not None:
        lines.append(f"event: {_one_line(event.event, 'event')}")
    if event.id is not None:
        if "\0" in event.id:
            raise ValueError("SSE id cannot contain NUL")
        lines.append(f"id: {_one_line(event.id, 'id')}")
    if event.retry is not None:
        if not _valid_retry(str(event.retry)):
            raise ValueError(f"SSE retry must be 0 to {_MAX_RETRY_DIGITS} digits")
        lines.append(f"retry: {event.retry}")
    if event.data is not None:
        if "\r" in event.data:
            raise ValueError("SSE data cannot contain CR")
        lines.extend(f"data: {part}" for part in event.data.split("\n"))
    return "".join(f"{line}\n" for line in lines).encode() + b"\n"


def encode_comment(text: str) -> bytes:
    """A lone comment line (e.g. a keepalive); emit it only between events."""
    return f": {_one_line(text, 'comment')}\n".encode()
