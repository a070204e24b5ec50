"""`holdgate review`: the access-review report, and certification campaigns
(`campaign start|close`, `certify`, `status`, `apply`, `export`).

Thin: the model and renderers are in `holdgate.reports`, the campaign rules in the store.
"""

from __future__ import annotations

import csv
import getpass
import hashlib
import io
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from holdgate.cli.common import (
    CheckFailed,
    db_option,
    load_rules,
    opened,
    since_option,
    store_errors,
    until_option,
)
from holdgate.config.gateway_config import GatewayConfig, load_config
from holdgate.configfile import ConfigError, parse_duration
from holdgate.policy.policytest import build_message, caller_for
from holdgate.reports.campaigns import (
    EXPORT_COLUMNS,
    NotNarrowable,
    export_json,
    export_rows,
    narrowed_policy,
)
from holdgate.reports.decision_findings import Deciders
from holdgate.reports.review_html import render_html
from holdgate.reports.review_model import (
    KIND_METHOD,
    Evidence,
    Header,
    Inputs,
    Review,
    build_review,
    campaign_items,
    versions_in_force,
)
from holdgate.reports.review_render import (
    csv_cell,
    render_csv,
    render_json,
    render_markdown,
    terminal_text,
)
from holdgate.store import Campaign, Store, iso
from holdgate.store.campaign_records import new_campaign_id
from holdgate.store.checkpoints import BadKey, load_public_key, read_witness, verify_witness

DEFAULT_PERIOD = 90 * 86400.0
RENDERERS: dict[str, Callable[[Review], str]] = {
    "md": render_markdown,
    "html": render_html,
    "csv": render_csv,
    "json": render_json,
}


def config_option(func: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--config",
        "config_path",
        type=click.Path(exists=True, dir_okay=False),
        default="policies/default.yaml",
        show_default=True,
        help="The policy in force, to show what each identity is granted (its secrets are "
        "not needed).",
    )(func)


