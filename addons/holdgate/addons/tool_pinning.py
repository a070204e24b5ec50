"""ToolPinning: pins tools as upstreams list them and catches definitions that change later.

A response stage (after Policy, so it sees listings as this caller gets them) observes
every `tools/list` answer; Policy asks `review` about every `tools/call`. Pins live in the
audit store's `tool_pins` rows, read at start and polled off the event loop every second,
so re-pins made with `holdgate tools pin` (or by another gateway on the same store) take
effect within about a second. Of replicas that see a new tool at once, the store keeps one
first-seen row (its writer drops the others' under the chain lock), and each folds that
one in as the pin.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from mitmproxy import exceptions, http

from holdgate.addons.flowstate import MessageContext, state
from holdgate.config.gateway_config import Upstream
from holdgate.policy.rules import Decision
from holdgate.policy.tool_pins import PinBook, review_call
from holdgate.protocol.jsonrpc import Body, HeaderParams, Message
from holdgate.store import StoreError, iso

if TYPE_CHECKING:
    from holdgate.addons.audit_store import AuditStore
    from holdgate.addons.config_loader import ConfigLoader


logger = logging.getLogger("holdgate")

POLL_INTERVAL = 1.0


class ToolPinning:
    def __init__(self, loader: ConfigLoader, audit: AuditStore) -> None:
        self.loader = loader
        self.audit = audit
        self.book = PinBook()
        self._poller: asyncio.Task[None] | None = None

    def store_opened(self, _location: str) -> None:
        """The AuditStore opened a store (subscribed in `default_addons()`): its pins are
        read now, before any flow, since calls must be judged against every pin."""
        book = PinBook()
        try:
            for row in self.audit.store().tool_pin_rows():
                book.apply(row)
        except StoreError as exc:
            raise exceptions.OptionsError(
                f"holdgate_store: cannot read the tool pins ({exc}); check the store"
            ) from None
        self.book = book

    def running(self) -> None:
        self._poller = asyncio.get_running_loop().create_task(self._poll())

    def done(self) -> None:
        if self._poller is not None:
            self._poller.cancel()

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(POLL_INTERVAL)
            await self.refresh()

    async def refresh(self) -> None:
        """Fold in pin rows written since the last look (re-pins from the CLI)."""
        try:
            last_seq = self.book.last_seq
            rows = await self.audit.run(lambda store: store.tool_pin_rows(last_seq))
        except StoreError as exc:
            logger.error("holdgate: cannot read tool pins, keeping the ones known: %s", exc)
            return
        for row in rows:
            self.book.apply(row)

    def review(
        self,
        user: str,
        upstream: Upstream,
        message: Message,
        decision: Decision,
        *,
        alert: bool = True,
    ) -> Decision:
        """Policy's decision for a call, tightened when the tool changed since pinned.
        `alert`: log a changed tool's call when its upstream says `on_tool_change: alert`."""
        if message.method != "tools/call" or message.tool is None:
            return decision
        pin = self.book.changed(upstream.name, message.tool)
        if pin is None:
            return decision
        on_change = upstream.on_tool_change
        if on_change.action == "alert" and alert:
            logger.warning(
                "holdgate: %s calls %r on %s, changed since pinned (%s); on_tool_change: alert",
                user,
                message.tool,
                upstream.name,
                ", ".join(pin.changes()),
            )
        return review_call(decision, pin, on_change, upstream.name, message.tool)

    def definition_digest(self, upstream: str, tool: str) -> str | None:
        """The digest of the tool's definition as the upstream lists it now, if seen."""
        return self.book.seen_digest(upstream, tool)

    def header_params(self, upstream: str, body: Body) -> HeaderParams | None:
        """For a lone `tools/call`, which argument each `Mcp-Param-*` header must carry, as
        the tool's listed inputSchema declares (None when the gateway has not seen it)."""
        message = body.messages[0]
        if body.is_batch or message.tool is None:
            return None
        return self.book.header_params(upstream, message.tool)

    def on_message(self, flow: http.HTTPFlow, message: Any, context: MessageContext) -> Any:
        """Pin what a `tools/list` answer shows; hide tools whose change is denied."""
        if context.answers is None or context.answers[0] != "tools/list":
            return message
        result = message.get("result") if isinstance(message, dict) else None
        if not isinstance(result, dict):
            return message
        tools = result.get("tools")
        st = state(flow)
        if not isinstance(tools, list):
            return message
        config = st.route.config
        upstream = st.route.upstream.name
        on_change = st.route.upstream.on_tool_change
        now = iso()
        kept, withheld = [], []
        for tool in tools:
            if not isinstance(tool, dict):
                continue
            row = self.book.observe(upstream, tool, now)
            if row is not None:
                if row["event"] != "first-seen":  # an alert for whoever watches the log
                    logger.error(
                        "holdgate: tool %r on %s: %s (on_tool_change: %s)",
                        row["tool"],
                        upstream,
                        row["detail"],
                        on_change.action,
                    )
                self.audit.submit(flow, config, "tool_pins", row)
            name = tool.get("name")
            if on_change.action == "deny" and isinstance(name, str):
                if self.book.changed(upstream, name) is not None:
                    withheld.append(name)
                    continue
            kept.append(tool)
        if withheld:
            st.tools_changed += withheld
        return {**message, "result": {**result, "tools": kept}}
