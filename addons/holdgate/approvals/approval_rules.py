"""What an approval is bound to, and how a repeated request differs from the last one.

An approval covers one exact request: the digest binds upstream, identity, method, tool
and canonical arguments (and the pinned tool definition when there is one). A request
edited while held no longer matches, and is refused. Who may see an approval through
the API is decided here too (`may_see`).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from typing import Any

from holdgate.config.gateway_config import GatewayConfig
from holdgate.protocol.canonical_json import canonical
from holdgate.store.approval_records import approver_groups


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


def grant_key(user: str, upstream: str, method: str, target: str, arguments_digest: str) -> str:
    """Which calls one grant lets pass: this user's, on this upstream, of this method and
    target, with these arguments (their keyed digest: `hash_key`, the same on every
    replica). The method is part of it: a tool and a prompt may share a name and arguments.
    A digest, so any names make one distinct, bounded key in the store's `grants` table."""
    material = json.dumps(
        ["grant", user, upstream, method, target, arguments_digest], ensure_ascii=True
    )
    return hashlib.sha256(material.encode()).hexdigest()


def may_see(row: Mapping[str, Any], user: str, groups: Iterable[str]) -> bool:
    """Whether the approvals API shows this approval to a caller.

    Its approvers see it (they must, to decide it), and so does its requester, who may
    follow the status of their own request but never decide it. Nobody else learns that
    it exists, what it asks for, or who may approve it.
    """
    return user == row.get("requester") or bool(approver_groups(row) & set(groups))


def console_operator_groups(config: GatewayConfig, operator: str) -> tuple[str, ...] | None:
    """The groups of the person named at the mitmweb console (`holdgate_mitmweb_operator`):
    those of the config's API key of that name. None when no key has it: a console has no
    token to read groups from, and a decision by someone whose groups are unknown is refused
    rather than trusted."""
    if not operator or config.identity is None:
        return None
    for key in config.identity.api_keys:
        if key.name == operator:
            return key.groups
    return None


def decision_record(row: Mapping[str, Any]) -> dict[str, Any]:
    """How an approval was decided, for the event row of the call it released: the channel
    and the decider as authenticated (an object, so the export carries it as one)."""
    out: dict[str, Any] = {}
    if row.get("channel"):
        out["channel"] = row["channel"]
    try:
        decided_as = json.loads(row.get("decided_as") or "null")
    except (TypeError, json.JSONDecodeError):
        decided_as = None
    if decided_as is not None:
        out["decided_as"] = decided_as
    return out
