"""Feeds: sends the audit trail to the config's `feeds:` (webhooks, syslog), live.

Lifecycle hooks only: no flow ever waits for a feed. It learns where the store is, and
stops at shutdown, from the AuditStore (subscribed in `default_addons()`). A supervisor
thread keeps one `FeedRunner` per configured feed, each with a store connection of its
own; a reload that changes a feed restarts its runner, one that removes a feed stops it
(its cursor row stays, so putting it back resumes where it stopped).
"""

from __future__ import annotations

import logging
import threading
import uuid
from typing import TYPE_CHECKING

from mitmproxy import ctx

from holdgate.config.options import replica_name
from holdgate.feeds.feeds_config import FeedConfig
from holdgate.feeds.runner import FeedRunner
from holdgate.store import Store, open_store

if TYPE_CHECKING:
    from holdgate.addons.config_loader import ConfigLoader

logger = logging.getLogger("holdgate")

SYNC_EVERY = 0.5  # seconds between looks at the config's feeds


class Feeds:
    def __init__(self, loader: ConfigLoader) -> None:
        self.loader = loader
        self.store_path = ""
        self.holder = ""
        self.runners: dict[str, FeedRunner] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def use_store(self, location: str) -> None:
        """The AuditStore opened the store at `location`; each runner opens its own
        connection to it."""
        self.store_path = location

    def running(self) -> None:
        # who sends, in feed_cursors.holder: the replica, and this process start
        self.holder = f"{replica_name(ctx.options)}/{uuid.uuid4().hex[:12]}"
        self._thread = threading.Thread(target=self._supervise, name="holdgate-feeds", daemon=True)
        self._thread.start()

    def shut_down(self) -> None:
        """Stop every runner (after the AuditStore closed: the last rows are written)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(SYNC_EVERY + 1)
        for runner in self.runners.values():  # all at once: none waits for another's batch
            runner.ask_to_stop()
        for runner in self.runners.values():
            runner.stop()
        self.runners.clear()

    def _supervise(self) -> None:
        while not self._stop.is_set():
            config = self.loader.current
            if config is not None:  # no config: the gateway refuses all; feeds keep going
                self.sync(config.feeds)
            self._stop.wait(SYNC_EVERY)

    def sync(self, feeds: tuple[FeedConfig, ...]) -> None:
        """Runners for exactly these feeds: new ones started, changed ones restarted."""
        wanted = {feed.name: feed for feed in feeds if feed.kind == "syslog" or feed.secret}
        for name, runner in list(self.runners.items()):
            if wanted.get(name) != runner.feed or not runner.alive:
                runner.stop()
                del self.runners[name]
                if name in wanted:
                    logger.info("holdgate: feed %r changed; restarting it", name)
        for name, feed in wanted.items():
            if name not in self.runners and self.store_path:
                runner = FeedRunner(feed, self._open_store, self.holder)
                self.runners[name] = runner
                runner.start()
                logger.info("holdgate: feed %r sends to %s", name, feed.shown_target)

    def _open_store(self) -> Store:
        return open_store(self.store_path)
