"""DecisionLog: one console line per decision, and the decision in mitmweb's flow list.

mitmproxy logs every call as `POST …/mcp << 200 OK`: a denial (a JSON-RPC error in a 200)
looks like a success, and a held call logs nothing. The PolicyEnforcer and the
ApprovalHolds hand each decision here, which logs it at the level `holdgate_decision_log`
names, in the words of the flow's comment (`flowstate.decision_text`). In mitmweb the
comment column is added to the flow list, unless the operator chose the columns.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from mitmproxy import ctx, exceptions, http

from holdgate.addons.flowstate import DecidedMessage, decision_text, state

logger = logging.getLogger("holdgate")

LEVELS: dict[str, int | None] = {"info": logging.INFO, "warn": logging.WARNING, "off": None}
COMMENT_COLUMN = "comment"


class DecisionLog:
    def __init__(self) -> None:
        self.level: int | None = logging.INFO
        self._columns_chosen = False

    def load(self, loader) -> None:  # type: ignore[no-untyped-def]
        loader.add_option(
            "holdgate_decision_log",
            str,
            "info",
            "Level of the console line logged for each decision (allow, deny, hold, "
            "approved, denied, expired): info, warn, or off.",
            choices=list(LEVELS),
        )

    def configure(self, updated: set[str]) -> None:
        if "holdgate_decision_log" in updated:
            chosen = ctx.options.holdgate_decision_log
            if chosen not in LEVELS:
                raise exceptions.OptionsError(
                    f"holdgate_decision_log: {chosen!r} is not a level; use one of "
                    f"{', '.join(LEVELS)}"
                )
            self.level = LEVELS[chosen]
        if not self._columns_chosen and "web_columns" in ctx.options:  # mitmweb only
            self._columns_chosen = True
            columns = with_comment_column(
                list(ctx.options.web_columns), list(ctx.options.default("web_columns"))
            )
            if columns is not None:
                ctx.options.update(web_columns=columns)

    def decided(self, flow: http.HTTPFlow, messages: Iterable[DecidedMessage]) -> None:
        """Log each message's decision as it stands now."""
        if self.level is None:
            return
        st = state(flow)
        for decided in messages:
            logger.log(self.level, "holdgate decision: %s", decision_text(st, decided))


def with_comment_column(current: list[str], default: list[str]) -> list[str] | None:
    """mitmweb's columns with the comment (where each decision is written) added, or None
    to leave them: an operator who set `web_columns` keeps their choice."""
    if current != default or COMMENT_COLUMN in current:
        return None
    return [*current, COMMENT_COLUMN]
