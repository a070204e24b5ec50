"""Canonical JSON: one byte form of a value, for hashes and digests that must be stable.

Keys sorted, no whitespace, UTF-8 (lone surrogates kept, as JSON can carry them), NaN and
infinities refused. The audit chain hashes rows in this form, so it must never change.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from typing import Any

_ENCODER = json.JSONEncoder(
    sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
)


def canonical(value: Any) -> bytes:
    """Raises ValueError for NaN or infinity, TypeError for what JSON cannot hold."""
    return _ENCODER.encode(value).encode("utf-8", "surrogatepass")


def args_digest(key: bytes, value: Any) -> str | None:
    """Keyed digest of raw arguments: identical calls correlate, values stay unknown."""
    if value is None:
        return None
    return hmac.new(key, canonical(value), hashlib.sha256).hexdigest()
