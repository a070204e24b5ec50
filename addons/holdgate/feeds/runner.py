"""One feed's sender: a thread with its own store connection, never on the proxy's path.

Each round: hold the feed's lease (renewed when half of it has run), read up to `batch`
rows after the durable cursor, hand them to the sink, and only once the sink took them
move the cursor to the batch's last seq. A sink that is down is retried with capped
exponential backoff; the rows wait in the store, so the feed falls behind and catches up,
and a restart resumes from the cursor: at-least-once (a batch taken just before a crash,
its cursor not yet moved, is sent again), in seq order, deduplicable by `seq`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from holdgate.feeds.feeds_config import FeedConfig
from holdgate.feeds.sinks import Sink, SinkDown, make_sink
from holdgate.store import Store, StoreError

logger = logging.getLogger("holdgate")

LEASE = 15.0  # seconds a claim keeps the feed, by the database clock
POLL = 0.25  # seconds between reads while the feed is caught up
BACKOFF_FIRST = 0.5
BACKOFF_CAP = 30.0


def next_backoff(current: float) -> float:
    """0.5 s, 1 s, 2 s, ... up to 30 s."""
    return BACKOFF_FIRST if current <= 0 else min(current * 2, BACKOFF_CAP)


class FeedRunner:
    """Sends one feed from `open_store()`'s store until `stop()`."""

    def __init__(
        self,
        feed: FeedConfig,
        open_store: Callable[[], Store],
        holder: str,
        make: Callable[[FeedConfig], Sink] = make_sink,
        poll: float = POLL,
        lease: float = LEASE,
    ) -> None:
        self.feed = feed
        self.holder = holder
        self.sent = 0  # rows taken by the receiver
        self.failures = 0  # batches the receiver did not take
        self._open_store = open_store
        self._make = make
        self._poll = poll
        # a send in flight (up to its timeout) never outlives the lease it started under
        self._lease = max(lease, 2 * feed.timeout + 1)
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._run, name=f"holdgate-feed-{feed.name}", daemon=True
        )
        self._store: Store | None = None
        self._sink: Sink | None = None
        self._cursor: int | None = None
        self._renew_at = 0.0  # monotonic time the lease is renewed at
        self._failing = False

    def start(self) -> None:
        self._thread.start()

    def ask_to_stop(self) -> None:
        self._stop.set()

    def stop(self, timeout: float | None = None) -> None:
        """Stop after the batch in flight (bounded by the sink's timeout), give the lease up."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(self.feed.timeout + 5 if timeout is None else timeout)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def _run(self) -> None:
        backoff = 0.0
        try:
            while not self._stop.is_set():
                try:
                    wait = self.step()
                    backoff = 0.0
                except SinkDown as exc:
                    backoff = next_backoff(backoff)
                    self._down(str(exc))
                    wait = backoff
                except StoreError as exc:
                    backoff = next_backoff(backoff)
                    logger.error("holdgate: feed %r cannot read the store: %s", self.feed.name, exc)
                    self._drop_store()
                    wait = backoff
                if wait:
                    self._stop.wait(wait)
        finally:
            self._close()

    def step(self) -> float:
        """One round: how long to wait before the next (0: more rows are waiting)."""
        store = self._store_now()
        cursor = self._hold(store)
        if cursor is None:
            return self._poll * 4  # another replica sends this feed
        rows = store.feed_rows(cursor, self.feed.batch)
        if not rows:
            return self._poll
        if self._sink is None:
            self._sink = self._make(self.feed)
        self._sink.send([dict(row) for row in rows])
        last = int(rows[-1]["seq"])
        self.sent += len(rows)
        if self._failing:
            logger.warning("holdgate: feed %r is delivering again", self.feed.name)
            self._failing = False
        if store.feed_advance(self.feed.name, self.holder, last, self._lease):
            self._cursor = last
            self._renew_at = time.monotonic() + self._lease / 2
        else:
            logger.warning(
                "holdgate: feed %r was taken over by another gateway; it sends from here on",
                self.feed.name,
            )
            self._cursor = None
        return 0.0 if len(rows) == self.feed.batch else self._poll

    def _hold(self, store: Store) -> int | None:
        """The cursor while this process holds the lease (claimed or renewed as needed)."""
        if self._cursor is None or time.monotonic() >= self._renew_at:
            self._cursor = store.feed_claim(self.feed.name, self.holder, self._lease)
            self._renew_at = time.monotonic() + self._lease / 2
        return self._cursor

    def _down(self, problem: str) -> None:
        self.failures += 1
        if not self._failing:
            logger.error(
                "holdgate: feed %r: the receiver did not take a batch (%s); the rows wait "
                "in the store and are retried (backoff up to %.0fs)",
                self.feed.name,
                problem,
                BACKOFF_CAP,
            )
            self._failing = True
        if self._sink is not None:
            self._sink.close()
            self._sink = None
        if self._store is not None:
            try:
                self._store.feed_error(self.feed.name, self.holder, problem)
            except StoreError:
                self._drop_store()

    def _store_now(self) -> Store:
        if self._store is None:
            self._store = self._open_store()
            self._cursor = None
        return self._store

    def _drop_store(self) -> None:
        if self._store is not None:
            store, self._store = self._store, None
            store.close()
        self._cursor = None

    def _close(self) -> None:
        if self._sink is not None:
            self._sink.close()
        if self._store is not None:
            try:
                if self._cursor is not None:
                    self._store.feed_release(self.feed.name, self.holder)
            except StoreError as exc:
                logger.warning(
                    "holdgate: feed %r could not give its lease up: %s", self.feed.name, exc
                )
            self._drop_store()
