"""Tool pinning, the rug-pull defence: a tool's definition is hashed when the gateway first
sees it listed; a later listing that shows the same tool changed is caught, and the
upstream's `on_tool_change` action applies to calls of it until someone re-pins it.

The `tool_pins` rows in the audit store are the record; `PinBook` folds them into the
current state, so a restarted gateway, a second gateway on the same store and the CLI
all agree on what is pinned.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from holdgate.policy.rules import Decision, rule_lineage

TOOL_CHANGED = "tool-changed"  # the rule name decisions made here carry
PinEvent = Literal["first-seen", "changed", "restored", "pinned"]
# The parts of a tool that tell a model what it does and what it takes. `_meta` and
# unknown keys are left out: servers may vary them per request without meaning.
DEFINING_KEYS = ("name", "title", "description", "inputSchema", "outputSchema", "annotations")
DEFINITION_LIMIT = 65_536


@dataclass(frozen=True)
class ToolChangePolicy:
    """What applies to calls of a tool whose listed definition changed since it was pinned."""

    action: Literal["deny", "approve", "alert"] = "deny"
    approvers: tuple[str, ...] = ()
    timeout: float = 600.0


def tool_definition(tool: dict[str, Any]) -> dict[str, Any]:
    return {key: tool[key] for key in DEFINING_KEYS if key in tool}


def definition_digest(definition: dict[str, Any]) -> str:
    text = json.dumps(definition, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


# An `x-mcp-header` name: an HTTP token (RFC 9110), as the header `Mcp-Param-<name>` needs.
_HEADER_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")


def header_params(definition: dict[str, Any] | None) -> dict[str, tuple[str, ...]] | None:
    """Which argument each `Mcp-Param-<Name>` header mirrors, from the tool's inputSchema.

    MCP 2026-07-28: a property whose schema has `x-mcp-header: Name` travels also in the
    header `Mcp-Param-Name` (names compare case-insensitively). Returns lowercased names
    mapped to the argument's path (nested through object `properties`); None when the
    definition or its schema is unknown. A name declared twice, or not a valid header
    token, maps to nothing: a header sent for it is refused, never guessed.
    """
    if definition is None or not isinstance(definition.get("inputSchema"), dict):
        return None
    found: dict[str, list[tuple[str, ...]]] = {}
    stack: list[tuple[dict[str, Any], tuple[str, ...]]] = [(definition["inputSchema"], ())]
    while stack:
        schema, path = stack.pop()
        properties = schema.get("properties")
        if not isinstance(properties, dict) or len(path) > 16:
            continue
        for key, prop in properties.items():
            if not isinstance(prop, dict):
                continue
            name = prop.get("x-mcp-header")
            if isinstance(name, str):
                found.setdefault(name.lower(), []).append((*path, key))
            stack.append((prop, (*path, key)))
    return {
        name: paths[0]
        for name, paths in found.items()
        if len(paths) == 1 and _HEADER_TOKEN.fullmatch(name)
    }


def changed_keys(old: dict[str, Any] | None, new: dict[str, Any] | None) -> list[str]:
    """Which defining keys differ, for people reading the record."""
    old, new = old or {}, new or {}
    return [key for key in DEFINING_KEYS if old.get(key) != new.get(key)]


@dataclass
class PinState:
    """One tool on one upstream: what is pinned, and what the upstream lists now."""

    pinned_digest: str
    pinned_definition: dict[str, Any] | None
    seen_digest: str
    seen_definition: dict[str, Any] | None
    pinned_at: str | None = None
    pinned_by: str | None = None
    seen_at: str | None = None

    @property
    def changed(self) -> bool:
        return self.seen_digest != self.pinned_digest

    def changes(self) -> list[str]:
        return changed_keys(self.pinned_definition, self.seen_definition)


class PinBook:
    """The pins of every (upstream, tool), folded from `tool_pins` rows in store order."""

    def __init__(self) -> None:
        self.pins: dict[tuple[str, str], PinState] = {}
        self.last_seq = 0
        self._header_params: dict[tuple[str, str], tuple[str, Any]] = {}
        # Tools pinned here at first sight whose pin the store has not shown back yet: the
        # store keeps one first-seen row per tool, so another replica's may win.
        self._unconfirmed: set[tuple[str, str]] = set()

    def apply(self, row: Mapping[str, Any]) -> None:
        """Fold one row in: stored ones (with a seq), and the gateway's own as it writes
        them. Idempotent: the gateway's rows are folded again when read back."""
        seq = int(row.get("seq") or 0)
        self.last_seq = max(self.last_seq, seq)
        key = (row["upstream"], row["tool"])
        digest = row["definition_digest"]
        definition = _loads(row.get("definition"))
        state = self.pins.get(key)
        if seq and key in self._unconfirmed:
            self._unconfirmed.discard(key)
            state = None  # the store's first row for the tool is its pin, whoever wrote it
        if state is None or row["event"] == "pinned":
            self.pins[key] = PinState(
                digest,
                definition,
                digest,
                definition,
                pinned_at=row.get("ts"),
                pinned_by=row.get("actor"),
                seen_at=row.get("ts"),
            )
            return
        state.seen_digest = digest
        state.seen_definition = definition
        state.seen_at = row.get("ts")

    def observe(self, upstream: str, tool: dict[str, Any], now: str) -> dict[str, Any] | None:
        """A tool as listed by `upstream` now; returns the row to record when this is news
        (first sight, a change, or a return to the pinned definition)."""
        name = tool.get("name")
        if not isinstance(name, str):
            return None
        definition = tool_definition(tool)
        digest = definition_digest(definition)
        state = self.pins.get((upstream, name))
        if state is not None and state.seen_digest == digest:
            return None
        if state is None:
            event: PinEvent = "first-seen"
            detail = None
        elif digest == state.pinned_digest:
            event, detail = "restored", "the listing matches the pinned definition again"
        else:
            event = "changed"
            detail = "changed since pinned: " + ", ".join(
                changed_keys(state.pinned_definition, definition) or ["(definition)"]
            )
        row = {
            "ts": now,
            "upstream": upstream,
            "tool": name,
            "definition_digest": digest,
            "definition": _dumps(definition),
            "event": event,
            "actor": "gateway",
            "detail": detail,
        }
        self.apply(row)
        if event == "first-seen":
            self._unconfirmed.add((upstream, name))
        return row

    def header_params(self, upstream: str, tool: str) -> dict[str, tuple[str, ...]] | None:
        """The `Mcp-Param-*` mapping of the tool as the upstream lists it now (None when
        its definition has not been seen, or was too large to keep)."""
        state = self.pins.get((upstream, tool))
        if state is None:
            return None
        cached = self._header_params.get((upstream, tool))
        if cached is None or cached[0] != state.seen_digest:
            cached = (state.seen_digest, header_params(state.seen_definition))
            self._header_params[(upstream, tool)] = cached
        return cached[1]

    def seen_digest(self, upstream: str, tool: str) -> str | None:
        state = self.pins.get((upstream, tool))
        return state.seen_digest if state is not None else None

    def changed(self, upstream: str, tool: str) -> PinState | None:
        """The tool's pin state when its listed definition differs from the pinned one."""
        state = self.pins.get((upstream, tool))
        return state if state is not None and state.changed else None


