"""Approvals in the store: a small state machine, and the rules for who may decide, once.

An approval is a series of `approvals` rows: `pending`, then one decision (approved,
denied, expired, cancelled); `refused_attempt` and `grant_used` are logged against it
without changing its state. Each change is one `BEGIN IMMEDIATE` transaction that reads
the latest state and appends, so of two racing deciders exactly one wins.

A person's decision (`decide`: CLI or approvals API) must also pass `decision_refusal`:
not after `expires`, never by the requester (separation of duties), and, unless the
decider is break-glass (`decider_groups=None`: the CLI's `--break-glass --as`), only by a
member of the approval's approver groups. A refused decision is recorded as a
`refused_attempt` and raised as a typed error.

A held approval names the replica whose connection holds the call. When that replica
stops heartbeating (`replica_records`), nobody can release the call any more: the others
close it as `expired` ("holder lost"), and a decision arriving first does the same and is
refused with `ApprovalExpired`. `notify` (PostgreSQL: NOTIFY) runs inside the transaction
that records a decision, so the holding replica wakes at its commit.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Literal, cast

from holdgate.store import replica_records
from holdgate.store.chain import append_rows, normalize_row
from holdgate.store.errors import (
    ApprovalExpired,
    ApprovalNotPending,
    ApprovalRefused,
    BadRow,
    NotAnApprover,
    SelfApproval,
    UnknownApproval,
)
from holdgate.store.rows import ApprovalRecord, ApprovalRow, Row, parse_iso
from holdgate.store.schema import APPROVAL_STATES, DECISIONS
from holdgate.store.sqlconn import SqlConnection, select, transaction

Decision = Literal["approved", "denied"]
# How a decision reached the store (`approvals.channel`, schema 8).
# (An approval waiting through URL-mode elicitation is decided through one of these too.)
Channel = Literal["api", "cli", "inbox", "mitmweb", "break-glass"]
CHANNELS: tuple[Channel, ...] = ("api", "cli", "inbox", "mitmweb", "break-glass")
# Called inside the transaction that changed an approval's state (its id).
Notify = Callable[[SqlConnection, str], None]

# Copied from the request into every later state row, so each row stands on its own.
_REQUEST_COLUMNS = (
    "requester",
    "upstream",
    "method",
    "tool",
    "args_masked",
    "args_digest",
    "request_digest",
    "rule",
    "approvers",
    "created",
    "expires",
    "changes",
    "flow_id",
    "via",
    "replica",
    "rule_lineage",
)


def approver_groups(row: Mapping[str, Any]) -> frozenset[str]:
    """The groups that may decide an approval row; none when the row's list is unreadable."""
    try:
        groups = json.loads(row.get("approvers") or "[]")
    except (TypeError, json.JSONDecodeError):
        return frozenset()
    if not isinstance(groups, list):
        return frozenset()
    return frozenset(g for g in groups if isinstance(g, str))


def latest(conn: SqlConnection, approval_id: str) -> ApprovalRecord | None:
    rows = select(conn, "SELECT * FROM v_approvals WHERE approval_id = ?", [approval_id])
    return cast(ApprovalRecord, rows[0]) if rows else None


def history(conn: SqlConnection, approval_id: str) -> list[ApprovalRow]:
    rows = select(conn, "SELECT * FROM approvals WHERE approval_id = ? ORDER BY seq", [approval_id])
    return cast(list[ApprovalRow], rows)


def listed(
    conn: SqlConnection,
    *,
    pending_only: bool,
    requester: str | None = None,
    newest: int | None = None,
) -> list[ApprovalRecord]:
    """Approvals' latest states, oldest first (see `Store.approvals`)."""
    terms: list[str] = []
    params: list[object] = []
    if pending_only:
        terms.append("state = 'pending'")
    if requester is not None:
        terms.append("requester = ?")
        params.append(requester)
    where = f"WHERE {' AND '.join(terms)} " if terms else ""
    if newest is None:
        rows = select(conn, f"SELECT * FROM v_approvals {where}ORDER BY seq", params)
    else:
        rows = select(
            conn, f"SELECT * FROM v_approvals {where}ORDER BY seq DESC LIMIT ?", [*params, newest]
        )
        rows.reverse()
    return cast(list[ApprovalRecord], rows)


def latest_of(conn: SqlConnection, approval_ids: Iterable[str]) -> dict[str, ApprovalRecord]:
    ids = list(approval_ids)
    if not ids:
        return {}
    marks = ", ".join("?" for _ in ids)
    rows = select(conn, f"SELECT * FROM v_approvals WHERE approval_id IN ({marks})", ids)
    return {row["approval_id"]: cast(ApprovalRecord, row) for row in rows}


