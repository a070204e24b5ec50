"""The audit writer alone, in-process: the gateway process's CPU per row with the thread
writer and with the process writer, on a SQLite file.

    .venv/bin/python scripts/bench_writer.py [--rows N] [--rounds R]

Three ways of submitting a 10-column events row: one durable call at a time (a lone
write-ahead), 16 durable calls at a time (concurrent write-aheads share commits), and best
effort (`submit`, then one flush). Prints, per writer and way, the process's CPU and the
submitting thread's CPU per row (µs, best of rounds) as JSON; the process writer's child
is not counted (it is the point: that work left the gateway).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "addons"))

from holdgate import store  # noqa: E402

ROW = {
    "flow_id": "f",
    "session_id": "s",
    "direction": "request",
    "decision": "allow",
    "rule": "support",
    "upstream": "crm",
    "user": "alice",
    "args_masked": '{"customer_id": 1}',
    "extra": '{"client": "bench"}',
    "config_hash": "c0ffee" * 10,
}


def ways(writer: store.Writer, rows: int) -> dict[str, Callable[[], None]]:
    def lone() -> None:
        for _ in range(rows):
            writer.submit_durable([("events", ROW)]).result(30)

    def sixteen() -> None:
        for _ in range(rows // 16):
            for done in [writer.submit_durable([("events", ROW)]) for _ in range(16)]:
                done.result(30)

    def best_effort() -> None:
        for _ in range(rows):
            writer.submit("events", ROW)
        writer.flush(60)

    return {"one durable call at a time": lone, "16 at a time": sixteen, "best effort": best_effort}


def measure(kind: str, rows: int, rounds: int) -> dict[str, dict[str, float]]:
    best: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        db = store.SqliteStore(Path(tmp) / "audit.sqlite3")
        writer = db.writer(process=kind == "process")
        try:
            for _ in range(rounds):
                for name, way in ways(writer, rows).items():
                    started = time.process_time(), time.thread_time()
                    way()
                    ended = time.process_time(), time.thread_time()
                    spent = [1e6 * (b - a) / rows for a, b in zip(started, ended, strict=True)]
                    was = best.get(name, {"process_us": spent[0], "thread_us": spent[1]})
                    best[name] = {
                        "process_us": min(was["process_us"], spent[0]),
                        "thread_us": min(was["thread_us"], spent[1]),
                    }
        finally:
            writer.close()
            db.close()
    return best


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    results = {kind: measure(kind, args.rows, args.rounds) for kind in ("thread", "process")}
    for way in results["thread"]:
        cells = [f"{results[k][way]['process_us']:.0f}" for k in results]
        print(f"{way:>28}: process CPU µs/row thread {cells[0]}, process {cells[1]}")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
