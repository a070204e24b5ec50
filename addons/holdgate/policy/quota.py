"""Rate-limit quota, taken when a call is decided and given back when the call never left.

Policy decides a call before later stages may still refuse the whole request: the audit
store is down (`audit: required`, 503), a held request is refused, the request was not
addressed where its upstream's credentials may go, an internal error. A limit counts
calls that reached an upstream, so each allowed call takes a `Hit`, and the hits of a
request that was refused before it was forwarded are given back.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from holdgate.policy.rules import RateLimiter


@dataclass(frozen=True)
class Hit:
    """One call counted against a rule's limit for a user."""

    rule: str
    user: str
    at: float


class Quota(RateLimiter):
    """RateLimiter's sliding windows, with each call's hit kept so it can be given back."""

    def take(self, rule: str, user: str, limit: tuple[int, float]) -> Hit | None:
        """The hit for one more call, or None when the limit is reached."""
        if not self.allow(rule, user, limit):
            return None
        return Hit(rule, user, self._hits[(rule, user)][-1])

    def give_back(self, hits: Iterable[Hit]) -> None:
        """Uncount calls that were never forwarded (a hit already out of its window is
        gone anyway)."""
        for hit in hits:
            window = self._hits.get((hit.rule, hit.user))
            if window is not None and hit.at in window:
                window.remove(hit.at)