def create(conn: SqlConnection, row: Row) -> int:
    """Record a new approval request (state `pending`); returns its seq."""
    normalized = normalize_row("approvals", {**row, "state": "pending"})
    with transaction(conn):
        return append_rows(conn, [("approvals", normalized)])[0]


def transition_refusal(
    current: ApprovalRecord | None, approval_id: str, state: str
) -> ApprovalRefused | None:
    """Whether the state machine allows `state` next: decisions need a pending approval,
    `grant_used` an approved one; `refused_attempt` is logged against any."""
    if current is None:
        return UnknownApproval(f"no approval {approval_id}", approval_id)
    if (state in DECISIONS and current["state"] != "pending") or (
        state in ("grant_used", "redeemed") and current["state"] != "approved"
    ):
        by = f" (by {current['decider']})" if current.get("decider") else ""
        return ApprovalNotPending(
            f"approval {approval_id} is {current['state']}{by}", approval_id, current
        )
    return None


def decision_refusal(
    current: ApprovalRecord | None,
    approval_id: str,
    decision: Decision,
    decider: str,
    decider_groups: Iterable[str] | None,
    now: float,
) -> ApprovalRefused | None:
    """The rules for a person's decision: the state machine, then expiry, separation of
    duties and approver groups (`decider_groups=None`: break-glass)."""
    problem = transition_refusal(current, approval_id, decision)
    if problem is not None or current is None:
        return problem
    expires = current.get("expires")
    if expires and now >= parse_iso(expires):
        return ApprovalExpired(
            f"approval {approval_id} expired at {expires}; the decision came too late",
            approval_id,
            current,
        )
    if decider == current.get("requester"):
        return SelfApproval(
            f"{decider} requested this call and cannot decide it (separation of duties)",
            approval_id,
            current,
        )
    if decider_groups is not None and not set(decider_groups) & approver_groups(current):
        return NotAnApprover(
            f"{decider} is not in the approver groups {current.get('approvers')}",
            approval_id,
            current,
        )
    return None


def _state_row(
    current: ApprovalRecord,
    state: str,
    decider: str | None,
    reason: str | None,
    channel: Channel | None = None,
    decided_as: str | None = None,
) -> Row:
    row: Row = {k: current.get(k) for k in _REQUEST_COLUMNS}
    row.update(
        approval_id=current["approval_id"],
        state=state,
        decider=decider,
        reason=reason,
        channel=channel,
        decided_as=decided_as,
    )
    return normalize_row("approvals", row)


def decided_as_json(
    current: ApprovalRecord | None,
    decider: str,
    groups: tuple[str, ...] | None,
    identity: Mapping[str, Any] | None,
) -> str:
    """`approvals.decided_as`: the decider as authenticated (`identity`: how, e.g.
    `{"via": "jwt", "issuer": …}` or `{"via": "api_key", "key": …}`), the groups seen, and
    the approver group that qualified them (none for break-glass, or when none did)."""
    approvers = approver_groups(current) if current is not None else frozenset()
    qualifying = sorted(set(groups or ()) & approvers)
    return json.dumps(
        {
            **(identity or {}),
            "user": decider,
            "groups": None if groups is None else sorted(groups),
            "qualified_by": qualifying[0] if qualifying else None,
        },
        sort_keys=True,
    )


def append_state(
    conn: SqlConnection,
    approval_id: str,
    state: str,
    decider: str | None,
    reason: str | None,
    notify: Notify | None = None,
) -> bool:
    """Record a state the gateway itself observed; False when the state machine refuses."""
    if state not in APPROVAL_STATES or state == "pending":
        raise BadRow(f"not an approval state change: {state!r}")
    with transaction(conn):
        current = latest(conn, approval_id)
        if current is None or transition_refusal(current, approval_id, state) is not None:
            return False
        append_rows(conn, [("approvals", _state_row(current, state, decider, reason))])
        if notify is not None:
            notify(conn, approval_id)
        return True


