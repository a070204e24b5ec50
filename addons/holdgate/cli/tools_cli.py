"""`holdgate tools list | show | pin`: review tool definitions that changed, and re-pin them.

A re-pin is a `tool_pins` row in the store; running gateways read it within a second.
"""

from __future__ import annotations

import difflib
import json

import click

from holdgate.cli.common import CheckFailed, db_option, opened
from holdgate.policy.tool_pins import PinBook, PinState
from holdgate.store import Store, ToolPinRow


def _book(store: Store) -> tuple[PinBook, list[ToolPinRow]]:
    rows = store.tool_pin_rows()
    book = PinBook()
    for row in rows:
        book.apply(dict(row))
    return book, rows


def _status(pin: PinState) -> str:
    return "CHANGED" if pin.changed else "pinned"


@click.group()
def tools() -> None:
    """Tool pins: the definitions tools had when first seen, and the changes since."""


@tools.command("list")
@db_option
@click.option("--changed", "only_changed", is_flag=True, help="Only tools that changed.")
def tools_list(db: str, only_changed: bool) -> None:
    """Every pinned tool, whether its listed definition still matches the pin."""
    with opened(db) as store:
        book, _ = _book(store)
    shown = 0
    for (upstream, tool), pin in sorted(book.pins.items()):
        if only_changed and not pin.changed:
            continue
        shown += 1
        line = (
            f"{upstream}/{tool}  {_status(pin):<8} pinned {pin.pinned_at} by "
            f"{pin.pinned_by}  sha256 {pin.pinned_digest[:12]}"
        )
        if pin.changed:
            line += (
                f"  now {pin.seen_digest[:12]} (seen {pin.seen_at}; changed: "
                f"{', '.join(pin.changes()) or 'definition'})"
            )
        click.echo(line)
    if not shown:
        click.echo("no changed tools" if only_changed else "no tools pinned yet")


@tools.command("show")
@db_option
@click.argument("upstream")
@click.argument("tool")
def tools_show(db: str, upstream: str, tool: str) -> None:
    """A tool's pin history and the difference between its pinned and listed definition."""
    with opened(db) as store:
        book, rows = _book(store)
    pin = book.pins.get((upstream, tool))
    if pin is None:
        raise CheckFailed(f"no pin for tool {tool!r} on upstream {upstream!r}; see `tools list`")
    click.echo(f"{upstream}/{tool}: {_status(pin)}")
    for row in rows:
        if (row["upstream"], row["tool"]) == (upstream, tool):
            click.echo(
                f"  {row['ts']}  {row['event']:<10} {str(row['definition_digest'])[:12]}  "
                f"{row.get('actor') or ''}  {row.get('detail') or ''}".rstrip()
            )
    if pin.changed:
        click.echo("difference, pinned -> listed now:")
        pinned = json.dumps(pin.pinned_definition, indent=2, sort_keys=True).splitlines()
        seen = json.dumps(pin.seen_definition, indent=2, sort_keys=True).splitlines()
        for line in difflib.unified_diff(pinned, seen, "pinned", "listed", lineterm=""):
            click.echo(line)


@tools.command("pin")
@db_option
@click.argument("upstream")
@click.argument("names", nargs=-1, required=True)
@click.option("--as", "user", required=True, help="Who reviewed the new definition.")
@click.option("--reason", help="Why the change is acceptable; kept in the record.")
@click.option(
    "--digest",
    help="Pin only if the listed definition's sha256 starts with this (from `tools show`), "
    "so what is pinned is what was reviewed.",
)
def tools_pin(
    db: str,
    upstream: str,
    names: tuple[str, ...],
    user: str,
    reason: str | None,
    digest: str | None,
) -> None:
    """Accept the definition a tool is listed with now: calls are judged by policy again."""
    with opened(db) as store:
        _pin(store, upstream, names, user, reason, digest)


def _pin(
    store: Store,
    upstream: str,
    names: tuple[str, ...],
    user: str,
    reason: str | None,
    digest: str | None,
) -> None:
    book, rows = _book(store)
    latest = {(r["upstream"], r["tool"]): r for r in rows}
    for name in names:
        pin = book.pins.get((upstream, name))
        if pin is None:
            raise CheckFailed(f"no pin for tool {name!r} on upstream {upstream!r}")
        if not pin.changed:
            click.echo(f"{upstream}/{name}: already pinned at {pin.pinned_digest[:12]}")
            continue
        if digest is not None and not pin.seen_digest.startswith(digest):
            raise CheckFailed(
                f"{upstream}/{name} is now listed as {pin.seen_digest[:12]}, not {digest}: "
                "it changed again; review it with `holdgate tools show`"
            )
        row = latest[(upstream, name)]
        pinned = {
            "upstream": upstream,
            "tool": name,
            "definition_digest": row["definition_digest"],
            "definition": row["definition"],
            "event": "pinned",
            "actor": user,
            "detail": reason,
        }
        store.append("tool_pins", pinned)
        click.echo(f"{upstream}/{name}: pinned {str(row['definition_digest'])[:12]} by {user}")
