"""How many refused certifications of one caller are recorded one by one.

Anyone who can authenticate can ask to certify; each refusal is a row in the hash-chained
store, kept for the retention period. So refusals are recorded per caller from a token
bucket: `burst` at once, refilled at `burst` per `period`; beyond it they are counted, and
the caller's next recorded refusal says how many were not recorded since the last one.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

REFUSALS_RECORDED_PER_MINUTE = 10
TRACKED_CALLERS = 4096


@dataclass
class _Bucket:
    tokens: float
    at: float
    unrecorded: int = 0


@dataclass
class RefusalBudget:
    """Per-caller token buckets; the oldest caller is forgotten beyond `callers` (its count
    of unrecorded refusals with it, as a caller that has gone quiet)."""

    burst: int = REFUSALS_RECORDED_PER_MINUTE
    period: float = 60.0
    callers: int = TRACKED_CALLERS
    _buckets: OrderedDict[str, _Bucket] = field(default_factory=OrderedDict)

    def admit(self, caller: str, now: float) -> int | None:
        """None when this refusal is over the caller's budget (not recorded, counted); else
        how many of the caller's refusals before it were not recorded."""
        bucket = self._buckets.pop(caller, None) or _Bucket(float(self.burst), now)
        self._buckets[caller] = bucket
        if len(self._buckets) > self.callers:
            self._buckets.popitem(last=False)
        elapsed = max(0.0, now - bucket.at)
        bucket.tokens = min(float(self.burst), bucket.tokens + elapsed * self.burst / self.period)
        bucket.at = now
        if bucket.tokens < 1.0:
            bucket.unrecorded += 1
            return None
        bucket.tokens -= 1.0
        unrecorded, bucket.unrecorded = bucket.unrecorded, 0
        return unrecorded

    def unrecorded(self, caller: str) -> int:
        """How many of the caller's refusals are counted and not yet reported in a row."""
        bucket = self._buckets.get(caller)
        return bucket.unrecorded if bucket is not None else 0
