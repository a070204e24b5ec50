"""MCP 2026-07-28 multi round-trip requests (MRTR), the pure parts.

A `tools/call` may be answered with `{"resultType": "input_required", "inputRequests":
{...}, "requestState": "<opaque>"}`; the client then retries the same call with
`params.inputResponses` and `params.requestState`. The gateway passes `requestState`
untouched but records only its keyed digest (the link between a retry and the round that
asked), and masks `inputRequests` / `inputResponses` like any other value.
"""

from __future__ import annotations

from typing import Any

INPUT_REQUIRED = "input_required"
# What the record keeps in place of a raw requestState (the digest is in `extra`).
STATE_PLACEHOLDER = "[holdgate: requestState recorded as a digest]"


def _carrier(message: Any) -> dict[str, Any] | None:
    """The object that holds MRTR fields: a request's params or a response's result."""
    if not isinstance(message, dict):
        return None
    inner = message.get("params") if "method" in message else message.get("result")
    return inner if isinstance(inner, dict) else None


def request_state(message: Any) -> str | None:
    """The opaque `requestState` a retry (params) or an input_required result carries."""
    carrier = _carrier(message)
    if carrier is None:
        return None
    value = carrier.get("requestState")
    return value if isinstance(value, str) else None


def input_responses(message: Any) -> Any:
    """A retry's `params.inputResponses` (None for any other message)."""
    if not isinstance(message, dict) or "method" not in message:
        return None
    carrier = _carrier(message)
    return carrier.get("inputResponses") if carrier is not None else None


def is_input_required(message: Any) -> bool:
    """A result asking the client for input before the call can complete."""
    if not isinstance(message, dict) or "method" in message:
        return False
    carrier = _carrier(message)
    return carrier is not None and carrier.get("resultType") == INPUT_REQUIRED


def without_request_state(message: Any) -> Any:
    """A copy of `message` whose `requestState` (if a string) is replaced by a placeholder;
    the message itself is unchanged (it is what the client or upstream gets)."""
    carrier = _carrier(message)
    if carrier is None or not isinstance(carrier.get("requestState"), str):
        return message
    key = "params" if "method" in message else "result"
    return {**message, key: {**carrier, "requestState": STATE_PLACEHOLDER}}


def restore_request_state(message: Any, state: str) -> Any:
    """`message` (a copy made by `without_request_state`, then masked) with the original
    `requestState` back: the client must return it byte for byte, so it is never masked."""
    carrier = _carrier(message)
    if carrier is None:
        return message
    key = "params" if "method" in message else "result"
    return {**message, key: {**carrier, "requestState": state}}
