"""ShadowPolicy: a candidate config (`holdgate_shadow`) decided beside the one in force.

The PolicyEnforcer asks `decide_beside` after each of its own decisions; the answer is
never enforced: it only goes in the decision row (`extra.shadow`, where it differs) and
in the flow's mitmweb comment. Whatever the candidate does, a client sees the policy in
force: an exception in the candidate is counted by type (its message could quote an
argument, so it is never logged), and a request's messages beyond its time budget are
skipped and counted. The candidate's loads, rejected reloads and a summary per minute
(evaluated, same, changed, errors, skipped, and each candidate rule's calls) are
`config_versions` rows with role `candidate`, so they are chained with the rest.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from typing import Any

from mitmproxy import ctx, exceptions

from holdgate.addons.config_loader import RELOAD_INTERVAL, file_digest, file_stamp
from holdgate.config.gateway_config import GatewayConfig, load_config
from holdgate.config.options import replica_name
from holdgate.configfile import ConfigError
from holdgate.policy.quota import rate_bucket
from holdgate.policy.rules import Decision, Policy
from holdgate.policy.shadow import (
    ROLE,
    SUMMARY,
    ShadowAllowance,
    ShadowBudget,
    ShadowRateWindows,
    ShadowTally,
    difference_kind,
    shadow_record,
)

logger = logging.getLogger("holdgate")

SUMMARY_INTERVAL = 60.0

# What the enforcer hands over: the candidate's decision by the enforcer's own steps
# (task ownership, tool pins) for a given policy.
Deciding = Callable[[Policy], Decision]


class ShadowPolicy:
    def __init__(self) -> None:
        self.candidate: GatewayConfig | None = None
        self.tally = ShadowTally()
        self.windows = ShadowRateWindows()
        self.budget_seconds = ShadowBudget().seconds
        self.allowance = ShadowAllowance()
        # the Recorder's `note_config_version`, subscribed in `default_addons()`
        self.listeners: list[Callable[[dict[str, Any]], None]] = []
        self._mtime: tuple[float, int] | None = None
        self._since = time.monotonic()
        self._tasks: list[asyncio.Task[None]] = []

    def load(self, loader) -> None:  # type: ignore[no-untyped-def]
        loader.add_option(
            "holdgate_shadow",
            str,
            "",
            "A candidate config decided beside the one in force on live traffic and never "
            "enforced; where it decides differently, the decision row says so (holdgate "
            "shadow report). Reloaded when it changes. Empty: none.",
        )

    def configure(self, updated: set[str]) -> None:
        if "holdgate_shadow" not in updated:
            return
        path = ctx.options.holdgate_shadow
        if not path:
            self.write_summary()
            self.candidate = None
            return
        # At start a candidate that cannot load stops the gateway, as a broken config does;
        # set later (mitmweb's options), mitmproxy keeps the option and candidate it had.
        try:
            fresh = load_config(path, secrets=False)
        except ConfigError as exc:
            raise exceptions.OptionsError(f"holdgate_shadow: {exc.report()}") from None
        self._mtime = file_stamp(path)
        self._put_in_place(fresh, "loaded", f"holdgate_shadow set to {path}")

    def running(self) -> None:
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._watch()), loop.create_task(self._summarize())]

    def done(self) -> None:
        for task in self._tasks:
            task.cancel()
        self.write_summary()  # the last minute's, while the store is still open

    # --- deciding ---

    def budget(self) -> ShadowBudget:
        """The candidate's time for one request."""
        return ShadowBudget(self.budget_seconds)

    def decide_beside(
        self, active: Decision, deciding: Deciding, user: str, budget: ShadowBudget
    ) -> dict[str, Any] | None:
        """The candidate's decision where it differs from `active` (`extra.shadow`), else
        None. Never raises and never changes `active`."""
        candidate = self.candidate
        if candidate is None:
            return None
        started = time.perf_counter()
        if budget.exhausted or not self.allowance.available(started):
            self.tally.skipped += 1
            return None
        try:
            decision = self._limited(deciding(candidate.policy), user)
        # Whatever the candidate raises is its own failure, never the call's: counted by
        # type and left out of the log (an exception's text may quote an argument).
        except Exception as exc:
            self.tally.failed(exc)
            return None
        finally:
            spent = time.perf_counter() - started
            budget.spent += spent
            self.allowance.spend(spent)
        kind = difference_kind(active, decision)
        self.tally.decided(decision, kind)
        return None if kind is None else shadow_record(decision, candidate.digest, kind)

    def _limited(self, decision: Decision, user: str) -> Decision:
        """The candidate's rate limit, counted in its own windows."""
        if decision.action != "allow" or decision.limit is None:
            return decision
        count, per = decision.limit
        taken = self.windows.take(rate_bucket(decision.rule, user), per, time.monotonic())
        if taken <= count:
            return decision
        return Decision(
            "deny",
            decision.rule,
            f"rate limit of {count} per {int(per)}s reached for {user}",
            rate_limited=True,
        )

    # --- loading and recording ---

    def _put_in_place(self, fresh: GatewayConfig, outcome: str, detail: str) -> None:
        previous = self.candidate
        if previous is not None and previous.digest != fresh.digest:
            self.write_summary()  # the old candidate's counts end with it
        self.candidate = fresh
        self.windows = ShadowRateWindows()
        logger.info(
            "holdgate: shadow policy %s %s (sha256 %s)",
            outcome,
            ctx.options.holdgate_shadow,
            fresh.digest[:12],
        )
        self._announce(
            {"config_hash": fresh.digest, "content": fresh.redacted_text()}, outcome, detail
        )

    def _announce(self, event: dict[str, Any], outcome: str, detail: str) -> None:
        event.update(
            source=ctx.options.holdgate_shadow,
            outcome=outcome,
            detail=detail,
            role=ROLE,
            replica=replica_name(ctx.options),
        )
        for listener in self.listeners:
            listener(event)

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(RELOAD_INTERVAL)
            await self.reload_if_changed()

    async def reload_if_changed(self) -> None:
        """Re-read the candidate off the event loop; a bad version is logged, recorded as
        rejected, and the last good candidate stays."""
        path = ctx.options.holdgate_shadow
        if not path:
            return
        stamp = await asyncio.to_thread(file_stamp, path)
        if stamp == self._mtime:
            return
        self._mtime = stamp
        try:
            fresh = await asyncio.to_thread(load_config, path, secrets=False)
        except ConfigError as exc:
            logger.error(
                "holdgate: shadow policy reload rejected, keeping the last good candidate: %s",
                exc.report(),
            )
            digest = await asyncio.to_thread(file_digest, path)
            self._announce({"config_hash": digest}, "rejected", str(exc))
            return
        if self.candidate is None or fresh.digest != self.candidate.digest:
            previous = self.candidate.digest if self.candidate is not None else None
            self._put_in_place(fresh, "reloaded", f"replaces sha256 {previous}")

    async def _summarize(self) -> None:
        while True:
            await asyncio.sleep(SUMMARY_INTERVAL)
            self.write_summary()

    def write_summary(self) -> None:
        """A summary row of the counts since the last one (none when nothing happened)."""
        candidate, tally = self.candidate, self.tally
        now = time.monotonic()
        if candidate is None or tally.empty:
            self._since = now
            return
        self.tally = ShadowTally()
        detail = tally.summary(tuple(r.name for r in candidate.policy.rules), now - self._since)
        self._since = now
        if tally.errors:
            logger.warning(
                "holdgate: the shadow policy failed on %d call(s) in the last %.0fs (%s); "
                "the policy in force decided them",
                sum(tally.errors.values()),
                detail["seconds"],
                ", ".join(sorted(tally.errors)),
            )
        self._announce({"config_hash": candidate.digest}, SUMMARY, json.dumps(detail))
