"""ConfigLoader: loads `holdgate_config`, reloads it on change, keeps the last good one.

Every load, reload and rejected reload is announced to `listeners` (the Recorder writes
them to the store's `config_versions`), so the record says which policy was in force. The
load at start is announced once the gateway runs: a start that fails records no version.
It keeps what an operator asks about later (`/status`, the metrics): when the config in
force was loaded, how many reloads were rejected and the last one's error.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mitmproxy import ctx, exceptions
from mitmproxy.utils import human

from holdgate.config.gateway_config import GatewayConfig, load_config
from holdgate.configfile import ConfigError, parse_size
from holdgate.store import iso

logger = logging.getLogger("holdgate")

RELOAD_INTERVAL = 1.0
STARTED = "holdgate: started (mitmproxy's start-up is over)"
# How long `announce_started` waits for mitmproxy's start-up to end, in polls of 50 ms.
START_POLLS = 1200


class ConfigLoader:
    """Owns the config; other addons read `loader.current` at the moment they decide."""

    def __init__(self) -> None:
        self.current: GatewayConfig | None = None
        self.path = ""  # the file `current` was loaded from (holdgate_config)
        self.loaded_at = ""  # when `current` came into force (ISO time)
        self.reload_failures = 0  # reloads rejected since start
        self.last_reload_error: ReloadError | None = None
        self.started = False  # mitmproxy's start-up is over (`announce_started` logged)
        self.max_body = 4 * 1024 * 1024
        self._mtime: tuple[float, int] | None = None
        self._watcher: asyncio.Task[None] | None = None
        self._started: asyncio.Task[None] | None = None
        self._running = False
        self.listeners: list[Callable[[dict[str, Any]], None]] = []
        # What other addons require of a config (a reason to refuse it, or None).
        self.checks: list[Callable[[GatewayConfig], str | None]] = []

    def _announce(self, outcome: str, config: GatewayConfig | str | None, detail: str) -> None:
        """`config`: the loaded config, or the digest of a rejected file."""
        event: dict[str, Any]
        if isinstance(config, GatewayConfig):
            event = {"config_hash": config.digest, "content": config.redacted_text()}
        else:
            event = {"config_hash": config}
        event.update(
            source=ctx.options.holdgate_config, outcome=outcome, detail=detail, role="active"
        )
        for listener in self.listeners:
            listener(event)

    def load(self, loader) -> None:  # type: ignore[no-untyped-def]
        loader.add_option(
            "holdgate_config",
            str,
            "policies/default.yaml",
            "Holdgate config file: identity, upstreams, rules, masking. Reloaded when it changes.",
        )
        loader.add_option(
            "holdgate_max_body",
            str,
            "4m",
            "Largest MCP request/response body Holdgate decides on (e.g. 512k, 4m); "
            "larger ones are refused.",
        )

    def configure(self, updated: set[str]) -> None:
        if "holdgate_max_body" in updated:
            size = parse_size(ctx.options.holdgate_max_body)
            if size is None or size <= 0:
                raise exceptions.OptionsError(
                    f"holdgate_max_body: {ctx.options.holdgate_max_body!r} is not a size; "
                    "use a number of bytes or e.g. 512k, 4m"
                )
            self.max_body = size
            # mitmproxy cuts a body over its limit while reading it (never buffered whole,
            # before identity is known); ours is never looser than the operator's own.
            limit = human.parse_size(ctx.options.body_size_limit)
            if limit is None or limit > size:
                ctx.options.update(body_size_limit=str(size))
        if "holdgate_config" in updated:
            path = ctx.options.holdgate_config
            try:
                self.current = load_config(path)
            except ConfigError as exc:
                self.current = None
                raise exceptions.OptionsError(f"holdgate_config: {exc.report()}") from None
            open_ended = [
                u.name for u in self.current.upstreams if u.open_destination and u.inject_headers
            ]
            if open_ended and any(not m.startswith("reverse:") for m in ctx.options.mode):
                self.current = None
                raise exceptions.OptionsError(
                    f"holdgate_config: upstream {open_ended[0]!r} injects credentials but has "
                    "no `url` or `host`; as a regular proxy the client names the server, so "
                    "they would go wherever it says. Give it a `url`, or run in reverse mode"
                )
            if problem := self._problem(self.current):
                self.current = None
                raise exceptions.OptionsError(f"holdgate_config: {path}: {problem}")
            self._mtime = file_stamp(path)
            self.path, self.loaded_at = path, iso()
            logger.info("holdgate: loaded %s (sha256 %s)", path, self.current.digest[:12])
            if self._running:
                self._announce("loaded", self.current, "loaded by an option change")

    def announce_start(self) -> None:
        """The gateway runs: the config it started with is announced (once)."""
        if self._running:
            return
        self._running = True
        if self.current is not None:
            self._announce("loaded", self.current, "loaded at start")

    def _problem(self, config: GatewayConfig) -> str | None:
        return next((found for check in self.checks if (found := check(config))), None)

    def running(self) -> None:
        self.announce_start()
        self._watcher = asyncio.get_running_loop().create_task(self._watch())
        self._started = asyncio.get_running_loop().create_task(self._announce_started())

    async def _announce_started(self) -> None:
        await announce_started()
        self.started = True

    def done(self) -> None:
        for task in (self._watcher, self._started):
            if task is not None:
                task.cancel()

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(RELOAD_INTERVAL)
            await self.reload_if_changed()

    async def reload_if_changed(self) -> None:
        """Re-read the file off the event loop; a bad version is logged and ignored."""
        path = ctx.options.holdgate_config
        stamp = await asyncio.to_thread(file_stamp, path)
        if stamp == self._mtime:
            return
        self._mtime = stamp
        try:
            fresh = await asyncio.to_thread(load_config, path)
        except ConfigError as exc:
            logger.error(
                "holdgate: reload rejected, keeping the last good config: %s", exc.report()
            )
            self._rejected(exc.report())
            self._announce("rejected", await asyncio.to_thread(file_digest, path), str(exc))
            return
        if problem := self._problem(fresh):
            logger.error("holdgate: reload rejected, keeping the last good config: %s", problem)
            self._rejected(f"{path}: {problem}")
            self._announce("rejected", fresh.digest, problem)
            return
        if self.current is None or fresh.digest != self.current.digest:
            previous = self.current.digest if self.current is not None else None
            self.current, self.path, self.loaded_at = fresh, path, iso()
            logger.warning("holdgate: reloaded %s (sha256 %s)", path, fresh.digest[:12])
            self._announce("reloaded", fresh, f"replaces sha256 {previous}")

    def _rejected(self, error: str) -> None:
        self.reload_failures += 1
        self.last_reload_error = ReloadError(iso(), error)


@dataclass(frozen=True)
class ReloadError:
    """A rejected reload: when, and the error as logged (file:line: what is wrong)."""

    at: str
    error: str


def file_digest(path: str) -> str | None:
    """The sha256 of the file's bytes (a config's `digest` when it is the config loaded),
    None when it cannot be read. Blocking: call it off the event loop."""
    try:
        return hashlib.sha256(Path(path).read_bytes()).hexdigest()
    except OSError:
        return None


def file_stamp(path: str) -> tuple[float, int] | None:
    try:
        st = os.stat(Path(path))
    except OSError:
        return None
    return (st.st_mtime, st.st_size)


async def announce_started() -> None:
    """Log `STARTED` once mitmproxy's start-up is over.

    mitmproxy listens before its addons' `running` hooks have run, and exits if anything
    logs an error before they are done (its `errorcheck` addon): a request refused with an
    error in that window stops the gateway. Whoever starts the gateway (the tests, a probe)
    waits for this line, logged once that check has ended (its log handler is gone)."""
    errorcheck = ctx.master.addons.get("errorcheck")
    handler = getattr(errorcheck, "logger", None)
    for _ in range(START_POLLS):
        if handler is None or handler not in logging.getLogger().handlers:
            break
        await asyncio.sleep(0.05)
    logger.info(STARTED)
