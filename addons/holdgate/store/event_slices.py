"""A stream's notifications recorded as one `events` row per time slice, and read back.

An SSE stream of many notifications (progress, log messages) would cost one audit row per
event, and building, scrubbing, normalizing and hashing a row is most of what an event costs.
The Recorder gathers a stream's notifications (messages without a JSON-RPC id) into a slice,
written as ONE row when it spans `SLICE_SECONDS`, holds `SLICE_EVENTS` events or
`SLICE_BYTES` of recorded text (whichever first), and whenever the stream has anything else
to record: a message with an id, a dropped message, its end, a cut, a kill, shutdown. So a
hostile upstream streaming as fast as it can holds at most one bounded slice per stream.

The batch row: `direction` "server_notification", `method` the events' common method (else
"notifications"), `masked` the counts summed, `args_masked` a JSON array of the events'
messages as recorded (masked, injected values scrubbed), and `extra.events` one entry per
event in the same order: `n` (its number among the stream's messages, from 1), `t` (ms
after the row's `ts`), `method`, `progress_token` (a string's first 200 characters),
`masked` (its counts) and whatever else its own row's `extra` would have said. It is hashed
into the chain like any other row, so a change to any event in it fails `holdgate verify`.
Rows of one message carry `extra.n` too.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from holdgate.store.rows import Row, json_or

SLICE_SECONDS = 0.25
SLICE_EVENTS = 500
SLICE_BYTES = 512 * 1024
TOKEN_CHARS = 200  # of a progress token, in its event's entry (the message has it whole)


@dataclass
class EventSlice:
    """The notifications of one stream gathered since its last row (pure: no clock, no I/O)."""

    base: Row  # the flow's fields (ts: the first event's time)
    started: float  # the first event's monotonic time, in seconds
    texts: list[str] = field(default_factory=list)
    entries: list[dict[str, Any]] = field(default_factory=list)
    findings: dict[str, int] = field(default_factory=dict)
    size: int = 0

    def add(
        self,
        n: int,
        now: float,
        method: str,
        stored: Any,
        text: str,
        findings: Mapping[str, int],
        details: Mapping[str, Any],
    ) -> bool:
        """Gather one event (`stored`: its message as recorded, masked; `text`: that as one
        JSON value); True when the slice is full and must be written now. Its bytes count
        what the row will hold of it, so a hostile upstream cannot grow a slice unbounded."""
        entry: dict[str, Any] = {"n": n, "t": round((now - self.started) * 1000, 1)}
        entry["method"] = method
        params = stored.get("params") if isinstance(stored, dict) else None
        token = params.get("progressToken") if isinstance(params, dict) else None
        if isinstance(token, str | int) and not isinstance(token, bool):
            entry["progress_token"] = token if isinstance(token, int) else token[:TOKEN_CHARS]
        if findings:
            entry["masked"] = dict(findings)
            for name, count in findings.items():
                self.findings[name] = self.findings.get(name, 0) + count
        entry.update(details)
        self.entries.append(entry)
        self.texts.append(text)
        self.size += len(text) + len(method)
        return len(self.entries) >= SLICE_EVENTS or self.size >= SLICE_BYTES

    def row(self, transport: str) -> Row:
        """The one row the slice is written as."""
        methods = {entry["method"] for entry in self.entries}
        common = methods.pop() if len(methods) == 1 else None
        row = dict(self.base)
        row.update(
            direction="server_notification",
            method=common if isinstance(common, str) else "notifications",
            decision="pass",
            masked=json.dumps(self.findings) if self.findings else None,
            extra=json.dumps({"transport": transport, "events": self.entries}),
            args_masked="[" + ",".join(self.texts) + "]",
        )
        return row


@dataclass(frozen=True)
class RecordedMessage:
    """One message as an events row records it: the row's own, or one event of a batch."""

    seq: int  # the row's
    ts: str  # the row's; an event of a batch was `offset_ms` later
    offset_ms: float | None
    n: int | None  # its number among its stream's messages (None: not on a stream)
    flow_id: str | None
    direction: str | None
    method: str | None
    masked: dict[str, int]
    message: Any  # as recorded: masked, injected values scrubbed (text when it was cut)
    details: dict[str, Any]  # the rest of its `extra`


def recorded_messages(row: Mapping[str, Any]) -> list[RecordedMessage]:
    """The messages an events row records: each event of a batch row, else the row itself.
    Raises ValueError for a batch row whose messages and events do not pair up (changed
    since it was written: `holdgate verify` says where)."""
    extra = json_or(row.get("extra"), {})
    events = extra.pop("events", None) if isinstance(extra, dict) else None
    common = {"seq": row["seq"], "ts": row["ts"], "flow_id": row.get("flow_id")}
    if not isinstance(events, list):
        details = extra if isinstance(extra, dict) else {}
        return [
            RecordedMessage(
                **common,
                offset_ms=None,
                n=details.pop("n", None),
                direction=row.get("direction"),
                method=row.get("method"),
                masked=json_or(row.get("masked"), {}),
                message=json_or(row.get("args_masked"), row.get("args_masked")),
                details=details,
            )
        ]
    messages = json_or(row.get("args_masked"), None)
    if not isinstance(messages, list) or len(messages) != len(events):
        raise ValueError(
            f"events row #{row['seq']}: its {len(events)} events and their messages do not "
            "pair up (the row was changed after it was written); run `holdgate verify`"
        )
    out = []
    for entry, message in zip(events, messages, strict=True):
        details = {k: v for k, v in entry.items() if k not in ("n", "t", "method", "masked")}
        out.append(
            RecordedMessage(
                **common,
                offset_ms=entry.get("t"),
                n=entry.get("n"),
                direction=row.get("direction"),
                method=entry.get("method"),
                masked=entry.get("masked") or {},
                message=message,
                details=details,
            )
        )
    return out


def find_message(
    rows: Iterable[Mapping[str, Any]], n: int, flow_id: str | None = None
) -> list[RecordedMessage]:
    """The recorded messages numbered `n` in their stream (of `flow_id`'s stream only)."""
    return [
        message
        for row in rows
        if flow_id is None or row.get("flow_id") == flow_id
        for message in recorded_messages(row)
        if message.n == n
    ]
