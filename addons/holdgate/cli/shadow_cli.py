"""`holdgate shadow report`: where the shadow policy (`holdgate_shadow`) decided differently.

Read from the store only; with `--fail-on-loosen` it is a CI gate: exit status 1 when the
candidate would have let through a call the policy in force refused or held.
"""

from __future__ import annotations

import json

import click

from holdgate.cli.common import (
    CheckFailed,
    db_option,
    format_option,
    opened,
    since_option,
    until_option,
)
from holdgate.reports.shadow_report import build_report, render_text


@click.group()
def shadow() -> None:
    """The shadow policy: a candidate config decided beside the one in force, never enforced."""


@shadow.command("report")
@db_option
@since_option
@until_option
@format_option()
@click.option(
    "--fail-on-loosen",
    is_flag=True,
    help="Exit with status 1 when the candidate would allow or hold a call the policy in "
    "force denied or held (for CI).",
)
def shadow_report(
    db: str, since: str | None, until: str | None, fmt: str, fail_on_loosen: bool
) -> None:
    """The calls the shadow policy decided differently, grouped by rule pair (the rule in
    force -> the candidate's), loosening first, each with its user, tool, time and masked
    arguments; then how many calls each candidate rule decided, and which saw none."""
    with opened(db) as store:
        events = store.events(since, until)
        versions = [
            v
            for v in store.config_versions()
            if (since is None or v["ts"] >= since) and (until is None or v["ts"] < until)
        ]
    report = build_report(events, versions)
    if fmt == "json":
        click.echo(json.dumps(report.to_json(), indent=2, ensure_ascii=False))
    else:
        click.echo(render_text(report))
    if fail_on_loosen and report.loosened:
        raise CheckFailed(
            f"the candidate loosens {report.loosened} call(s): it would let through what the "
            "policy in force refused or held"
        )
