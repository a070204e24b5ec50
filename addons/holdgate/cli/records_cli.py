"""`holdgate sessions | export | backup | verify | purge | keys signing`: the audit trail
for people, and the key that signs its checkpoints.

Readers never create a store: a wrong `--db` says so instead of showing an empty one.
"""

from __future__ import annotations

import csv
import json
import os
import sys
from pathlib import Path

import click

from holdgate.cli.approvals_cli import decided_how
from holdgate.cli.common import (
    CheckFailed,
    db_option,
    load_rules,
    opened,
    since_option,
    store_errors,
    until_option,
)
from holdgate.cli.feeds_cli import AFTER, MAX_POLL, follow_until_signalled, start_seq
from holdgate.configfile import parse_duration
from holdgate.feeds.records import feed_line
from holdgate.recording.flowfiles import recording_files, recording_name
from holdgate.recording.segments import file_status
from holdgate.store import (
    EXPORT_FIELDS,
    ApprovalRecord,
    EventRow,
    iso,
    write_sqlite_export,
)
from holdgate.store.backup import backup_sqlite, pg_dump_command
from holdgate.store.checkpoints import (
    BadKey,
    WitnessLine,
    append_line,
    key_id,
    load_private_key,
    load_public_key,
    new_key_pair,
    read_witness,
    sign,
    tail_problem,
    verify_witness,
)
from holdgate.store.event_slices import find_message


@click.group()
def sessions() -> None:
    """Who did what, in order, per MCP session."""


@sessions.command("list")
@db_option
@since_option
def sessions_list(db: str, since: str | None) -> None:
    """Sessions with their identity, upstream, kind (mcp: the protocol's session id;
    grouped: Holdgate grouped calls without one), client (as it reports itself), first/last
    seen, events and denials."""
    with opened(db) as store:
        rows = store.sessions(since)
    if not rows:
        click.echo("no sessions recorded")
    for row in rows:
        # quoted: the client named itself, spaces and all
        client = json.dumps(row["client"], ensure_ascii=False) if row["client"] else "-"
        click.echo(
            f"{row['session_id']}  {row['user'] or '-'}  {row['upstream'] or '-'}  "
            f"{row['kind']}  {client}  "
            f"{row['first_seen']} .. {row['last_seen']}  {row['events']} events, "
            f"{row['denials']} denied"
        )


@sessions.command("show")
@db_option
@click.option(
    "--recordings",
    "recordings",
    is_flag=False,
    flag_value="recordings",
    default=None,
    metavar="DIR",
    help="Also list the session's flow files (every replica's, from the store) and check "
    "each against DIR (default: ./recordings): present, and its sha256 unchanged.",
)
@click.argument("session_id")
def sessions_show(db: str, recordings: str | None, session_id: str) -> None:
    """A session's timeline: time, identity, method/tool, decision and rule, approval (when
    it was asked, who decided, through which channel), masking. SESSION_ID may be a unique
    prefix of the id."""
    with opened(db) as store:
        rows = store.session_events(session_id)
        if not rows:
            session_id = unique_session(session_id, [s["session_id"] for s in store.sessions()])
            rows = store.session_events(session_id)
        files = (
            store.session_recordings(sorted({session_id, recording_name(session_id)}))
            if recordings is not None
            else []
        )
        asked = {
            approval_id: found
            for approval_id in {str(r["approval_id"]) for r in rows if r.get("approval_id")}
            if (found := store.approval(approval_id)) is not None
        }
    if not rows and not files:
        raise CheckFailed(f"no events for session {session_id!r}; see `holdgate sessions list`")
    shown: set[str] = set()
    for row in rows:
        click.echo(timeline_line(row))
        approval = asked.get(row.get("approval_id") or "")
        if approval is not None and approval["approval_id"] not in shown:
            shown.add(approval["approval_id"])
            click.echo("    " + approval_line(approval))
    if recordings is None:
        return
    click.echo(f"flow files ({len(files)}), checked in {recordings}:")
    changed = 0
    for file in files:
        status = file_status(recordings, file["file"], file["sha256"])
        changed += status not in ("ok", "missing")
        click.echo(
            f"  {status.upper() if status != 'ok' else 'ok'}  {file['replica'] or '-'}  "
            f"{json.dumps(file['file'])}  {file['flows']} flows  {file['bytes']} bytes  "
            f"sha256 {file['sha256']}"
        )
    if changed:
        raise CheckFailed(
            f"{changed} of the session's flow files in {recordings} are not as they were "
            "recorded (changed since they were closed, or named oddly in the store): do not "
            "trust them; the store's rows say what each held"
        )


