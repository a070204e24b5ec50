"""Where the gateway's event loop spends its time: py-spy on a live gateway under load.

    .venv/bin/python scripts/profile.py [--seconds 20] [--concurrency 16] [--raw FILE]
    .venv/bin/python scripts/profile.py --sse-rate 4000      (one call answered by SSE)

Starts the bench's minimal upstream and a gateway with the bench's config (JWT identity,
~50 rules, masking, recorder), drives `tools/call` at the given concurrency and samples
the gateway with `py-spy record --gil` (only samples holding the interpreter lock: what
limits one gateway's throughput). Prints the share of samples spent in Holdgate's hook
bodies, in mitmproxy's dispatch of hooks, in mitmproxy's own HTTP work and in Holdgate's
threads, then Holdgate's functions by inclusive share. With `--sse-rate`, one call is
answered by a stream of 1 KB events at that rate for the sampled time instead. Needs
`py-spy` (`pip install
py-spy`) and ptrace rights (root, or `kernel.yama.ptrace_scope=0`).
"""

from __future__ import annotations

import argparse
import asyncio
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import bench

FRAME_FILE = re.compile(r" \((?P<file>[^:)]*)(?::\d+)?\)$")
OURS = "holdgate/"
GLUE = ("holdgate/addons/pipeline.py", "holdgate/addons/flowstate.py")


def parse_raw(path: Path) -> list[tuple[list[str], int]]:
    """py-spy's raw (collapsed) output: `frame;frame;… count` per line."""
    stacks = []
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if stack:
            stacks.append((stack.split(";"), int(count)))
    return stacks


def is_ours(frame: str) -> bool:
    return OURS in frame and not any(glue in frame for glue in GLUE)


def where(frames: list[str]) -> str:
    """Which part of the gateway a sample is in."""
    hooks = [i for i, frame in enumerate(frames) if "trigger_event" in frame]
    if not hooks:
        if not any(is_ours(frame) for frame in frames):
            return "mitmproxy: HTTP, I/O"
        if any("threading.py" in frame for frame in frames):
            return "holdgate threads (audit writer, recordings feeder, pollers)"
        return "holdgate outside hooks (the SSE stream callable)"
    below = frames[hooks[-1] + 1 :]
    if any(is_ours(frame) for frame in below):
        return "holdgate hook bodies"
    if any("mitmproxy/addons/" in frame for frame in below):
        return "mitmproxy's own addons"
    return "mitmproxy: hook dispatch"


def function_name(frame: str) -> str:
    return FRAME_FILE.sub("", frame)


def breakdown(stacks: list[tuple[list[str], int]], top: int) -> None:
    total = sum(count for _, count in stacks) or 1
    parts: Counter[str] = Counter()
    functions: Counter[str] = Counter()
    for frames, count in stacks:
        parts[where(frames)] += count
        for name in {function_name(f) for f in frames if is_ours(f)}:
            functions[name] += count
    print(f"\n{total} samples holding the interpreter lock")
    for part, count in parts.most_common():
        print(f"  {100 * count / total:5.1f}%  {part}")
    print(f"\nHoldgate's functions, inclusive (top {top})")
    for name, count in functions.most_common(top):
        print(f"  {100 * count / total:5.1f}%  {name}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=int, default=20)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--raw", type=Path, help="keep py-spy's raw output here")
    parser.add_argument("--sse-rate", type=int, help="profile one SSE stream at N events/s")
    args = parser.parse_args()
    stream: tuple[str, ...] = ()
    if args.sse_rate:
        events = args.sse_rate * (args.seconds + 5)
        stream = ("--sse-events", str(events), "--sse-bytes", "1000")
        stream += ("--sse-rate", str(args.sse_rate))
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(spy).exists():
        sys.exit("py-spy is not installed: .venv/bin/pip install py-spy")
    with tempfile.TemporaryDirectory() as tmp_name, bench.upstream(*stream) as up:
        tmp = Path(tmp_name)
        signer = bench.Signer(tmp)
        gateway = bench.Proxy(tmp, up, bench.gateway_config(up, signer.jwks))
        auth = {"Authorization": f"Bearer {signer.token}"}
        raw = args.raw or tmp / "profile.txt"
        try:
            bench.drive(gateway.port, args.concurrency, 4 * args.concurrency, 10, auth)
            sampler = subprocess.Popen(
                [spy, "record", "--gil", "--rate", "200", "--duration", str(args.seconds)]
                + ["--format", "raw", "--output", str(raw), "--pid", str(gateway.proc.pid)],
                stdout=subprocess.DEVNULL,
            )
            time.sleep(1)  # py-spy attaches
            before = gateway.cpu_seconds()
            if args.sse_rate:
                streamed = asyncio.run(bench.read_stream(gateway.port, auth))
                cpu = 1e6 * (gateway.cpu_seconds() - before) / max(streamed["events"], 1)
                summary = f"SSE at {args.sse_rate}/s: {cpu:.0f} µs CPU per event"
            else:
                # a bounded load: as many calls as fit in the sampled time, at most 10^6
                run = bench.drive(gateway.port, args.concurrency, 10**6, args.seconds - 2, auth)
                cpu = 1000 * (gateway.cpu_seconds() - before) / max(run["requests"], 1)
                summary = f"c{args.concurrency}: {run['rps']:.0f} req/s, {cpu:.2f} ms CPU/request"
            sampler.wait(timeout=args.seconds + 60)
        finally:
            gateway.stop()
        print(summary)
        breakdown(parse_raw(raw), args.top)


if __name__ == "__main__":
    main()
