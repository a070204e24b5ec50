"""`holdgate approvals …`: the approval queue, decided from any process on the host.

Decisions go through the store (one BEGIN IMMEDIATE transaction each), so two deciders
racing yield exactly one decision; the gateway notices within a fraction of a second.
"""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from typing import Any

import click

from holdgate import store
from holdgate.cli.records_cli import CheckFailed, db_option, read


def _expired(row: dict[str, Any]) -> bool:
    expires = row.get("expires")
    if not expires:
        return False
    moment = datetime.fromisoformat(expires.replace("Z", "+00:00"))
    return datetime.now(UTC) >= moment


def _line(row: dict[str, Any]) -> str:
    return (
        f"{row['approval_id']}  {row['state']:<9} {row['requester']} -> "
        f"{row['upstream']}/{row.get('tool') or row.get('method')}  rule {row['rule']!r}  "
        f"approvers {', '.join(json.loads(row.get('approvers') or '[]'))}  "
        f"expires {row.get('expires')}"
    )


@click.group()
def approvals() -> None:
    """The approval queue: list, show, approve, deny, watch."""


@approvals.command("list")
@db_option
@click.option("--all", "show_all", is_flag=True, help="Include decided approvals.")
def approvals_list(db: str, show_all: bool) -> None:
    """Approvals waiting for a decision (oldest first)."""
    rows = read(lambda: all_approvals(db) if show_all else store.pending_approvals(db))
    if not rows:
        click.echo("no approvals waiting" if not show_all else "no approvals")
    for row in rows:
        click.echo(_line(row))


@approvals.command("show")
@db_option
@click.argument("approval_id")
def approvals_show(db: str, approval_id: str) -> None:
    """One approval: the (masked) arguments, what changed since the last one, its history."""
    row = read(lambda: store.approval(db, approval_id))
    if row is None:
        raise CheckFailed(f"no approval {approval_id!r}; see `holdgate approvals list --all`")
    click.echo(_line(row))
    click.echo(f"arguments: {row.get('args_masked')}")
    changes = json.loads(row.get("changes") or "null")
    if changes is not None:
        click.echo("changed since the last approved call: " + (", ".join(changes) or "nothing"))
    for step in row["history"]:
        who = f" by {step['decider']}" if step.get("decider") else ""
        why = f" ({step['reason']})" if step.get("reason") else ""
        click.echo(f"  {step['ts']}  {step['state']}{who}{why}")


def _decide(db: str, approval_id: str, new_state: str, user: str, reason: str | None) -> None:
    row = read(lambda: store.approval(db, approval_id))
    if row is None:
        raise CheckFailed(f"no approval {approval_id!r}; see `holdgate approvals list`")
    problem = None
    if row["state"] != "pending":
        problem = f"approval {approval_id} is already {row['state']}"
    elif new_state == "approved" and user == row["requester"]:
        problem = f"{user} requested this call and cannot approve it (separation of duties)"
    elif _expired(row):
        problem = f"approval {approval_id} expired at {row['expires']}; the decision came too late"
    if problem is None:
        ok = store.append_approval_state(db, approval_id, new_state, user, reason)
        if ok:
            click.echo(f"{approval_id} {new_state} by {user}")
            return
        problem = f"approval {approval_id} was decided by someone else first"
    store.append_approval_state(
        db, approval_id, "refused_attempt", user, f"{new_state} refused: {problem}"
    )
    raise CheckFailed(problem)


@approvals.command("approve")
@db_option
@click.argument("approval_id")
@click.option("--as", "user", required=True, help="Who decides (the host operator's word).")
@click.option("--reason", help="Why; kept in the record.")
def approvals_approve(db: str, approval_id: str, user: str, reason: str | None) -> None:
    """Approve a held call: the gateway forwards it."""
    _decide(db, approval_id, "approved", user, reason)


@approvals.command("deny")
@db_option
@click.argument("approval_id")
@click.option("--as", "user", required=True, help="Who decides (the host operator's word).")
@click.option("--reason", help="Why; the client is told.")
def approvals_deny(db: str, approval_id: str, user: str, reason: str | None) -> None:
    """Deny a held call: the client gets JSON-RPC error -32004."""
    _decide(db, approval_id, "denied", user, reason)


@approvals.command("watch")
@db_option
@click.option("--interval", default=0.5, show_default=True, help="Seconds between looks.")
@click.option("--count", default=0, help="Stop after this many new requests (0: never).")
def approvals_watch(db: str, interval: float, count: int) -> None:
    """Follow new approval requests live (Ctrl-C to stop)."""
    seen: set[str] = set()
    shown = 0
    while True:
        for row in _pending_or_none(db):
            if row["approval_id"] not in seen:
                seen.add(row["approval_id"])
                click.echo(_line(row), nl=True)
                shown += 1
                if count and shown >= count:
                    return
        time.sleep(interval)


def all_approvals(path: str) -> list[dict[str, Any]]:
    database = store.open_db(path, create=False)
    try:
        return list(database.query("SELECT * FROM v_approvals ORDER BY seq"))
    finally:
        database.close()


def _pending_or_none(db: str) -> list[dict[str, Any]]:
    """`watch` may start before the gateway has created the store."""
    try:
        return store.pending_approvals(db)
    except store.StoreNotFound:
        return []