@sessions.command("event")
@db_option
@click.option("--flow", "flow_id", help="Only this flow's stream (its flow_id).")
@click.argument("session_id")
@click.argument("number", type=click.IntRange(min=1))
def sessions_event(db: str, flow_id: str | None, session_id: str, number: int) -> None:
    """One message of a session's event stream, by its number in the stream (from 1), as
    recorded (masked): found in its own row or in the row of the slice that gathered it.
    SESSION_ID may be a unique prefix of the id."""
    with opened(db) as store:
        rows = store.session_events(session_id)
        if not rows:
            session_id = unique_session(session_id, [s["session_id"] for s in store.sessions()])
            rows = store.session_events(session_id)
    try:
        found = find_message(rows, number, flow_id)
    except ValueError as exc:
        raise CheckFailed(str(exc)) from None
    if not found:
        where = f"flow {flow_id!r} of session" if flow_id else "session"
        raise CheckFailed(
            f"no stream message #{number} in {where} {session_id!r}; `holdgate sessions show "
            f"{session_id}` lists its rows (a batch row says which numbers it holds)"
        )
    if len(found) > 1:
        flows = ", ".join(sorted({str(m.flow_id) for m in found}))
        raise CheckFailed(
            f"session {session_id!r} has {len(found)} streams with a message #{number}; "
            f"choose one with --flow (one of: {flows})"
        )
    (message,) = found
    offset = f" +{message.offset_ms} ms" if message.offset_ms is not None else ""
    click.echo(
        f"#{message.seq} {message.ts}{offset}  flow {message.flow_id}  message #{message.n}  "
        f"{message.direction or '-'} {message.method or '-'}"
    )
    if message.masked:
        click.echo("masked " + ", ".join(f"{k}={v}" for k, v in sorted(message.masked.items())))
    if message.details:
        click.echo("extra " + json.dumps(message.details, ensure_ascii=False))
    click.echo(json.dumps(message.message, ensure_ascii=False, indent=2))


def unique_session(prefix: str, session_ids: list[str]) -> str:
    """The one session id starting with `prefix`; the prefix itself when none does (the
    caller says nothing was found), an error listing the candidates when several do."""
    found = sorted({s for s in session_ids if s and s.startswith(prefix)})
    if len(found) > 1:
        listed = "\n  ".join(found[:10]) + ("\n  …" if len(found) > 10 else "")
        raise CheckFailed(
            f"session prefix {prefix!r} matches {len(found)} sessions; give more of the id:"
            f"\n  {listed}"
        )
    return found[0] if found else prefix


def approval_line(row: ApprovalRecord) -> str:
    """An approval in a session's timeline: when the call was asked, and who decided it,
    when and how (channel, and the decider as authenticated)."""
    text = f"approval {row['approval_id']}: asked {row.get('created')}, {row['state']}"
    if row.get("decider"):
        text += f" by {row['decider']}"
    if row.get("decided") and row["state"] != "pending":
        text += f" at {row['decided']}"
    try:
        decided_as = json.loads(row.get("decided_as") or "null")
    except (TypeError, ValueError):
        decided_as = None
    how = decided_how(row.get("channel"), decided_as)
    return text + (f" [{how}]" if how else "")


def timeline_line(row: EventRow) -> str:
    what = " ".join(p for p in (row.get("method"), row.get("target")) if p)
    rule = f" by {row['rule']!r}" if row.get("rule") else ""
    approval = f" approval {row['approval_id']}" if row.get("approval_id") else ""
    status = f" [{row['status']}]" if row.get("status") is not None else ""
    extra = json.loads(row.get("extra") or "{}")
    refused = extra.get("refused", {}).get("kind")
    status += f" refused: {refused}" if refused not in (None, "denied") else ""
    events = extra.get("events")
    if isinstance(events, list) and events:  # a stream's slice: `sessions event` shows one
        status += f" {len(events)} events #{events[0].get('n')}-#{events[-1].get('n')}"
    masked = ""
    if row.get("masked"):
        counts = json.loads(row["masked"] or "{}")
        masked = " masked " + ", ".join(f"{k}={v}" for k, v in sorted(counts.items()))
    return (
        f"#{row['seq']:<6} {row['ts']}  {row.get('user') or '-':<10} "
        f"{row.get('direction') or '-':<13} {what or '-'}  "
        f"{row.get('decision') or '-'}{rule}{approval}{status}{masked}"
    )