def review_call(
    decision: Decision, state: PinState, on_change: ToolChangePolicy, upstream: str, tool: str
) -> Decision:
    """The decision for a call of a changed tool: the policy's, tightened by `on_change`."""
    reason = (
        f"tool {tool!r} on upstream {upstream!r} changed since it was pinned "
        f"({', '.join(state.changes()) or 'definition'}); after review, re-pin it with "
        f"`holdgate tools pin {upstream} {tool}`"
    )
    if decision.action == "deny" or on_change.action == "alert":
        return decision
    if on_change.action == "deny":
        return Decision("deny", TOOL_CHANGED, reason)
    if decision.action == "approve":
        return decision
    approve = tool_change_decision(upstream, on_change, reason)
    return approve if approve is not None else decision


def tool_change_decision(
    upstream: str, on_change: ToolChangePolicy, reason: str
) -> Decision | None:
    """The approval `on_tool_change: {action: approve}` asks for (None for another action);
    its lineage is the upstream's `on_tool_change` settings, so a reload that edits them
    voids approvals not yet spent."""
    if on_change.action != "approve":
        return None
    lineage = rule_lineage([upstream, on_change.approvers, on_change.timeout])
    return Decision(
        "approve", TOOL_CHANGED, reason, on_change.approvers, on_change.timeout, lineage=lineage
    )


def _dumps(definition: dict[str, Any]) -> str:
    text = json.dumps(definition, sort_keys=True, ensure_ascii=False)
    return text if len(text) <= DEFINITION_LIMIT else text[:DEFINITION_LIMIT] + "…[truncated]"


def _loads(text: Any) -> dict[str, Any] | None:
    if not isinstance(text, str):
        return None
    try:
        value = json.loads(text)
    except ValueError:  # a definition stored truncated
        return None
    return value if isinstance(value, dict) else None
