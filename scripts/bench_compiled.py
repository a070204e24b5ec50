"""The small hot functions mypyc might speed up, pure against compiled (issue #31).

    .venv/bin/python scripts/bench_compiled.py [--rounds 3]
    HOLDGATE_COMPILED_DIR=build/all .venv/bin/python scripts/bench_compiled.py   (another build)

Each round runs a child process with `HOLDGATE_PURE_PYTHON=1` and one without (the build in
build/compiled, or `HOLDGATE_COMPILED_DIR`), alternating; the table is the median of the
rounds, CPU µs per item (best of 5 inside a child). What it times: SSE framing (decode and
encode 20,000 events of ~1 KB), the same stream masked (`bench.py`'s `mask_stream`), the
strict JSON-RPC parse of one `tools/call`, an audit row's normalisation and its chain hash.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

EVENTS = 20_000
CALLS = 20_000


def cpu_us(run: Callable[[], object], items: int) -> float:
    best = float("inf")
    for _ in range(5):
        began = time.process_time()
        run()
        best = min(best, time.process_time() - began)
    return best / items * 1e6


def measure() -> dict[str, float]:
    """One child's figures (the modules as `holdgate.compiled` loaded them)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import bench
    from holdgate.protocol.jsonrpc import parse_body
    from holdgate.protocol.sse import SSEDecoder, encode_event
    from holdgate.store.chain import chain_hash, normalize_row

    stream = bench.sse_stream(EVENTS)
    effect = bench.bench_masking.effects()["design example profiles"]

    def frame() -> None:
        decoder = SSEDecoder()
        for start in range(0, len(stream), 16384):
            for event in decoder.feed(stream[start : start + 16384]):
                encode_event(event)

    body = json.dumps(bench.CALL).encode()
    row = normalize_row("events", dict(bench.BENCH_ROW))
    return {
        "SSE framing, µs/event": cpu_us(frame, EVENTS),
        "SSE masked, µs/event": cpu_us(lambda: bench.mask_stream(stream, effect), EVENTS),
        "parse_body, µs/call": cpu_us(
            lambda: [parse_body(body, max_bytes=1 << 20) for _ in range(CALLS)], CALLS
        ),
        "normalize_row, µs/row": cpu_us(
            lambda: [normalize_row("events", dict(bench.BENCH_ROW)) for _ in range(CALLS)], CALLS
        ),
        "chain_hash, µs/row": cpu_us(
            lambda: [chain_hash("0" * 64, "events", row) for _ in range(CALLS)], CALLS
        ),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        from holdgate import compiled

        print(json.dumps({"modules": compiled.status().describe(), **measure()}))
        return
    modes = {"pure": "1", "compiled": ""}
    runs: dict[str, list[dict[str, float]]] = {mode: [] for mode in modes}
    described = {}
    for _ in range(max(1, min(args.rounds, 20))):
        for mode, pure in modes.items():
            done = subprocess.run(
                [sys.executable, __file__, "--child"],
                env={**os.environ, "HOLDGATE_PURE_PYTHON": pure},
                capture_output=True,
                text=True,
                check=True,
            )
            figures = json.loads(done.stdout.splitlines()[-1])
            described[mode] = figures.pop("modules")
            runs[mode].append(figures)
    for mode, text in described.items():
        print(f"{mode}: {text}")
    print(f"{'figure':<24}{'pure':>10}{'compiled':>10}{'change':>8}")
    for key in runs["pure"][0]:
        pure = statistics.median(run[key] for run in runs["pure"])
        built = statistics.median(run[key] for run in runs["compiled"])
        print(f"{key:<24}{pure:>10.2f}{built:>10.2f}{100 * (built - pure) / pure:>+7.0f}%")


if __name__ == "__main__":
    main()
