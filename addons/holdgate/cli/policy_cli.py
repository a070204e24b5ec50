"""`holdgate policy …`: write, check, explain, test and replay policies before they go live."""

from __future__ import annotations

import hashlib
import json
import sys
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import click

from holdgate.cli.common import (
    TIME,
    CheckFailed,
    db_option,
    format_option,
    load_rules,
    opened,
    since_option,
    until_option,
)
from holdgate.cli.gateway_client import GatewayClient, gateway_options, gateway_url
from holdgate.cli.policy_apply import Rejected, in_force, wait_in_force, write_in_place
from holdgate.config.gateway_config import GatewayConfig, load_config
from holdgate.configfile import ConfigError
from holdgate.masking.masker import MaskingError, mask_json
from holdgate.policy.diff import diff_policies, format_diff
from holdgate.policy.policytest import (
    build_message,
    caller_for,
    format_explanation,
    masked_values,
    parse_args_json,
    run_tests,
)
from holdgate.policy.replay import NotReplayable, format_report, rebuild, replay
from holdgate.protocol.jsonrpc import Message


@click.group()
def policy() -> None:
    """Write, check, explain and test policies."""


@policy.command("check")
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
@click.option(
    "--secrets",
    is_flag=True,
    help="Also read every `${env:…}`/`${file:…}` secret, as the gateway does at start: one "
    "that cannot be read is an error (run it where the gateway runs).",
)
def policy_check(file: str, secrets: bool) -> None:
    """Validate a config file; errors name the file, line, column and key (all of them).

    Rules are checked without the gateway's secrets (none is read unless --secrets).
    Warnings (e.g. an allow rule's unanchored pattern) go to stderr and leave exit status 0.
    """
    try:
        config = load_config(file, secrets=secrets)
    except ConfigError as exc:
        raise CheckFailed(exc.report()) from None
    for warning in config.policy.warnings:
        click.echo(warning, err=True)
    click.echo(
        f"{file}: ok ({len(config.policy.rules)} rules, {len(config.upstreams)} upstreams, "
        f"sha256 {config.digest[:12]})"
    )


@policy.command("explain")
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
@click.option("--user", help="The caller's user name (omit for anonymous).")
@click.option("--groups", default="", help="Comma-separated groups of the caller.")
@click.option("--upstream", help="Upstream name (default: the first in the file).")
@click.option("--method", default="tools/call", show_default=True, help="JSON-RPC method.")
@click.option("--tool", help="Tool name (tools/call).")
@click.option("--resource", help="Resource URI (resources/read).")
@click.option("--prompt", help="Prompt name (prompts/get).")
@click.option("--args", "args_json", help="Tool arguments as a JSON object.")
@click.option(
    "--event", type=int, help="Explain this recorded event (its seq) instead: needs --db."
)
@db_option
def policy_explain(
    file: str,
    user: str | None,
    groups: str,
    upstream: str | None,
    method: str,
    tool: str | None,
    resource: str | None,
    prompt: str | None,
    args_json: str | None,
    event: int | None,
    db: str,
) -> None:
    """Show every rule considered, why it did or did not match, and the decision."""
    config = load_rules(file)
    if event is not None:
        _explain_recorded(config, db, event)
        return
    try:
        args = parse_args_json(args_json)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--args") from None
    target = tool or resource or prompt
    caller = caller_for(user, tuple(g.strip() for g in groups.split(",") if g.strip()))
    upstream_name = upstream or config.upstreams[0].name
    if upstream_name not in {u.name for u in config.upstreams}:
        raise click.BadParameter(f"no upstream named {upstream_name!r}", param_hint="--upstream")
    try:
        message = build_message(method, target, args)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None
    decision, trace = config.policy.explain(caller, upstream_name, message)
    shown = masked_values(_masked_arguments(config, upstream_name, message))
    click.echo(f"request: {caller.user} {list(caller.groups)} -> {upstream_name} {method} {target}")
    click.echo(format_explanation(decision, trace, shown))


def _masked_arguments(config: GatewayConfig, upstream: str, message: Message) -> Any:
    """The call's arguments as the record would keep them (every profile that applies,
    exemptions ignored): what an explanation shows of them."""
    tool = message.target if message.method == "tools/call" else None
    try:
        effect = config.masking.profiles_for(upstream, tool, ())
        return mask_json(message.arguments or {}, effect).value
    except MaskingError as exc:
        raise CheckFailed(f"the arguments cannot be masked for showing: {exc}") from None


