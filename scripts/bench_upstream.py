"""A minimal MCP upstream for benchmarks: raw asyncio HTTP/1.1, almost no work per request.

Run in its own process so it does not share a GIL with the load generator:

    python scripts/bench_upstream.py --port P [--sse-events N --sse-bytes B --sse-rate R]

Every POST is answered with a fixed tools/call result (JSON, keep-alive). With
`--sse-events`, a POST whose body mentions "stream_tool" is answered with a
text/event-stream of N progress notifications of about B bytes each, paced at R events/s,
then the result; each event carries the time it was written (`sent_ns`, CLOCK_REALTIME),
so a client can measure per-event latency.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time

RESULT = json.dumps(
    {
        "jsonrpc": "2.0",
        "id": 1,
        "result": {
            "content": [
                {
                    "type": "text",
                    "text": '{"name": "Ada", "email": "ada@example.com", "plan": "pro"}',
                }
            ]
        },
    }
).encode()
JSON_HEAD = (
    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(RESULT)
)
SSE_HEAD = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n"
    b"Transfer-Encoding: chunked\r\n\r\n"
)


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


async def stream(writer: asyncio.StreamWriter, events: int, size: int, rate: float) -> None:
    writer.write(SSE_HEAD)
    pad = "x" * max(0, size - 140)
    started = time.monotonic()
    burst = max(1, int(rate / 100))  # written in bursts every 10 ms
    for index in range(events):
        note = {
            "jsonrpc": "2.0",
            "method": "notifications/progress",
            "params": {"progressToken": 1, "progress": index, "sent_ns": time.time_ns()},
            "pad": pad,
        }
        writer.write(chunk(b"data: " + json.dumps(note).encode() + b"\n\n"))
        if index % burst == burst - 1:
            if writer.is_closing():  # the client went away
                return
            await writer.drain()
            ahead = started + (index + 1) / rate - time.monotonic()
            if ahead > 0:
                await asyncio.sleep(ahead)
    final = json.loads(RESULT)
    writer.write(chunk(b"data: " + json.dumps(final).encode() + b"\n\n") + chunk(b""))
    await writer.drain()


async def serve_connection(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, args: argparse.Namespace
) -> None:
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                if line[:15].lower() == b"content-length:":
                    length = int(line[15:])
            body = await reader.readexactly(length) if length else b""
            if args.sse_events and b"stream_tool" in body:
                await stream(writer, args.sse_events, args.sse_bytes, args.sse_rate)
            else:
                writer.write(JSON_HEAD + RESULT)
                await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
        pass
    finally:
        writer.close()


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--sse-events", type=int, default=0)
    parser.add_argument("--sse-bytes", type=int, default=1000)
    parser.add_argument("--sse-rate", type=float, default=10_000.0)
    args = parser.parse_args()
    server = await asyncio.start_server(
        lambda r, w: serve_connection(r, w, args), "127.0.0.1", args.port, backlog=1024
    )
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except KeyboardInterrupt:  # the benchmark stops it with SIGINT
        pass
