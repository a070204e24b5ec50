"""Reading approvals from a store that has seen many: the held calls' sweep and the inbox.

    python scripts/bench_approvals.py --tree TREE [--approvals N] [--repeat R] [--store URL]

Imports Holdgate from TREE (this checkout, or another revision's worktree for `bench.py
--scenario approvals --against REV`), writes N approvals to a new SQLite store (or to
`--store`, an empty PostgreSQL database's URL) (each
decided but every 100th, which stays pending, and one annotation per decided one), then
prints as JSON the best of R runs, in ms, of: `approval_states` for the 10 approvals a
gateway holding 10 calls asks about four times a second (`sweep_10_ms`), and `approvals(
pending_only=True)` (`pending_ms`) and `approvals()` (`all_ms`), the reads behind the approvals
API and `holdgate approvals list`, and what one inbox page reads (`inbox_ms`).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tree", type=Path, required=True)
    parser.add_argument("--approvals", type=int, default=20_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--store", help="an empty PostgreSQL database (default: SQLite)")
    args = parser.parse_args()
    sys.path.insert(0, str(args.tree / "addons"))
    from holdgate import store

    with tempfile.TemporaryDirectory() as tmp:
        with store.open_store(args.store or str(Path(tmp) / "audit.sqlite3")) as opened:
            held = fill(opened, args.approvals)
            print(
                json.dumps(
                    {
                        "approvals": args.approvals,
                        "sweep_10_ms": best(args.repeat, lambda: opened.approval_states(held)),
                        "pending_ms": best(
                            args.repeat, lambda: opened.approvals(pending_only=True)
                        ),
                        "all_ms": best(args.repeat, opened.approvals),
                        "inbox_ms": best(args.repeat, lambda: inbox_reads(opened)),
                    }
                )
            )


def fill(opened: Any, count: int) -> list[str]:
    """`count` approvals as a busy gateway leaves them; the ids of the 10 newest pending."""
    pending = []
    for i in range(count):
        approval_id = f"a{i:08d}"
        request = {
            "approval_id": approval_id,
            "requester": f"user{i % 50}",
            "upstream": "db",
            "method": "tools/call",
            "tool": "run_sql",
            "args_masked": json.dumps({"query": f"SELECT {i} FROM orders"}),
            "rule": "sql needs a dba",
            "approvers": '["dba"]',
            "created": "2026-12-01T00:00:00.000Z",
            "expires": "2999-01-01T00:00:00.000Z",
            "ts": "2026-12-01T00:00:00.000Z",
        }
        opened.create_approval(request)
        if i % 100 == 0:
            pending.append(approval_id)
            continue
        # each state row copies the request's columns, as the gateway's decisions do
        decided = {**request, "ts": "2026-12-01T00:01:00.000Z"}
        opened.append("approvals", {**decided, "state": "approved", "decider": "dana"})
        opened.append("approvals", {**decided, "state": "grant_used"})
    return pending[-10:]


def inbox_reads(opened: Any) -> object:
    """What the tree's inbox reads for one page: the pending approvals and the viewer's own
    newest 50 (a tree from before schema 9 read every approval)."""
    try:
        return opened.approvals(pending_only=True), opened.approvals(requester="user7", newest=50)
    except TypeError:
        return opened.approvals()


def best(repeat: int, read: Callable[[], object]) -> float:
    times = []
    for _ in range(repeat):
        began = time.perf_counter()
        read()
        times.append(1000 * (time.perf_counter() - began))
    return min(times)


if __name__ == "__main__":
    main()