@click.command("export")
@db_option
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["jsonl", "csv", "sqlite"]),
    default="jsonl",
    show_default=True,
    help="JSON lines (JSON-valued fields as real arrays/objects), CSV (flat, as stored), "
    "or a standalone SQLite file (needs --output).",
)
@click.option("--output", "-o", type=click.Path(dir_okay=False), help="File (default: stdout).")
@since_option
@until_option
@click.option("--user", help="Only this identity.")
@click.option("--upstream", help="Only this upstream.")
@click.option(
    "--after",
    type=AFTER,
    default=0,
    help="Only rows with a seq above this one (resume from the last seq you got); "
    "`now`: only rows written from now on (with --follow).",
)
@click.option(
    "--follow",
    "-f",
    is_flag=True,
    help="Keep going: print new rows as they commit (JSON lines, seq order, flushed per "
    "batch) until SIGTERM or Ctrl-C (exit 0).",
)
@click.option(
    "--poll",
    type=click.FloatRange(0.05, MAX_POLL),
    default=0.5,
    show_default=True,
    help="Seconds between looks at the store with --follow.",
)
@click.option(
    "--flat",
    is_flag=True,
    help="JSON lines with JSON-valued fields as strings, as stored (the shape before "
    "real arrays/objects).",
)
def export(
    db: str,
    fmt: str,
    output: str | None,
    since: str | None,
    until: str | None,
    user: str | None,
    upstream: str | None,
    after: int,
    follow: bool,
    poll: float,
    flat: bool,
) -> None:
    """The audit feed (fields: store.EXPORT_FIELDS, plus `table`) for a SIEM or governance
    platform: each row once, in seq order."""
    if fmt == "sqlite" and output is None:
        raise click.UsageError("--format sqlite needs --output FILE")
    if flat and fmt != "jsonl":
        raise click.UsageError("--flat is for --format jsonl (CSV is always flat)")
    if follow:
        if fmt != "jsonl" or output or since or until or user or upstream:
            raise click.UsageError(
                "--follow prints JSON lines to stdout from --after SEQ; filter them downstream "
                "(not with --format, --output, --since, --until, --user or --upstream)"
            )
        follow_until_signalled(db, after, sys.stdout, poll=poll, flat=flat)
        return
    with opened(db) as store:
        start = start_seq(store, after)
        rows = [r for r in store.events(since, until, user, upstream) if r["seq"] > start]
    if fmt == "sqlite" and output is not None:
        with click.progressbar(length=len(rows), label="exporting", file=sys.stderr) as bar:
            write_sqlite_export(output, rows, bar.update)
        click.echo(f"{len(rows)} events written to {output}", err=True)
        return
    sink = open(output, "w", newline="", encoding="utf-8") if output else sys.stdout
    try:
        if fmt == "jsonl":
            for row in rows:
                sink.write(feed_line(row, flat=flat) + "\n")
        else:
            writer = csv.DictWriter(sink, fieldnames=list(EXPORT_FIELDS))
            writer.writeheader()
            writer.writerows(rows)
    finally:
        if output:
            sink.close()


@click.command("backup")
@db_option
@click.argument("out", type=click.Path())
@click.option("--force", is_flag=True, help="Replace OUT if it exists.")
def backup(db: str, out: str, force: bool) -> None:
    """Copy a SQLite store to OUT while the gateway runs (SQLite's online backup: rows
    still in the -wal file included, unlike cp), then check the copy's hash chain and say
    what it holds. For a PostgreSQL store, prints the pg_dump command to use instead."""
    scheme = db.partition("://")[0].lower() if "://" in db else ""
    if scheme in ("postgresql", "postgres"):
        raise CheckFailed(
            "holdgate backup copies SQLite stores; copy a PostgreSQL store with pg_dump "
            f"(the password from ~/.pgpass or PGPASSWORD):\n  {pg_dump_command(db, out)}\n"
            "then restore it into an empty database (pg_restore --dbname=URL FILE) and run "
            "holdgate verify --store URL on it"
        )
    source = db.partition("://")[2] or "." if scheme == "sqlite" else db
    with store_errors():
        report = backup_sqlite(source, out, force=force)
    counts = ", ".join(f"{table} {count}" for table, count in report.rows.items() if count)
    seq, digest = report.head
    click.echo(
        f"{out}: {report.total} rows ({counts or 'none'}), head #{seq} {digest[:16]}…, "
        f"store {report.store_id}"
    )
    chain = report.chain
    if not chain.ok:
        where = f" at {chain.at[0]} seq {chain.at[1]}" if chain.at else ""
        raise CheckFailed(
            f"the copy was written, but its hash chain is broken{where}: {chain.problem} "
            "(the store itself is: run holdgate verify on it)"
        )
    click.echo(f"ok: the copy's hash chain is intact up to head #{seq}")


