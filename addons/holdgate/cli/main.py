"""The `holdgate` command: a thin click layer over the library.

Exit status: 0 on success, 1 when a check fails, 2 on usage errors.

Each command group lives in a module of its own, imported only when that command runs
(`LazyGroup`): `holdgate --help` or `holdgate approvals list` does not load psycopg,
mitmproxy's flow files or the config stack. The summaries below are the first sentence
of each command's help (tests/test_cli_help.py keeps them equal).
"""

from __future__ import annotations

import click

from holdgate.cli.lazy_group import LazyCommand, LazyGroup
from holdgate.cli.terminal import guard_terminals

COMMANDS = {
    "approvals": LazyCommand(
        "holdgate.cli.approvals_cli:approvals",
        "The approval queue: list, show, approve, deny, watch.",
    ),
    "backup": LazyCommand(
        "holdgate.cli.records_cli:backup",
        "Copy a SQLite store to OUT while the gateway runs (SQLite's online backup: rows still "
        "in the -wal file included, unlike cp), then check the copy's hash chain and say what "
        "it holds.",
    ),
    "export": LazyCommand(
        "holdgate.cli.records_cli:export",
        "The audit feed (fields: store.EXPORT_FIELDS, plus `table`) for a SIEM or governance "
        "platform: each row once, in seq order.",
    ),
    "feeds": LazyCommand(
        "holdgate.cli.feeds_cli:feeds",
        "Each feed's cursor (the last seq its receiver took), its head (the last event's seq), "
        "the lag (events still to send), who sends it (a lease by the database clock) and its "
        "latest delivery error.",
    ),
    "keys": LazyCommand(
        "holdgate.cli.keys_cli:keys",
        "API keys for service identities (the config stores only their SHA-256), and the key "
        "that signs audit checkpoints (`keys signing new`).",
    ),
    "policy": LazyCommand(
        "holdgate.cli.policy_cli:policy", "Write, check, explain and test policies."
    ),
    "purge": LazyCommand(
        "holdgate.cli.records_cli:purge",
        "Delete rows and flow files past the retention period, but never each tool's current "
        "pin nor the config versions in force or named by kept rows, and record what it did.",
    ),
    "replicas": LazyCommand(
        "holdgate.cli.replicas_cli:replicas",
        "The gateways sharing the store: alive or lapsed, heartbeat age, config, host.",
    ),
    "review": LazyCommand(
        "holdgate.cli.review_cli:review",
        "Access review per identity: grants, use, approvals, denials, masked exposures, and "
        "the exceptions first (default period: the last 90 days).",
    ),
    "sessions": LazyCommand(
        "holdgate.cli.records_cli:sessions", "Who did what, in order, per MCP session."
    ),
    "shadow": LazyCommand(
        "holdgate.cli.shadow_cli:shadow",
        "The shadow policy: a candidate config decided beside the one in force, never enforced.",
    ),
    "status": LazyCommand(
        "holdgate.cli.status_cli:status",
        "A running gateway's state through its admin API: the config in force against the "
        "file on disk, the last rejected reload, store health, replica, pending approvals and "
        "the feeds' lag.",
    ),
    "tools": LazyCommand(
        "holdgate.cli.tools_cli:tools",
        "Tool pins: the definitions tools had when first seen, and the changes since.",
    ),
    "verify": LazyCommand(
        "holdgate.cli.records_cli:verify",
        "Check the hash chain: proves no row was edited, removed or inserted.",
    ),
}


@click.group(cls=LazyGroup, lazy=COMMANDS)
@click.version_option(package_name="holdgate")
def main() -> None:
    """Holdgate: the MCP security gateway's command line."""
    guard_terminals()  # what others wrote (tool names, arguments) cannot drive a terminal
