"""Evidence for MCP without sessions: who the client says it is, its trace context, and
reviewable sessions grouped from activity that carries no session id.

MCP 2026-07-28 has no `Mcp-Session-Id` (and 2025 clients of stateless servers get none), so
Holdgate groups such activity itself: per (user, upstream, client, client address host),
split after `IDLE_SPLIT` seconds idle. The client comes from
`_meta["io.modelcontextprotocol/clientInfo"]`, which the client reports about itself: it
groups evidence for a reviewer and is never a security decision. Since a caller may name
a new client on every request, the sessions one (user, upstream) has open (active within
`IDLE_SPLIT`) are capped; past the cap its new clients share one overflow session. Everything
read here is hostile input: bounded, stripped of control characters, validated.
"""

from __future__ import annotations

import re
import unicodedata
import uuid
from collections import OrderedDict
from typing import Any, NamedTuple

from holdgate.protocol.jsonrpc import PROTOCOL_VERSION_META

CLIENT_INFO_META = "io.modelcontextprotocol/clientInfo"
TRACEPARENT_META = "traceparent"

IDLE_SPLIT = 30 * 60  # seconds idle after which the same key starts a new session
GROUPED_KEYS = 100_000  # keys remembered; the least recently active one goes first
GROUPED_PER_CALLER = 16  # open grouped sessions per (user, upstream) before the overflow one
CLIENT_CHARS = 120  # the longest client string kept
_PART_CHARS = 64  # of a clientInfo name or version
UNKNOWN_CLIENT = "unknown client"

_TRACEPARENT = re.compile(r"[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}")
_ZERO_TRACE = "0" * 32
_ZERO_SPAN = "0" * 16


def _meta(message: Any) -> dict[str, Any]:
    """A request's `params._meta`, or {} when any part of it is not an object."""
    params = message.get("params") if isinstance(message, dict) else None
    meta = params.get("_meta") if isinstance(params, dict) else None
    return meta if isinstance(meta, dict) else {}


