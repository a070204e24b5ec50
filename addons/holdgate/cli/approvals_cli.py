"""`holdgate approvals …`: the approval queue, decided from any process on the host.

Decisions go through the store, which applies the approval rules (one BEGIN IMMEDIATE
transaction each), so two deciders racing yield exactly one decision; the gateway notices
within a fraction of a second. The host operator's `--as` is trusted: no approver groups
are checked, but the requester can never decide their own request.
"""

from __future__ import annotations

import json
import time

import click

from holdgate.cli.common import CheckFailed, db_option, opened, store_errors
from holdgate.store import ApprovalRecord, Decision, Store, StoreNotFound, open_store


def _line(row: ApprovalRecord) -> str:
    return (
        f"{row['approval_id']}  {row['state']:<9} {row.get('requester')} -> "
        f"{row.get('upstream')}/{row.get('tool') or row.get('method')}  "
        f"rule {row.get('rule')!r}  "
        f"approvers {', '.join(json.loads(row.get('approvers') or '[]'))}  "
        f"expires {row.get('expires')}"
        # the client was sent a link and retries; nothing is held open
        + ("  (via elicitation)" if row.get("via") == "elicitation" else "")
    )


@click.group()
def approvals() -> None:
    """The approval queue: list, show, approve, deny, watch."""


@approvals.command("list")
@db_option
@click.option("--all", "show_all", is_flag=True, help="Include decided approvals.")
def approvals_list(db: str, show_all: bool) -> None:
    """Approvals waiting for a decision (oldest first)."""
    with opened(db) as store:
        rows = store.approvals(pending_only=not show_all)
    if not rows:
        click.echo("no approvals waiting" if not show_all else "no approvals")
    for row in rows:
        click.echo(_line(row))


@approvals.command("show")
@db_option
@click.argument("approval_id")
def approvals_show(db: str, approval_id: str) -> None:
    """One approval: the (masked) arguments, what changed since the last one, its history."""
    with opened(db) as store:
        row = store.approval(approval_id)
    if row is None:
        raise CheckFailed(f"no approval {approval_id!r}; see `holdgate approvals list --all`")
    click.echo(_line(row))
    click.echo(f"arguments: {row.get('args_masked')}")
    changes = json.loads(row.get("changes") or "null")
    if changes is not None:
        click.echo("changed since the last approved call: " + (", ".join(changes) or "nothing"))
    for step in row.get("history", []):
        who = f" by {step['decider']}" if step.get("decider") else ""
        why = f" ({step['reason']})" if step.get("reason") else ""
        click.echo(f"  {step['ts']}  {step['state']}{who}{why}")


def _decide(db: str, approval_id: str, decision: Decision, user: str, reason: str | None) -> None:
    """The store's rules decide (a refusal is recorded there and shown here, exit 1)."""
    with opened(db) as store:
        store.decide_approval(approval_id, decision, user, None, reason)
    click.echo(f"{approval_id} {decision} by {user}")


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
    store: Store | None = None
    try:
        with store_errors():
            while True:
                if store is None:
                    store = _open_when_there(db)
                for row in store.approvals(pending_only=True) if store else []:
                    if row["approval_id"] not in seen:
                        seen.add(row["approval_id"])
                        click.echo(_line(row))
                        shown += 1
                        if count and shown >= count:
                            return
                time.sleep(interval)
    finally:
        if store is not None:
            store.close()


def _open_when_there(db: str) -> Store | None:
    """`watch` may start before the gateway has created the store."""
    try:
        return open_store(db, create=False)
    except StoreNotFound:
        return None