def decide(
    conn: SqlConnection,
    approval_id: str,
    decision: Decision,
    decider: str,
    decider_groups: Iterable[str] | None,
    reason: str | None,
    now: float,
    db_now: float | None = None,
    notify: Notify | None = None,
    channel: Channel = "api",
    identity: Mapping[str, Any] | None = None,
) -> ApprovalRecord:
    """A person's decision: recorded and returned, or recorded as refused and raised. With
    `db_now` (the database clock) a held approval whose holder's lease lapsed is closed as
    expired instead: nobody could release the call. The row (a refused attempt's too)
    names the `channel` and the decider as authenticated (`decided_as_json`)."""
    if decision not in ("approved", "denied"):
        raise BadRow(f"not a decision: {decision!r}")
    if channel not in CHANNELS:
        raise BadRow(f"not a decision channel: {channel!r}")
    groups = None if decider_groups is None else tuple(decider_groups)
    with transaction(conn):
        current = latest(conn, approval_id)
        lost = _lost_holder(conn, current, db_now)
        if current is not None and lost is not None:
            append_rows(conn, [("approvals", _state_row(current, "expired", None, lost))])
            problem: ApprovalRefused | None = ApprovalExpired(
                f"approval {approval_id} expired: {lost}, so nobody holds the call any more "
                "(its client's connection went with that replica)",
                approval_id,
                current,
            )
        else:
            problem = decision_refusal(current, approval_id, decision, decider, groups, now)
            if current is not None:
                state, why = (
                    (decision, reason)
                    if problem is None
                    else ("refused_attempt", f"{decision} refused: {problem}")
                )
                who = decided_as_json(current, decider, groups, identity)
                append_rows(
                    conn,
                    [("approvals", _state_row(current, state, decider, why, channel, who))],
                )
                if problem is None and notify is not None:
                    notify(conn, approval_id)
        decided = latest(conn, approval_id)
    if problem is not None:
        raise problem
    return cast(ApprovalRecord, decided)


def expire_pending(conn: SqlConnection, reason: str) -> int:
    """Close every pending approval whose call a connection held as `expired` (at gateway
    start: that connection is gone); returns how many. An approval given through
    elicitation holds nothing, so it outlives a restart until it expires."""
    with transaction(conn):
        rows = [
            ("approvals", _state_row(current, "expired", None, reason))
            for current in listed(conn, pending_only=True)
            if current.get("via") != "elicitation"
        ]
        append_rows(conn, rows)
        return len(rows)


def _held(current: ApprovalRecord) -> bool:
    """A call held open on a replica's connection (`via` NULL in older rows: held)."""
    return current.get("via") in (None, "hold")


def _lost_holder(
    conn: SqlConnection, current: ApprovalRecord | None, db_now: float | None
) -> str | None:
    """The holder-lost reason when `current` is a pending hold whose replica is not alive."""
    if db_now is None or current is None or current["state"] != "pending" or not _held(current):
        return None
    replica = current.get("replica")
    if replica is None or not replica_records.lapsed(conn, [replica], db_now):
        return None
    return replica_records.holder_lost(replica)


def expire_own(conn: SqlConnection, replica: str, reason: str) -> int:
    """At a replica's start: close its previous instance's pending holds (that connection
    is gone) and those of rows naming no replica (older gateways); returns how many.
    Other replicas' holds and elicitation approvals are left alone."""
    with transaction(conn):
        rows = [
            ("approvals", _state_row(current, "expired", None, reason))
            for current in listed(conn, pending_only=True)
            if _held(current) and current.get("replica") in (None, replica)
        ]
        append_rows(conn, rows)
        return len(rows)


def expire_lost(conn: SqlConnection, db_now: float) -> int:
    """Close the pending holds whose replica stopped heartbeating (by the database clock)
    as expired, "holder lost"; returns how many."""
    with transaction(conn):
        held = [
            c for c in listed(conn, pending_only=True) if _held(c) and c.get("replica") is not None
        ]
        gone = replica_records.lapsed(conn, [str(c["replica"]) for c in held], db_now)
        rows = [
            (
                "approvals",
                _state_row(c, "expired", None, replica_records.holder_lost(str(c["replica"]))),
            )
            for c in held
            if c["replica"] in gone
        ]
        append_rows(conn, rows)
        return len(rows)


def expire_overdue(conn: SqlConnection, now: float, reason: str) -> int:
    """Close pending elicitation approvals past their `expires` (no hold watches them)."""
    with transaction(conn):
        rows = [
            ("approvals", _state_row(current, "expired", None, reason))
            for current in listed(conn, pending_only=True)
            if current.get("via") == "elicitation"
            and current.get("expires")
            and now >= parse_iso(str(current["expires"]))
        ]
        append_rows(conn, rows)
        return len(rows)


def redeem(conn: SqlConnection, approval_id: str, requester: str, detail: str) -> bool:
    """Spend an approved elicitation approval on its one call: False when it is not
    approved, not the requester's, or already spent (a replayed retry)."""
    with transaction(conn):
        current = latest(conn, approval_id)
        if (
            current is None
            or current["state"] != "approved"
            or current.get("requester") != requester
        ):
            return False
        spent = conn.execute(
            "SELECT 1 FROM approvals WHERE approval_id = ? AND state = 'redeemed' LIMIT 1",
            [approval_id],
        ).fetchone()
        if spent is not None:
            return False
        append_rows(conn, [("approvals", _state_row(current, "redeemed", requester, detail))])
        return True