def _explain_recorded(config: GatewayConfig, db: str, seq: int) -> None:
    """A recorded decision, explained by FILE's rules, and whether FILE is what decided it."""
    with opened(db) as store:
        row = store.event(seq)
    if row is None:
        raise CheckFailed(f"no event with seq {seq} in {db}; see `holdgate sessions show`")
    try:
        caller, message = rebuild(row)
    except NotReplayable as exc:
        raise CheckFailed(f"event {seq} cannot be explained: {exc}") from None
    upstream = row.get("upstream") or ""
    decision, trace = config.policy.explain(caller, upstream, message)
    click.echo(
        f"event {seq} at {row['ts']}: {caller.user} {list(caller.groups)} -> {upstream} "
        f"{row['method']} {row.get('target') or ''}".rstrip()
    )
    click.echo(f"recorded: {row['decision']} by {row['rule']!r} ({row['reason']})")
    if row.get("config_hash") != config.digest:
        click.echo(
            f"note: recorded under config sha256 {str(row.get('config_hash'))[:12]}, this file "
            f"is {config.digest[:12]} (the config_versions table keeps each version)"
        )
    # recorded arguments are masked already
    click.echo(format_explanation(decision, trace, masked_values(message.arguments or {})))


@policy.command("test")
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
@click.argument("tests", type=click.Path(exists=True, dir_okay=False))
def policy_test(file: str, tests: str) -> None:
    """Run policy unit tests: each case's request and the decision it expects."""
    config = load_rules(file)
    try:
        results = run_tests(config.policy, [u.name for u in config.upstreams], tests)
    except ConfigError as exc:
        raise click.UsageError(str(exc)) from None
    failed = [r for r in results if not r.passed]
    for r in results:
        click.echo(f"{'PASS' if r.passed else 'FAIL'} {r.name}")
        if not r.passed:
            want = ", ".join(f"{k} {v!r}" for k, v in r.expected.items())
            click.echo(f"     {tests}:{r.line}: expected {want}")
            click.echo(f"     got action {r.got.action!r}, rule {r.got.rule!r} ({r.got.reason})")
    click.echo(f"{len(results) - len(failed)} passed, {len(failed)} failed")
    if failed:
        sys.exit(1)


@policy.command("replay")
@click.argument("candidate", type=click.Path(exists=True, dir_okay=False))
@db_option
@since_option
@until_option
@click.option("--all", "show_all", is_flag=True, help="List every changed message.")
@format_option("A text report, or JSON for scripts.")
@click.option("--fail-on-change", is_flag=True, help="Exit 1 when any decision would change.")
def policy_replay(
    candidate: str,
    db: str,
    since: str | None,
    until: str | None,
    show_all: bool,
    fmt: str,
    fail_on_change: bool,
) -> None:
    """Decide the recorded traffic with CANDIDATE and report every decision that would change,
    grouped by rule: try a rule change on real traffic before it goes live."""
    config = load_rules(candidate)
    with opened(db) as store:
        rows = store.events(since, until)
    report = replay(config.policy, rows)
    if fmt == "json":
        click.echo(json.dumps({"candidate": candidate, **report.to_json()}, indent=2))
    else:
        click.echo(f"candidate {candidate} (sha256 {config.digest[:12]}) on {db}")
        for line in format_report(report, None if show_all else 5):
            click.echo(line)
    if fail_on_change and report.changed:
        sys.exit(1)


@policy.command("diff")
@click.argument("old", type=click.Path(exists=True, dir_okay=False))
@click.argument("new", type=click.Path(exists=True, dir_okay=False))
@click.option(
    "--store",
    "--db",
    "db",
    envvar="HOLDGATE_STORE",
    show_envvar=True,
    help="Also decide the store's recorded traffic with both and list each decision that "
    "would change (a SQLite path or a postgresql:// URL).",
)
@since_option
@until_option
@click.option("--all", "show_all", is_flag=True, help="List every changed decision.")
@format_option("A text report, or JSON for scripts.")
def policy_diff(
    old: str,
    new: str,
    db: str | None,
    since: str | None,
    until: str | None,
    show_all: bool,
    fmt: str,
) -> None:
    """Show the rules NEW adds, removes and changes against OLD (by rule name: action,
    approvers, conditions, limits, order) and, with --store, the recorded decisions that
    would change."""
    before, after = load_rules(old), load_rules(new)
    changes = diff_policies(before.policy, after.policy)
    report = None
    if db is not None:
        with opened(db) as store:
            rows = store.events(since, until)
        report = replay(after.policy, rows, baseline=before.policy)
    if fmt == "json":
        out: dict[str, Any] = {
            "old": {"file": old, "sha256": before.digest},
            "new": {"file": new, "sha256": after.digest},
            "rules": changes.to_json(),
        }
        if report is not None:
            out["decisions"] = report.to_json()
        click.echo(json.dumps(out, indent=2, ensure_ascii=False))
        return
    click.echo(f"{old} (sha256 {before.digest[:12]}) -> {new} (sha256 {after.digest[:12]})")
    for line in format_diff(changes):
        click.echo(line)
    if report is not None:
        click.echo("")
        click.echo(f"recorded traffic in {db}, decided by both:")
        for line in format_report(report, None if show_all else 5):
            click.echo(line)


