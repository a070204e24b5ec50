"""The webhook notice of a new approval (`approvals.webhook`): built from the approval's
row, POSTed with retries and backoff, off the event loop; it never holds up the call."""

from __future__ import annotations

import asyncio
import json
import logging
import urllib.request
from typing import Any

logger = logging.getLogger("holdgate")

WEBHOOK_ATTEMPTS = 4


def approval_notice(row: dict[str, Any], base: str) -> dict[str, Any]:
    """What the webhook is told of a pending approval; `base` is where the API answers."""
    return {
        "type": "approval_requested",
        "approval_id": row["approval_id"],
        "requester": row["requester"],
        "upstream": row["upstream"],
        "tool": row["tool"],
        "rule": row["rule"],
        "approvers": json.loads(row["approvers"]),
        "arguments": json.loads(row["args_masked"]),
        "expires": row["expires"],
        "link": f"{base}/approvals/{row['approval_id']}",
    }


async def notify(url: str, notice: dict[str, Any]) -> None:
    """POST the notice, retrying with backoff; a failure is logged, never raised."""
    data = json.dumps(notice).encode()
    for attempt in range(WEBHOOK_ATTEMPTS):
        try:
            await asyncio.to_thread(_post_json, url, data)
            return
        except OSError as exc:
            logger.warning("holdgate: webhook attempt %d failed: %s", attempt + 1, exc)
            await asyncio.sleep(0.5 * 2**attempt)
    logger.error("holdgate: webhook gave up on approval %s", notice["approval_id"])


def _post_json(url: str, data: bytes) -> None:
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=5) as response:
        response.read()
