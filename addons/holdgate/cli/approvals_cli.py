"""`holdgate approvals …`: the approval queue.

Reading (`list`, `show`, `watch`) reads the store. Deciding (`approve`, `deny`) goes
through a running gateway's admin API with the person's own credential, as `kubectl` does:
the gateway authenticates it, the store checks that identity against the rule's approvers
and separation of duties, and records the decision (channel `cli`) or the refused attempt.

Writing the store directly is break-glass only: `--break-glass --as NAME --reason TEXT`,
all three required. No group is checked (the requester still cannot decide their own
call); the row says `break-glass`, with the OS account that wrote it, and the access review
lists it as an exception.
"""

from __future__ import annotations

import getpass
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

import click

from holdgate.cli.common import CheckFailed, db_option, opened, store_errors
from holdgate.cli.gateway_client import GatewayClient, GatewayRefused, gateway_options, gateway_url
from holdgate.store import ApprovalRecord, Decision, Store, StoreNotFound, open_store
from holdgate.store.rows import json_or


def _line(row: ApprovalRecord) -> str:
    return (
        f"{row['approval_id']}  {row['state']:<9} {row.get('requester')} -> "
        f"{row.get('upstream')}/{row.get('tool') or row.get('method')}  "
        f"rule {row.get('rule')!r}  "
        f"approvers {', '.join(json_or(row.get('approvers'), []))}  "
        f"expires {row.get('expires')}"
        # the client was sent a link and retries; nothing is held open
        + ("  (via elicitation)" if row.get("via") == "elicitation" else "")
    )


def decided_how(channel: str | None, decided_as: Any) -> str:
    """How a decision was made, for people: the channel, how the decider authenticated,
    the groups seen and the approver group that qualified them."""
    if not channel:
        return ""
    parts = [f"via {channel}"]
    who = decided_as if isinstance(decided_as, dict) else {}
    proof = {
        "jwt": f"JWT from {who.get('issuer')}",
        "api_key": f"API key {who.get('key')}",
        "trusted_header": f"auth proxy header {who.get('header')}",
        "console": "mitmweb console",
        "break-glass": f"written to the store by OS user {who.get('os_user')}",
    }.get(str(who.get("via")))
    if proof:
        parts.append(proof)
    if who.get("groups") is not None:
        parts.append(f"groups {', '.join(who['groups']) or '-'}")
    if who.get("qualified_by"):
        parts.append(f"qualified by {who['qualified_by']}")
    return "; ".join(parts)


@click.group()
def approvals() -> None:
    """The approval queue: list, show, approve, deny, watch."""


@approvals.command("list")
@db_option
@click.option("--all", "show_all", is_flag=True, help="Include decided approvals.")
def approvals_list(db: str, show_all: bool) -> None:
    """Approvals waiting for a decision (oldest first), with their (masked) arguments."""
    with opened(db) as store:
        rows = store.approvals(pending_only=not show_all)
    if not rows:
        click.echo("no approvals waiting" if not show_all else "no approvals")
    for row in rows:
        click.echo(_line(row))
        click.echo(f"    arguments: {row.get('args_masked')}")


@approvals.command("show")
@db_option
@click.argument("approval_id")
def approvals_show(db: str, approval_id: str) -> None:
    """One approval: the (masked) arguments, what changed since the last one, its history
    (who decided, through which channel, as whom)."""
    with opened(db) as store:
        row = store.approval(approval_id)
    if row is None:
        raise CheckFailed(f"no approval {approval_id!r}; see `holdgate approvals list --all`")
    click.echo(_line(row))
    click.echo(f"arguments: {row.get('args_masked')}")
    changes = json_or(row.get("changes"), None)
    if changes is not None:
        click.echo("changed since the last approved call: " + (", ".join(changes) or "nothing"))
    for step in row.get("history", []):
        who = f" by {step['decider']}" if step.get("decider") else ""
        why = f" ({step['reason']})" if step.get("reason") else ""
        how = decided_how(step.get("channel"), json_or(step.get("decided_as"), None))
        click.echo(f"  {step['ts']}  {step['state']}{who}{why}" + (f"  [{how}]" if how else ""))