@policy.command("apply")
@click.argument("candidate", type=click.Path(exists=True, dir_okay=False))
@click.option(
    "--config",
    "watched",
    required=True,
    envvar="HOLDGATE_CONFIG",
    show_envvar=True,
    type=click.Path(exists=True, dir_okay=False),
    help="The config file the gateway watches (its holdgate_config), replaced by CANDIDATE.",
)
@gateway_options
@click.option(
    "--store",
    "--db",
    "db",
    envvar="HOLDGATE_STORE",
    show_envvar=True,
    help="The gateway's audit store: CANDIDATE is replayed on its recorded traffic first, "
    "and every live replica sharing it must confirm the new config.",
)
@click.option(
    "--since",
    type=TIME,
    default="7d",
    show_default=True,
    help="Replay the traffic recorded since this ISO time, or this long ago (7d, 12h, 30m).",
)
@click.option(
    "--timeout",
    type=float,
    default=30.0,
    show_default=True,
    help="Seconds to wait for the gateway(s) to confirm the new config.",
)
def policy_apply(
    candidate: str,
    watched: str,
    gateway: str | None,
    token: str | None,
    db: str | None,
    since: str,
    timeout: float,
) -> None:
    """Check CANDIDATE, show its replay on recorded traffic, put it in place of the watched
    config file atomically and wait until the gateway confirms it is in force.

    A CANDIDATE with a mistake, or a gateway that cannot be asked, leaves the watched file
    untouched. A reload the gateway rejects is reported with its reason and the old file is
    put back; without an answer by --timeout the command says which config still runs.
    """
    try:
        config = load_config(candidate, secrets=False)
    except ConfigError as exc:
        raise CheckFailed(f"{exc.report()}\n{watched} was not replaced") from None
    new_bytes, old_bytes = Path(candidate).read_bytes(), Path(watched).read_bytes()
    if hashlib.sha256(new_bytes).hexdigest() != config.digest:
        raise CheckFailed(f"{candidate} changed while it was checked; run it again")
    client = GatewayClient(gateway_url(gateway, watched), token)
    before = in_force(client)  # unreachable or refused: nothing replaced
    click.echo(f"{candidate}: ok ({len(config.policy.rules)} rules, sha256 {config.digest[:12]})")
    with ExitStack() as stack:
        store = stack.enter_context(opened(db)) if db is not None else None
        if store is not None:
            report = replay(config.policy, store.events(since, None))
            for line in format_report(report, 3):
                click.echo(line)
        if before.config_hash == config.digest and old_bytes == new_bytes:
            click.echo(f"already in force: sha256 {config.digest[:12]}")
            return
        write_in_place(Path(watched), new_bytes)
        click.echo(f"replaced {watched}; waiting for the gateway (up to {timeout:g}s)")
        try:
            waiting = wait_in_force(client, config.digest, timeout, store)
        except Rejected as exc:
            write_in_place(Path(watched), old_bytes, "the rejected file stays in its place")
            raise CheckFailed(
                f"the gateway rejected sha256 {config.digest[:12]} and keeps "
                f"{before.config_hash[:12]}: {exc}\n{watched} was put back as it was"
            ) from None
    if waiting is not None:
        raise CheckFailed(
            f"not confirmed after {timeout:g}s: {waiting}; the gateway keeps its old config "
            f"until it reloads {watched} (is that the file it watches?)"
        )
    replicas = " and every live replica" if db is not None else ""
    click.echo(f"in force: the gateway{replicas} runs sha256 {config.digest[:12]}")