def clean_text(value: str, limit: int) -> str:
    """`value` without control or format characters (no forged lines, no bidi tricks),
    whitespace collapsed, cut to `limit` characters."""
    kept = "".join(
        " " if ch.isspace() else ch
        for ch in value[: limit * 4]  # never walk a huge string whole
        if ch.isspace() or unicodedata.category(ch)[0] != "C"
    )
    text = " ".join(kept.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def describe_client(info: Any) -> str | None:
    """A clientInfo object (`{name, version}`) as a short "name/version", or None."""
    if not isinstance(info, dict):
        return None
    name, version = info.get("name"), info.get("version")
    name = clean_text(name, _PART_CHARS) if isinstance(name, str) else ""
    version = clean_text(version, _PART_CHARS) if isinstance(version, str) else ""
    if not name:
        return None
    return clean_text(f"{name}/{version}" if version else name, CLIENT_CHARS)


def client_of(message: Any) -> str | None:
    """The client a request reports in `_meta["io.modelcontextprotocol/clientInfo"]`."""
    return describe_client(_meta(message).get(CLIENT_INFO_META))


def protocol_version_of(message: Any) -> str | None:
    """The revision a request names in `_meta["io.modelcontextprotocol/protocolVersion"]`."""
    version = _meta(message).get(PROTOCOL_VERSION_META)
    return (clean_text(version, 32) or None) if isinstance(version, str) else None


def _valid_traceparent(value: Any) -> bool:
    if not isinstance(value, str) or not _TRACEPARENT.fullmatch(value):
        return False
    version, trace, span, _ = value.split("-")
    return version != "ff" and trace != _ZERO_TRACE and span != _ZERO_SPAN


def traceparent_of(message: Any) -> str | None:
    """`_meta["traceparent"]` when it is a valid W3C traceparent; None otherwise (an invalid
    one is never recorded as if it were valid: `invalid_traceparent` flags it)."""
    value = _meta(message).get(TRACEPARENT_META)
    return value if _valid_traceparent(value) else None


def invalid_traceparent(message: Any) -> bool:
    """A `_meta["traceparent"]` was sent but is not a valid one (forged or broken)."""
    meta = _meta(message)
    return TRACEPARENT_META in meta and not _valid_traceparent(meta[TRACEPARENT_META])


class GroupKey(NamedTuple):
    """What activity without a session id is grouped by (the client is self-reported)."""

    user: str
    upstream: str
    client: str
    host: str


def group_key(
    user: str, upstream: str, client: str | None, user_agent: str | None, host: str | None
) -> GroupKey:
    """The key of a request: its clientInfo client, else its User-Agent, else "unknown"."""
    shown = client or (clean_text(user_agent, CLIENT_CHARS) if user_agent else "")
    return GroupKey(user, upstream, shown or UNKNOWN_CLIENT, host or "")


# Grouped session ids are the gateway's own namespace: no client or upstream may use one.
GROUPED_PREFIX = "hg-"


def new_session_id() -> str:
    """A grouped session's id: random, `hg-` and hex only (it names recording files, so it
    never holds `+` or a path character), never sent to the client."""
    return GROUPED_PREFIX + uuid.uuid4().hex[:20]


def is_grouped_id(session: str) -> bool:
    """An id in the gateway's namespace (a client sending one is forging a session)."""
    return session.startswith(GROUPED_PREFIX)


class Grouped(NamedTuple):
    """The grouped session a request belongs to."""

    session: str
    is_new: bool  # first seen now: it gets its `sessions` row
    overflow: bool  # the caller's overflow session (its own sessions were at the cap)


Caller = tuple[str, str]  # (user, upstream)


class SessionGrouper:
    """Groups activity without a session id into sessions; bounded (least recently active
    key evicted first), and at most `per_caller` open sessions of a caller's own (active
    within `idle_split`) before its further clients share one overflow session. Clients in
    the overflow session are not remembered one by one, so a flood of made-up client names
    costs one entry per caller. `now` is passed in (seconds), so tests need no clock."""

    def __init__(self, limit: int = GROUPED_KEYS, idle_split: float = IDLE_SPLIT) -> None:
        self.limit = limit
        self.idle_split = idle_split
        self._open: OrderedDict[GroupKey, tuple[str, float]] = OrderedDict()
        # per caller, its keys with a session of their own, least recently active first
        self._own: dict[Caller, OrderedDict[GroupKey, float]] = {}
        self._overflow: OrderedDict[Caller, tuple[str, float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._open)

    def resolve(self, key: GroupKey, now: float, per_caller: int = GROUPED_PER_CALLER) -> Grouped:
        """The key's session; a new one when it has none or it has been idle for
        `idle_split` seconds or more; the caller's overflow session instead of a new one
        when the caller already has `per_caller` open sessions of its own."""
        caller = (key.user, key.upstream)
        found = self._open.pop(key, None)
        own = self._own.setdefault(caller, OrderedDict())
        own.pop(key, None)
        if found is not None and now - found[1] < self.idle_split:
            session, is_new, last = found[0], False, max(now, found[1])
        elif self._open_count(caller, now) < per_caller:
            session, is_new, last = new_session_id(), True, now
        else:
            if not own:
                del self._own[caller]
            return self._join_overflow(caller, now)
        self._open[key] = (session, last)  # re-inserted: now the most recently active
        own[key] = last
        while len(self._open) > self.limit:
            self._forget(self._open.popitem(last=False)[0])
        return Grouped(session, is_new, False)

    def _open_count(self, caller: Caller, now: float) -> int:
        """The caller's open sessions of its own, forgetting those idle too long."""
        own = self._own.get(caller)
        while own and now - next(iter(own.values())) >= self.idle_split:
            stale, _ = own.popitem(last=False)
            self._open.pop(stale, None)
        return len(own) if own else 0

    def _join_overflow(self, caller: Caller, now: float) -> Grouped:
        current = self._overflow.pop(caller, None)
        if current is not None and now - current[1] < self.idle_split:
            grouped = Grouped(current[0], False, True)
            last = max(now, current[1])
        else:
            grouped, last = Grouped(new_session_id(), True, True), now
        self._overflow[caller] = (grouped.session, last)
        while len(self._overflow) > self.limit:
            self._overflow.popitem(last=False)
        return grouped

    def _forget(self, key: GroupKey) -> None:
        caller = (key.user, key.upstream)
        own = self._own.get(caller)
        if own is not None:
            own.pop(key, None)
            if not own:
                del self._own[caller]
