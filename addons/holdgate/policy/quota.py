"""Rate-limit quota: which shared counter a call counts in, and the hit it took there.

A rule's `limit: N/period` is counted in the store's `rate_counters` table, so every
replica on one store counts in the same window (see `Store.take_rate`: a fixed window
anchored at its first call). Policy decides a call before later stages may still refuse
the whole request: the audit store is down (`audit: required`, 503), a held request is
refused, the request was not addressed where its upstream's credentials may go, an
internal error. A limit counts calls that reached an upstream, so each allowed call keeps
its `Hit`, and the hits of a request refused before it was forwarded are given back.

The bucket is the rule's name and the user, and not the config's digest: a reload (any
edit of the config) or a rolling restart with replicas on two config versions must not
start anyone's window over, or each reload would hand out a fresh quota.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass


@dataclass(frozen=True)
class Hit:
    """One call counted in a bucket's window (to give back if it was never forwarded)."""

    bucket: str
    window_start: float


def rate_bucket(rule: str, user: str) -> str:
    """The counter of `rule`'s limit for `user`: a digest, so any name (quotes, NUL,
    separators, thousands of characters) makes one distinct, bounded key."""
    material = json.dumps(["rate", rule, user], ensure_ascii=True)
    return hashlib.sha256(material.encode()).hexdigest()
