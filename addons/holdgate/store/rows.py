"""The shapes of what the store gives back, and its one time format.

Results are TypedDicts rather than classes: they stay plain JSON-like dicts (the approvals
API sends them as they are; export writes them out), while type checkers know their keys.
"""

from __future__ import annotations

import json
import math
import time
from datetime import UTC, datetime
from typing import Any, Required, TypedDict

Row = dict[str, Any]  # a row to write: column -> value, checked by `normalize_row`


class EventRow(TypedDict, total=False):
    """One `events` row: a JSON-RPC message in either direction. JSON-valued columns
    (groups, args_masked, masked, extra) are JSON text."""

    seq: Required[int]
    ts: Required[str]
    flow_id: str | None
    session_id: str | None
    direction: str | None
    user: str | None
    groups: str | None
    auth_method: str | None
    upstream: str | None
    method: str | None
    target: str | None
    jsonrpc_id: str | None
    args_digest: str | None
    args_masked: str | None
    decision: str | None
    rule: str | None
    reason: str | None
    approval_id: str | None
    status: int | None
    latency_ms: float | None
    masked: str | None
    config_hash: str | None
    client_addr: str | None
    extra: str | None
    traceparent: str | None  # the request's W3C trace context, when a valid one was sent
    prev_hash: str
    row_hash: str


class SessionSummary(TypedDict):
    """One session (the `v_sessions` view): who, where, when, how much was refused. `kind`:
    "mcp" for a protocol session id, "grouped" for activity without one that Holdgate
    grouped, "overflow" for the one a caller's further clients share once it has its cap of
    grouped sessions open; `client` is what the (first) client reported about itself."""

    session_id: str
    user: str | None
    upstream: str | None
    client_addr: str | None
    protocol_version: str | None
    first_seen: str | None
    last_seen: str | None
    events: int
    denials: int
    client: str | None
    kind: str


class ApprovalRow(TypedDict, total=False):
    """One `approvals` row: a state an approval entered (rows are never updated)."""

    seq: Required[int]
    ts: Required[str]
    approval_id: Required[str]
    state: Required[str]
    requester: str | None
    upstream: str | None
    method: str | None
    tool: str | None
    args_masked: str | None
    args_digest: str | None
    request_digest: str | None
    rule: str | None
    approvers: str | None
    decider: str | None
    reason: str | None
    created: str | None
    expires: str | None
    changes: str | None
    flow_id: str | None
    via: str | None
    replica: str | None
    rule_lineage: str | None
    channel: str | None
    decided_as: str | None
    prev_hash: str
    row_hash: str


class ApprovalRecord(TypedDict, total=False):
    """An approval's latest state (the `v_approvals` view); `history` (every row, oldest
    first) only where one approval is asked for."""

    seq: Required[int]
    approval_id: Required[str]
    state: Required[str]
    requester: str | None
    upstream: str | None
    method: str | None
    tool: str | None
    rule: str | None
    approvers: str | None  # JSON list of group names
    decider: str | None
    reason: str | None
    created: str | None
    expires: str | None
    decided: str | None
    args_masked: str | None
    args_digest: str | None
    request_digest: str | None
    changes: str | None
    flow_id: str | None
    via: str | None  # "elicitation", or held ("hold" or NULL in rows before schema v3)
    replica: str | None  # the replica holding a held call (NULL before schema v4)
    rule_lineage: str | None  # of the rule that asked (`rules.rule_lineage`; NULL before v6)
    channel: str | None  # how the decision was made (api, cli, inbox, …; NULL before v8)
    decided_as: str | None  # JSON: the decider as authenticated (NULL before v8)
    history: list[ApprovalRow]


class RecordingRow(TypedDict):
    """One `recordings` row: a flow file a replica closed whole."""

    seq: int
    ts: str
    replica: str | None
    session_id: str
    file: str
    flows: int
    bytes: int
    sha256: str
    prev_hash: str
    row_hash: str


class ToolPinRow(TypedDict, total=False):
    """One `tool_pins` row (folded by `policy.tool_pins.PinBook`)."""

    seq: Required[int]
    ts: Required[str]
    upstream: Required[str]
    tool: Required[str]
    definition_digest: str | None
    definition: str | None
    event: Required[str]
    actor: str | None
    detail: str | None
    prev_hash: str
    row_hash: str


_last_second: tuple[int, str] = (0, "1970-01-01T00:00:00")


def iso(timestamp: float | None = None) -> str:
    """ISO-8601 UTC with milliseconds, e.g. 2025-01-31T12:00:00.000Z (the store's time format).

    Every row takes one, so the formatted second is reused until the clock moves on.
    """
    global _last_second
    fraction, whole = math.modf(time.time() if timestamp is None else timestamp)
    second, micros = int(whole), round(fraction * 1_000_000)  # as datetime rounds
    if micros >= 1_000_000:
        second, micros = second + 1, micros - 1_000_000
    cached, text = _last_second
    if cached != second:
        text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        _last_second = (second, text)
    return f"{text}.{micros // 1000:03d}Z"


def parse_iso(text: str) -> float:
    """The timestamp of an ISO time (`Z` or an offset; naive times are taken as UTC)."""
    moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


class ReplicaRecord(TypedDict):
    """One gateway process sharing the store (the `replicas` table), judged by the
    database clock: `alive` while its heartbeat is within the lease; `age` is seconds since
    that heartbeat (None once it marked itself gone at shutdown)."""

    replica: str
    instance: str
    host: str | None
    pid: int | None
    listen: str | None
    started: str | None
    heartbeat: float
    config_hash: str | None
    version: str | None
    alive: bool
    gone: bool
    age: float | None


def json_or(text: Any, default: Any = None) -> Any:
    """A column's JSON text parsed, or `default` when it holds none (NULL, empty, not
    text, or text that is not JSON: a row written by hand or changed since)."""
    if not isinstance(text, str):
        return default
    try:
        return json.loads(text)
    except ValueError:
        return default
