"""`holdgate export --follow` (the live feed on stdout) and `holdgate feeds` (each
configured feed's cursor and lag).

Following reads rows with seq > the last one printed, in seq order, so it neither repeats
nor skips a row while gateways write (see `store/feed_records.py` for why that holds on
both backends); SIGTERM or Ctrl-C ends it with exit status 0 after the batch in flight.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType
from typing import Any, TextIO

import click

from holdgate.cli.common import db_option, opened
from holdgate.feeds.records import feed_line
from holdgate.store import Store

FOLLOW_BATCH = 500
MAX_POLL = 60.0


class AfterSeq(click.ParamType[int]):
    """A seq to start after (0: from the start), or `now`: only rows written from now on."""

    name = "seq"
    NOW = -1

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        text = str(value).strip().lower()
        if text in ("now", "-1"):
            return self.NOW
        if not text.isdigit():
            self.fail(
                f"{value!r} is not a seq (a whole number, 0 for the start) nor `now`", param, ctx
            )
        return int(text)


AFTER = AfterSeq()


def start_seq(store: Store, after: int) -> int:
    return store.chain_head()[0] if after == AfterSeq.NOW else after


def follow(
    store: Store,
    after: int,
    out: TextIO,
    stop: threading.Event,
    *,
    poll: float,
    flat: bool,
) -> int:
    """Print rows after `after` as they commit until `stop`; the last seq printed."""
    cursor = start_seq(store, after)
    while not stop.is_set():
        rows = store.feed_rows(cursor, FOLLOW_BATCH)
        if rows:
            out.write("".join(feed_line(r, flat=flat) + "\n" for r in rows))
            out.flush()
            cursor = int(rows[-1]["seq"])
        if len(rows) < FOLLOW_BATCH:
            stop.wait(poll)
    return cursor


def follow_until_signalled(db: str, after: int, out: TextIO, *, poll: float, flat: bool) -> None:
    """`follow` with SIGTERM/SIGINT ending it cleanly."""
    stop = threading.Event()

    def ask_to_stop(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = {s: signal.signal(s, ask_to_stop) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        with opened(db) as store:
            follow(store, after, out, stop, poll=poll, flat=flat)
    except BrokenPipeError:
        pass  # the reader went away: nothing left to print to
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


@click.command("feeds")
@db_option
def feeds(db: str) -> None:
    """Each feed's cursor (the last seq its receiver took), its head (the last event's
    seq), the lag (events still to send), who sends it (a lease by the database clock) and
    its latest delivery error.

    A feed sends the `events` table only, so its head is the last event, not the chain's
    head (approvals, config versions and pins are chained too): a feed that is up to date
    has seq equal to head and lag 0."""
    with opened(db) as store:
        rows = store.feed_cursors()
        head = store.feed_head()
        now = store.db_now()
        lags = {row["feed"]: store.feed_pending(int(row["seq"] or 0)) for row in rows}
    if not rows:
        click.echo("no feed has run against this store (the config's `feeds:`)")
    for row in rows:
        lease = float(row["lease_until"] or 0.0)
        holder = row["holder"] or "-"
        held = (
            f"held by {holder} ({lease - now:.0f}s left)"
            if lease > now
            else f"idle (last sent by {holder})"
        )
        error = f"  last error: {row['last_error']}" if row["last_error"] else ""
        click.echo(
            f"{row['feed']}  seq {row['seq']}  head {head}  lag {lags[row['feed']]} events  "
            f"{held}{error}"
        )