@click.command("verify")
@db_option
@click.option(
    "--config",
    "config_path",
    type=click.Path(exists=True, dir_okay=False),
    help="The gateway's config: with checkpoints: and a file witness, fail when the store "
    "ends before the latest checkpoint written there (a copy missing its tail).",
)
@click.option(
    "--witness",
    type=click.Path(exists=True, dir_okay=False),
    help="Also check the signed checkpoints in this witness file (the config's "
    "checkpoints.witness) against the store: without --public-key, only that the store "
    "reaches the latest one.",
)
@click.option(
    "--public-key",
    "public_keys",
    multiple=True,
    type=click.Path(exists=True, dir_okay=False),
    help="Public key of the checkpoint signing key (FILE.pub of `keys signing new`); "
    "repeat it for each key that signed, after a rotation.",
)
def verify(
    db: str, config_path: str | None, witness: str | None, public_keys: tuple[str, ...]
) -> None:
    """Check the hash chain: proves no row was edited, removed or inserted. With the
    checkpoints' witness (--witness, or the config's), also that the store reaches the
    latest checkpoint; with --public-key, that every checkpoint is signed and that the
    store reproduces the head each one signed: proves the chain was not recomputed, cut
    short or rolled back."""
    if public_keys and not (witness or config_path):
        raise click.UsageError("--public-key is for --witness FILE (or --config)")
    witness = witness or _config_witness(config_path)
    keys = []
    for path in public_keys:
        try:
            keys.append(load_public_key(Path(path).read_bytes()))
        except BadKey as exc:
            raise click.BadParameter(f"{path}: {exc}", param_hint="--public-key") from None
    try:
        lines = read_witness(witness) if witness else []
    except OSError as exc:
        raise CheckFailed(f"cannot read the witness {witness}: {exc.strerror or exc}") from None
    with opened(db) as store:
        report = store.verify()
        if not report.ok:
            where = f" at {report.at[0]} seq {report.at[1]}" if report.at else ""
            raise CheckFailed(
                f"chain broken{where}: {report.problem} "
                f"({report.rows_checked} rows checked before it)"
            )
        head, _ = store.chain_head()
        # With keys the signed check names a cut tail too, after telling forged lines apart.
        checked = verify_witness(store, lines, keys) if witness and keys else None
        tail = tail_problem(store, lines) if witness and not keys else None
    if tail is not None:
        raise CheckFailed(f"{witness}: {tail}")
    click.echo(f"ok: {report.rows_checked} rows, head #{head}, hash chain intact")
    if witness is None:
        return
    if checked is None:
        _unsigned_note(witness, lines)
        return
    if not checked.ok:
        where = f"checkpoint #{checked.at} ({witness} line {checked.line})" if checked.at else ""
        raise CheckFailed(f"{where or witness}: {checked.problem}")
    runs = "; ".join(f"key {r.key}: #{r.first}..#{r.last}" for r in checked.runs)
    latest = checked.latest
    click.echo(
        f"ok: {checked.checked} checkpoints in {witness}, signatures good and every head "
        f"reproduced ({runs})"
        + (f"; the latest signs seq {latest.seq} at {latest.time}" if latest else "")
    )
    if checked.purge_note:
        click.echo(f"purged: {checked.purge_note}")


def _config_witness(config_path: str | None) -> str | None:
    """The config's file witness, if it has signed checkpoints (a note when not a file)."""
    if config_path is None:
        return None
    checkpoints = load_rules(config_path).checkpoints
    if checkpoints is None:
        click.echo(f"note: {config_path} configures no signed checkpoints", err=True)
        return None
    if checkpoints.witness.kind != "file":
        click.echo(
            f"note: the checkpoints' witness is {checkpoints.witness.target}, not a file this "
            "command can read: pass --witness FILE with what it received",
            err=True,
        )
        return None
    return checkpoints.witness.target


