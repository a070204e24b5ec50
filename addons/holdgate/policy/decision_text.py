"""A decision in one line of words: the gateway's console line and the flow's mitmweb comment.

Both say the same, so an operator tailing the log and one looking at mitmweb's list read
one story: who called what, what was decided (`OUTCOMES`), by which rule, and for a held
call its approval, approvers and expiry, then who decided it and how. Never an argument
value: only names the config, the client or the store gave (caller, method, target, rule,
approver groups, decider), each kept to one printable line.
"""

from __future__ import annotations

import time
import unicodedata
from dataclasses import dataclass

from holdgate.escapes import UNSHOWN

# What can happen to one message: the policy's allow / deny, a hold for a human, and how
# the hold ended.
OUTCOMES = ("allow", "deny", "hold", "approved", "denied", "expired", "cancelled")
MAX_NAME = 200  # a caller-chosen name (a tool, a user) is cut beyond this


@dataclass(frozen=True)
class DecisionText:
    """One message's decision, as shown."""

    user: str | None
    method: str | None
    target: str | None
    outcome: str
    rule: str
    approval_id: str | None = None
    approvers: tuple[str, ...] = ()
    expires: float | None = None  # epoch seconds, while held
    decider: str | None = None
    channel: str | None = None  # how the decider decided (api, cli, mitmweb, ...)
    note: str | None = None  # e.g. "grant window", or why an approval was void

    def __str__(self) -> str:
        what = " ".join(one_line(p) for p in (self.method, self.target) if p) or "(no method)"
        head = f"{one_line(self.user) if self.user else '(unauthenticated)'} {what}: {self.outcome}"
        if self.decider:
            head += f" by {one_line(self.decider)}"
            if self.channel:
                head += f" via {one_line(self.channel)}"
        details = [f"rule {one_line(self.rule)!r}"]
        if self.approval_id:
            details.append(f"approval {self.approval_id}")
        if self.approvers:
            details.append("approvers " + ", ".join(one_line(a) for a in self.approvers))
        if self.expires is not None:
            details.append("expires " + time.strftime("%H:%M:%SZ", time.gmtime(self.expires)))
        if self.note:
            details.append(one_line(self.note))
        return f"{head} ({'; '.join(details)})"


def one_line(text: str) -> str:
    """`text` as one printable line: control and format characters (newlines, ANSI escapes,
    bidi overrides) shown as escapes, so a caller cannot forge or hide a log line."""
    cut = text if len(text) <= MAX_NAME else text[:MAX_NAME] + "…"
    if cut.isprintable():  # no Cc/Cf/Zl/Zp in it (they are all unprintable): most names
        return cut
    return "".join(ascii(c)[1:-1] if unicodedata.category(c) in UNSHOWN else c for c in cut)


def held_outcome(state: str | None) -> str:
    """The outcome of a held message from its approval's state (`pending` is still a hold)."""
    return state if state in ("approved", "denied", "expired", "cancelled") else "hold"