def actor_option(what: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    return click.option(
        "--as", "actor", default=None, help=f"Who {what} (recorded; default: the OS user)."
    )


def _actor(actor: str | None) -> str:
    return actor or getpass.getuser()


def evidence(
    store: Store, config: GatewayConfig, witness: str | None, public_keys: tuple[str, ...]
) -> Evidence:
    """The store's `verify()`, and the signed checkpoints when keys to check them are given."""
    report = store.verify()
    problems = []
    if report.ok:
        chain = f"hash chain intact ({report.rows_checked} rows)"
    else:
        where = f" at {report.at[0]} seq {report.at[1]}" if report.at else ""
        chain = f"hash chain BROKEN{where}: {report.problem}"
        problems.append(chain)
    source = witness
    if source is None and config.checkpoints is not None:
        source = (
            config.checkpoints.witness.target if config.checkpoints.witness.kind == "file" else None
        )
    if config.checkpoints is None and witness is None:
        checkpoints = "signed checkpoints: not configured"
    elif source is None or not public_keys:
        checkpoints = (
            f"signed checkpoints configured ({source or 'not a file witness'}), not checked "
            "here: pass --witness FILE --public-key KEY.pub"
        )
    else:
        try:
            keys = [load_public_key(Path(p).read_bytes()) for p in public_keys]
            checked = verify_witness(store, read_witness(source), keys)
        except (OSError, BadKey) as exc:
            checked = None
            checkpoints = f"signed checkpoints NOT verified: {exc}"
            problems.append(checkpoints)
        if checked is not None and checked.ok:
            checkpoints = f"{checked.checked} signed checkpoints verified in {source}"
        elif checked is not None:
            checkpoints = f"signed checkpoints FAIL in {source}: {checked.problem}"
            problems.append(checkpoints)
    return Evidence(report.ok, chain, checkpoints, tuple(problems))


def build(
    store: Store,
    config: GatewayConfig,
    period: tuple[str, str],
    actor: str | None,
    witness: str | None = None,
    public_keys: tuple[str, ...] = (),
) -> Review:
    since, until = period
    versions = store.config_versions()
    header = Header(
        period_start=since,
        period_end=until,
        generated_at=iso(),
        generated_by=_actor(actor),
        store=store.name,
        config_file=f"{config.file} (sha256 {config.digest[:12]})",
        evidence=evidence(store, config, witness, public_keys),
        config_versions=tuple(versions_in_force(versions, since, until)),
    )
    inputs = Inputs(
        events=store.events(since, until),
        approvals=store.approvals(),
        sessions=store.sessions(since),
        tool_pins=store.tool_pin_rows(),
        config_versions=versions,
        campaigns=store.campaigns(),
    )
    return build_review(inputs, config.policy, header, deciders_of(config))


def deciders_of(config: GatewayConfig) -> Deciders:
    """What the config says of the people who decide, for the review's exceptions."""
    keys = config.identity.api_keys if config.identity is not None else ()
    return Deciders(config.review.reviewers, {key.name: key.groups for key in keys})


def _emit(text: str, output: str | None, summary: str) -> None:
    if output:
        Path(output).write_text(text, encoding="utf-8")
        click.echo(f"{summary} written to {output}", err=True)
    else:
        click.echo(text, nl=False)


def _campaign(store: Store, campaign_id: str) -> Campaign:
    found = store.campaign(campaign_id)
    if found is None:
        raise CheckFailed(f"no campaign {campaign_id!r}; see `holdgate review status`")
    return found


@click.group(invoke_without_command=True)
@db_option
@config_option
@click.option(
    "--format",
    "fmt",
    type=click.Choice(list(RENDERERS)),
    default="md",
    show_default=True,
    help="Markdown, HTML (self-contained, prints on A4), CSV or JSON.",
)
@since_option
@until_option
@actor_option("generates the report")
@click.option(
    "--campaign", "campaign_id", help="The review of this campaign's period, with its decisions."
)
@click.option(
    "--witness",
    type=click.Path(exists=True, dir_okay=False),
    help="Check the signed checkpoints in this witness file (default: the config's file witness).",
)
@click.option(
    "--public-key",
    "public_keys",
    multiple=True,
    type=click.Path(exists=True, dir_okay=False),
    help="Public key of the checkpoint signing key; repeat it after a rotation.",
)
@click.option("--output", "-o", type=click.Path(dir_okay=False), help="File (default: stdout).")
@click.pass_context
def review(
    ctx: click.Context,
    db: str,
    config_path: str,
    fmt: str,
    since: str | None,
    until: str | None,
    actor: str | None,
    campaign_id: str | None,
    witness: str | None,
    public_keys: tuple[str, ...],
    output: str | None,
) -> None:
    """Access review per identity: grants, use, approvals, denials, masked exposures, and
    the exceptions first (default period: the last 90 days)."""
    if ctx.invoked_subcommand is not None:
        return
    config = load_rules(config_path)
    with opened(db) as store:
        campaign = _campaign(store, campaign_id) if campaign_id else None
        if campaign is not None:
            period = (since or campaign.period_start, until or campaign.period_end)
        else:
            period = (since or iso(time.time() - DEFAULT_PERIOD), until or iso())
        model = build(store, config, period, actor, witness, public_keys)
    model.campaign = campaign
    _emit(RENDERERS[fmt](model), output, f"review of {len(model.identities)} identities")


@review.group()
def campaign() -> None:
    """Certification campaigns: start one over a period, close it."""


@campaign.command("start")
@db_option
@config_option
@click.option(
    "--period", default="90d", show_default=True, help="How far back the use is taken from."
)
@actor_option("starts the campaign")
def campaign_start(db: str, config_path: str, period: str, actor: str | None) -> None:
    """Start a campaign: one open item per (identity, grant) with its use in the period."""
    seconds = parse_duration(period)
    if seconds is None:
        raise click.BadParameter("expected a duration like 90d or 12h", param_hint="--period")
    config = load_rules(config_path)
    now = time.time()
    window = (iso(now - seconds), iso(now))
    with opened(db) as store:
        model = build(store, config, window, actor)
        items = campaign_items(model)
        if not items:
            raise CheckFailed(
                f"no identity had a grant in use or on offer in {window[0]} .. {window[1]}"
            )
        with store_errors():
            started = store.start_campaign(
                new_campaign_id(now),
                window,
                config.digest,
                _actor(actor),
                {"config_file": config.file, "period": period},
                items,
            )
    click.echo(
        f"campaign {started.campaign_id} started: {len(started.items)} items for "
        f"{len({i.user for i in started.items})} identities, period {window[0]} .. {window[1]}"
    )


@campaign.command("close")
@db_option
@click.argument("campaign_id")
@actor_option("closes it")
def campaign_close(db: str, campaign_id: str, actor: str | None) -> None:
    """Close a campaign: no more decisions; open items stay undecided in the record."""
    with opened(db) as store:
        closed = store.campaign_event(campaign_id, "closed", _actor(actor), {})
    progress = closed.progress()
    click.echo(
        f"campaign {campaign_id} closed: {progress['keep']} kept, {progress['revoke']} revoked, "
        f"{progress['open']} left undecided"
    )


@review.command("certify")
@db_option
@click.argument("item_id")
@click.argument("decision", type=click.Choice(["keep", "revoke"]))
@click.option(
    "--as", "actor", required=True, help="The reviewer (recorded; never the identity reviewed)."
)
@click.option("--reason", required=True, help="Why (recorded with the decision).")
def certify(db: str, item_id: str, decision: str, actor: str, reason: str) -> None:
    """Keep or revoke one item. Final: an item decided once is refused a second decision."""
    with opened(db) as store:
        item = store.certify(item_id, decision, actor, reason, None)  # type: ignore[arg-type]
    click.echo(
        terminal_text(
            f"{item.item_id}: {item.state} ({item.user} {item.target_kind} {item.target}) "
            f"by {actor}"
        )
    )


@review.command("status")
@db_option
@click.argument("campaign_id", required=False)
def status(db: str, campaign_id: str | None) -> None:
    """Each campaign's progress; with CAMPAIGN, each of its items."""
    with opened(db) as store:
        found = [_campaign(store, campaign_id)] if campaign_id else store.campaigns()
    if not found:
        click.echo("no campaigns; start one with `holdgate review campaign start`")
    for c in found:
        p = c.progress()
        click.echo(
            f"{c.campaign_id}  {c.state}  {c.period_start} .. {c.period_end}  "
            f"{len(c.items)} items: {p['open']} open, {p['keep']} keep, {p['revoke']} revoke"
        )
        if campaign_id:
            for i in c.items:
                who = f" by {i.reviewer}: {i.reason}" if i.reviewer else ""
                click.echo(
                    terminal_text(
                        f"  {i.item_id}  {i.state:<6} {i.user}  {i.upstream} {i.target_kind} "
                        f"{i.target}  ({i.rule}; {i.usage.get('calls', 0)} calls){who}"
                    )
                )


@review.command("apply")
@db_option
@config_option
@click.argument("campaign_id")
@click.option(
    "--out", required=True, type=click.Path(dir_okay=False), help="The candidate policy file."
)
@actor_option("applies it")
def apply(db: str, config_path: str, campaign_id: str, out: str, actor: str | None) -> None:
    """Write a candidate policy with the closed campaign's revoked grants denied, checked
    against the store and the config the campaign started from."""
    config = load_rules(config_path)
    with opened(db) as store:
        report = store.verify()
        if not report.ok:
            raise CheckFailed(
                f"the store's hash chain is broken ({report.problem}): its decisions cannot "
                "be trusted, so nothing is applied; see `holdgate verify`"
            )
        c = _campaign(store, campaign_id)
        if c.state == "started":
            raise CheckFailed(
                f"campaign {campaign_id} is still open: close it first "
                f"(`holdgate review campaign close {campaign_id}`)"
            )
        if c.config_hash != config.digest:
            raise CheckFailed(
                f"{config_path} (sha256 {config.digest[:12]}) is not the config campaign "
                f"{campaign_id} reviewed (sha256 {c.config_hash[:12]}): apply it to that "
                "version, or start a new campaign on this one"
            )
        try:
            text, added = narrowed_policy(config.text, c)
        except NotNarrowable as exc:
            raise CheckFailed(f"{config_path}: {exc}") from None
        Path(out).write_text(text, encoding="utf-8")
        try:
            candidate = load_config(out, secrets=False)
        except ConfigError as exc:
            raise CheckFailed(f"the candidate {out} does not load: {exc}") from None
        for item in (i for i in c.items if i.state == "revoke"):
            probe = build_message(KIND_METHOD[item.target_kind], item.target, {})
            caller = caller_for(item.user, ())
            if candidate.policy.evaluate(caller, item.upstream, probe).action != "deny":
                raise CheckFailed(f"the candidate {out} still grants {item.item_id}; not applied")
        digest = hashlib.sha256(text.encode()).hexdigest()
        store.campaign_event(
            campaign_id,
            "applied",
            _actor(actor),
            {"out": out, "sha256": digest, "rules": len(added)},
        )
    click.echo(
        f"{out}: {len(added)} deny rules for {c.progress()['revoke']} revoked grants "
        f"(sha256 {digest[:12]}); try it on recorded traffic (holdgate policy replay {out} "
        f"--db {db}) or live as the shadow policy (--set holdgate_shadow={out}), then put "
        f"it in force with holdgate policy apply {out} --config {config_path}"
    )


@review.command("export")
@db_option
@click.argument("campaign_id")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["csv", "json"]),
    default="csv",
    show_default=True,
    help="CSV (columns: reports.campaigns.EXPORT_COLUMNS) or JSON.",
)
@click.option("--output", "-o", type=click.Path(dir_okay=False), help="File (default: stdout).")
def export(db: str, campaign_id: str, fmt: str, output: str | None) -> None:
    """A campaign's items and decisions for a GRC tool, in stable columns."""
    with opened(db) as store:
        c = _campaign(store, campaign_id)
    if fmt == "json":
        text = export_json(c) + "\n"
    else:
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=list(EXPORT_COLUMNS))
        writer.writeheader()
        for row in export_rows(c):
            writer.writerow({k: csv_cell(v) for k, v in row.items()})
        text = buffer.getvalue()
    _emit(text, output, f"{len(c.items)} items of {campaign_id}")
