"""`holdgate status`: one running gateway's state, read from its admin API (`GET /status`).

What the gateway holds in memory (the config in force, the last rejected reload, its
writer's health) is only known to it, so the command asks the gateway rather than the
store, with the caller's own credential (`gateway_client`).
"""

from __future__ import annotations

import json
from typing import Any

import click

from holdgate.cli.common import format_option
from holdgate.cli.gateway_client import GatewayClient, gateway_options, gateway_url

SHORT_HASH = 12


def _short(digest: Any) -> str:
    return str(digest)[:SHORT_HASH] if digest else "-"


def status_lines(report: dict[str, Any]) -> list[str]:
    """The `/status` answer for a person: one line per part, what is wrong said first."""
    config = report["config"]
    in_force = config["in_force"]
    not_ready = report.get("not_ready")
    lines = [
        f"replica    {report.get('replica') or '(not registered)'}: "
        + (f"NOT READY: {not_ready}" if not_ready else "ready"),
        f"config     sha256 {_short(in_force['sha256'])} from {config['file']}, in force "
        f"since {in_force['loaded_at']}",
    ]
    if config["file_in_force"]:
        lines.append("file       the file on disk is the config in force")
    else:
        on_disk = _short(config["file_sha256"]) if config["file_sha256"] else "unreadable"
        lines.append(
            f"file       NOT IN FORCE: the file on disk (sha256 {on_disk}) is not the "
            "config in force; fix it (the error below) and the gateway reloads it"
        )
    failure = config.get("last_reload_error")
    failures = config["reload_failures"]
    if failure:
        lines.append(f"reloads    {failures} rejected; the last at {failure['at']}:")
        lines += [f"             {line}" for line in str(failure["error"]).splitlines()]
    else:
        lines.append(f"reloads    {failures} rejected")
    store = report["store"]
    health = "writable" if store["writable"] else f"NOT WRITABLE: {store['last_error']}"
    lines.append(
        f"store      {store['backend'] or 'not open'}, {health}; {store['queue_depth']} rows "
        f"queued, {store['rows_lost']} lost"
    )
    if store.get("read_error"):
        lines.append(f"           {store['read_error']}")
    approvals = report["approvals"]
    pending = "unknown" if approvals["pending"] is None else approvals["pending"]
    lines.append(f"approvals  {pending} pending, {approvals['held_here']} held by this gateway")
    feeds = report.get("feeds")
    if feeds is None:
        lines.append("feeds      unknown (the store could not be read)")
    elif not feeds:
        lines.append("feeds      none has run against this store")
    for feed in feeds or []:
        error = f", last error: {feed['last_error']}" if feed["last_error"] else ""
        lines.append(
            f"feed       {feed['feed']}: seq {feed['seq']}, head {feed['head']}, lag "
            f"{feed['lag']} events{error}"
        )
    if report.get("code"):  # a gateway from before issue #31 does not say
        lines.append(f"code       {report['code']}")
    return lines


@click.command("status")
@gateway_options
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False),
    help="The gateway's config, to find its admin API (approvals.public_url).",
)
@format_option("text for a person, json for a script (the admin API's answer as it is).")
def status(gateway: str | None, token: str | None, config_path: str | None, fmt: str) -> None:
    """A running gateway's state through its admin API: the config in force against the
    file on disk, the last rejected reload, store health, replica, pending approvals and
    the feeds' lag.

    Needs a credential the admin listener accepts (--token or $HOLDGATE_TOKEN: an API key
    or a JWT; in `metrics.groups` when the config sets it)."""
    report = GatewayClient(gateway_url(gateway, config_path), token).call("GET", "/status")
    if fmt == "json":
        click.echo(json.dumps(report, indent=2, ensure_ascii=False))
        return
    for line in status_lines(report):
        click.echo(line)