def _unsigned_note(witness: str, lines: list[WitnessLine]) -> None:
    latest = max((w.checkpoint.seq for w in lines if w.checkpoint), default=None)
    reach = f"reaches the latest checkpoint (seq {latest})" if latest else "has no checkpoint yet"
    click.echo(
        f"ok: the store {reach} in {witness}; signatures not checked "
        "(pass --public-key KEY.pub for each key that signed)"
    )


@click.command("purge")
@db_option
@click.option("--older-than", required=True, help="Retention period, e.g. 90d, 12h.")
@click.option(
    "--recordings",
    type=click.Path(file_okay=False),
    default="recordings",
    show_default=True,
    help="Folder of flow files (the gateway's holdgate_recordings).",
)
@click.option("--as", "actor", default=None, help="Who purges (recorded).")
@click.option(
    "--signing-key",
    type=click.Path(exists=True, dir_okay=False),
    help="Sign a checkpoint of the purge at once with this private key (the config's "
    "checkpoints.key); needs --witness.",
)
@click.option(
    "--witness",
    type=click.Path(dir_okay=False),
    help="The witness file the signed checkpoint of the purge is appended to.",
)
def purge(
    db: str,
    older_than: str,
    recordings: str,
    actor: str | None,
    signing_key: str | None,
    witness: str | None,
) -> None:
    """Delete rows and flow files past the retention period, but never each tool's current
    pin nor the config versions in force or named by kept rows, and record what it did."""
    seconds = parse_duration(older_than)
    if seconds is None:
        raise click.BadParameter("expected a duration like 90d or 12h", param_hint="--older-than")
    if (signing_key is None) != (witness is None):
        raise click.UsageError("--signing-key and --witness go together")
    key = None
    if signing_key is not None:
        try:
            key = load_private_key(Path(signing_key).read_bytes())
        except BadKey as exc:
            raise click.BadParameter(f"{signing_key}: {exc}", param_hint="--signing-key") from None
    with opened(db) as store:
        report = store.purge(seconds, actor=actor)
        if key is not None and witness is not None and report.checkpoint_seq is not None:
            seq, head = store.chain_head()
            signed = sign(key, store.store_id, seq, head, iso())
            try:
                append_line(witness, signed.line())
            except OSError as exc:
                raise CheckFailed(
                    f"purged, but the checkpoint could not be appended to {witness} "
                    f"({exc.strerror or exc}); the gateway signs the head when it runs"
                ) from None
    removed_files = 0
    for session in report.sessions_gone:
        for path in recording_files(recordings, session):
            path.unlink()
            removed_files += 1
    counts = ", ".join(f"{n} {t}" for t, n in sorted(report.removed.items()) if n) or "nothing"
    span = f" (seq {report.first_seq}..{report.last_seq})" if report.first_seq else ""
    kept = ", ".join(f"{n} {t}" for t, n in sorted(report.kept.items()))
    click.echo(
        f"removed {counts}{span}; {removed_files} flow files; "
        + (f"kept {kept} (current pins, config versions in use); " if kept else "")
        + f"checkpoint seq {report.checkpoint_seq}"
    )


@click.group("signing")
def signing() -> None:
    """Ed25519 keys that sign audit checkpoints (the config's checkpoints.key)."""


@signing.command("new")
@click.option(
    "--out", required=True, type=click.Path(dir_okay=False), help="The private key's file."
)
def signing_new(out: str) -> None:
    """Make a signing key: the private key at OUT (mode 0600) and its public key at OUT.pub.
    Refuses to overwrite either."""
    public = out + ".pub"
    for path in (out, public):
        if os.path.lexists(path):
            raise CheckFailed(f"{path} exists; refusing to overwrite a key: pick another --out")
    private_pem, public_pem = new_key_pair()
    try:
        for path, data, mode in ((out, private_pem, 0o600), (public, public_pem, 0o644)):
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
            with os.fdopen(fd, "wb") as sink:
                sink.write(data)
    except OSError as exc:
        raise CheckFailed(f"cannot write the key: {exc}") from None
    kid = key_id(load_public_key(public_pem))
    click.echo(f'private key: {out} (mode 0600; in the config: key: "${{file:{out}}}")')
    click.echo(
        f"public key:  {public} (key id {kid}; for "
        f"`holdgate verify --witness FILE --public-key {public}`)"
    )