def decision_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """What `approve` and `deny` take: the gateway and credential, or break-glass."""
    for option in reversed(
        [
            click.argument("approval_id"),
            click.option("--reason", help="Why; kept in the record (and told the client)."),
            click.option(
                "--config",
                "config_path",
                type=click.Path(dir_okay=False),
                help="The gateway's config: its approvals.public_url is the default --gateway.",
            ),
            click.option(
                "--break-glass",
                is_flag=True,
                help="Write the decision to the store directly (--store), without the "
                "gateway: needs --as and --reason; recorded as break-glass, an exception "
                "in the access review.",
            ),
            click.option("--as", "user", help="Who decides (with --break-glass only)."),
        ]
    ):
        func = option(func)
    return db_option(gateway_options(func))


def break_glass_problems(break_glass: bool, user: str | None, reason: str | None) -> str | None:
    """Why these options cannot decide, for a usage error (exit 2): `--as` is for
    break-glass only, and break-glass needs a name and a reason (each missing one named)."""
    if not break_glass:
        if user is not None:
            return (
                "--as is for break-glass only. Act as yourself through the gateway with "
                "--token (or $HOLDGATE_TOKEN): the gateway checks that identity against the "
                "rule's approvers (or review.reviewers). In an emergency, without the "
                "gateway: --break-glass --as NAME --reason TEXT"
            )
        return None
    missing = [
        name for name, value in (("--as NAME", user), ("--reason TEXT", reason)) if not value
    ]
    if missing:
        return f"--break-glass needs {' and '.join(missing)} (who decides, and why: both recorded)"
    return None


def _decide(
    decision: Decision,
    approval_id: str,
    *,
    db: str,
    gateway: str | None,
    token: str | None,
    config_path: str | None,
    break_glass: bool,
    user: str | None,
    reason: str | None,
) -> None:
    problem = break_glass_problems(break_glass, user, reason)
    if problem is not None:
        raise click.UsageError(problem)
    if break_glass and user is not None:
        _break_glass(db, approval_id, decision, user, reason)
        return
    if not token:
        raise click.UsageError(
            "no credential: pass your own with --token or $HOLDGATE_TOKEN (a JWT from your "
            "IdP, or your API key); the gateway decides as that identity"
        )
    client = GatewayClient(gateway_url(gateway, config_path), token)
    verb = "approve" if decision == "approved" else "deny"
    try:
        answer = client.call(
            "POST", f"/approvals/{quote(approval_id, safe='')}/{verb}", {"reason": reason}
        )
    except GatewayRefused as exc:
        if "(404)" not in exc.message:
            raise
        # the API is no oracle: say both things its 404 may mean
        raise GatewayRefused(
            f"{exc.message}; it does not exist, or you are neither its requester nor in its "
            "approver groups (see `holdgate approvals show ID`)"
        ) from None
    answer = answer if isinstance(answer, dict) else {}
    how = decided_how(answer.get("channel"), answer.get("decided_as"))
    click.echo(
        f"{approval_id} {answer.get('state', decision)} by {answer.get('decider')}"
        + (f"  [{how}]" if how else "")
    )


def _break_glass(
    db: str, approval_id: str, decision: Decision, user: str, reason: str | None
) -> None:
    """The store's rules, without the approver groups: recorded as break-glass, naming
    the OS account that wrote it."""
    with opened(db) as store:
        store.decide_approval(
            approval_id,
            decision,
            user,
            None,
            reason,
            channel="break-glass",
            identity={"via": "break-glass", "os_user": getpass.getuser()},
        )
    click.echo(
        f"{approval_id} {decision} by {user}  [BREAK-GLASS: written to the store directly, "
        "no approver group checked; an exception in the access review]"
    )


@approvals.command("approve")
@decision_options
def approvals_approve(**options: Any) -> None:
    """Approve a held call through the gateway, as the identity of --token: the gateway
    forwards it. (--break-glass --as NAME --reason TEXT: the store directly.)"""
    _decide("approved", **options)


@approvals.command("deny")
@decision_options
def approvals_deny(**options: Any) -> None:
    """Deny a held call through the gateway, as the identity of --token: the client gets
    JSON-RPC error -32004. (--break-glass --as NAME --reason TEXT: the store directly.)"""
    _decide("denied", **options)


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
