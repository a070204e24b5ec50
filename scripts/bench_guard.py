"""Micro-benchmark of the injected-credential guard on MCP tool results (not a test).

The bodies are `bench_masking.tool_result`s (customer records as JSON text, then prose),
without PII: the guard's common case is a response that holds no credential. Reports MB/s
of body for `InjectedForms.scrub_value` on the parsed message, as a whole response and as
the events of a stream (the message cut into `content[]` items sent one per event, tails
kept), and once with the credential echoed as base64 in the middle of it.

    .venv/bin/python scripts/bench_guard.py [--sizes 0.01,1,10] [--repeat 5]
"""

from __future__ import annotations

import argparse
import base64
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "addons"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_masking import tool_result  # noqa: E402
from holdgate.masking.injected import InjectedForms, StreamTails  # noqa: E402

SECRET = "Bearer hg-upstream-secret-7f3a9c2e41"


def best_of(repeat: int, run: Callable[[], object]) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return min(times)


def as_events(message: dict[str, Any], pieces: int = 64) -> list[dict[str, Any]]:
    """The message's texts cut into `pieces` progress notifications."""
    text = "".join(item["text"] for item in message["result"]["content"])
    size = -(-len(text) // pieces)
    return [
        {"jsonrpc": "2.0", "method": "notifications/progress", "params": {"message": part}}
        for part in (text[i : i + size] for i in range(0, len(text), size))
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--sizes", default="0.01,1,10", help="body sizes in MB")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    started = time.perf_counter()
    forms = InjectedForms([SECRET])
    print(f"{len(forms.forms)} forms compiled in {(time.perf_counter() - started) * 1e3:.1f} ms")
    for size_mb in (float(s) for s in args.sizes.split(",")):
        body = tool_result(int(size_mb * 1_000_000), pii=False)
        megabytes = len(body.encode()) / 1_000_000
        whole, streamed, found, events = measure(forms, body, args.repeat)
        print(
            f"clean body {megabytes:.2f} MB: whole {megabytes / whole:7.1f} MB/s   "
            f"as {events} events {megabytes / streamed:7.1f} MB/s   "
            f"with an echo {megabytes / found:7.1f} MB/s"
        )


def measure(forms: InjectedForms, body: str, repeat: int) -> tuple[float, float, float, int]:
    """Best seconds: the whole message, its events, the message with an echo in it."""
    message = json.loads(body)
    events = as_events(message)
    echoed = json.loads(body)
    blob = base64.b64encode(b"." + f"Authorization: {SECRET}\r\n".encode()).decode()
    prose = echoed["result"]["content"][1]["text"]
    half = len(prose) // 2
    echoed["result"]["content"][1]["text"] = prose[:half] + blob + prose[half:]
    if forms.scrub_value(echoed)[1] != 1:
        raise SystemExit("the guard missed the echo")

    def stream() -> None:
        tails = StreamTails()
        for event in events:
            forms.scrub_value(event, tails)

    whole = best_of(repeat, lambda: forms.scrub_value(message))
    streamed = best_of(repeat, stream)
    found = best_of(repeat, lambda: forms.scrub_value(echoed))
    return whole, streamed, found, len(events)


if __name__ == "__main__":
    main()
