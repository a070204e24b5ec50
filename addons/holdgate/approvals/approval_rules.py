"""What an approval is bound to, and how a repeated request differs from the last one.

An approval covers one exact request: the digest binds upstream, identity, method, tool
and canonical arguments (and the pinned tool definition when there is one). A request
edited while held no longer matches, and is refused. Who may see an approval through
the API is decided here too (`may_see`).
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from holdgate.protocol.canonical_json import canonical


def request_digest(
    upstream: str,
    user: str,
    method: str,
    target: str | None,
    arguments: Any,
    tool_definition: str | None = None,
) -> str:
    material = canonical(
        {
            "upstream": upstream,
            "user": user,
            "method": method,
            "target": target,
            "arguments": arguments,
            "tool": tool_definition,
        }
    )
    return hashlib.sha256(material).hexdigest()


def argument_changes(previous: Any, current: Any, path: str = "$") -> list[str]:
    """JSONPath-like locations where two (masked) argument values differ."""
    if isinstance(previous, dict) and isinstance(current, dict):
        out: list[str] = []
        for key in sorted(set(previous) | set(current)):
            where = f"{path}.{key}"
            if key not in previous:
                out.append(f"{where} added")
            elif key not in current:
                out.append(f"{where} removed")
            else:
                out.extend(argument_changes(previous[key], current[key], where))
        return out
    if isinstance(previous, list) and isinstance(current, list) and len(previous) == len(current):
        return [
            c
            for i, (a, b) in enumerate(zip(previous, current, strict=True))
            for c in argument_changes(a, b, f"{path}[{i}]")
        ]
    return [] if previous == current else [f"{path} changed"]


@dataclass(frozen=True)
class Grant:
    approval_id: str
    expires_at: float


class Grants:
    """Identical calls (same user, upstream, tool, argument digest) pass during a grant window."""

    def __init__(self, clock: Any = time.time, limit: int = 10_000) -> None:
        self._clock = clock
        self._limit = limit
        self._grants: dict[tuple[str, str, str, str], Grant] = {}

    def add(self, key: tuple[str, str, str, str], approval_id: str, seconds: float) -> None:
        if seconds <= 0:
            return
        if len(self._grants) >= self._limit:
            self._grants.pop(next(iter(self._grants)))
        self._grants[key] = Grant(approval_id, self._clock() + seconds)

    def find(self, key: tuple[str, str, str, str]) -> Grant | None:
        grant = self._grants.get(key)
        if grant is None:
            return None
        if grant.expires_at <= self._clock():
            del self._grants[key]
            return None
        return grant


def approver_groups(row: Mapping[str, Any]) -> frozenset[str]:
    """The groups that may decide an approval row; none when the row's list is unreadable."""
    try:
        groups = json.loads(row.get("approvers") or "[]")
    except (TypeError, json.JSONDecodeError):
        return frozenset()
    if not isinstance(groups, list):
        return frozenset()
    return frozenset(g for g in groups if isinstance(g, str))


def may_see(row: Mapping[str, Any], user: str, groups: Iterable[str]) -> bool:
    """Whether the approvals API shows this approval to a caller.

    Its approvers see it (they must, to decide it), and so does its requester, who may
    follow the status of their own request but never decide it. Nobody else learns that
    it exists, what it asks for, or who may approve it.
    """
    return user == row.get("requester") or bool(approver_groups(row) & set(groups))
