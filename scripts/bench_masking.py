"""Micro-benchmark of masking throughput on a realistic MCP tool result (not a test).

The body is a tools/call result whose `content[0].text` is JSON text of customer records
and `content[1].text` is plain prose, roughly 70/30 by size. Two kinds: `pii`, records
dense with e-mails, phones, cards, IBANs and SSNs (every record holds some), and `clean`,
the same records without any sensitive value (the common case). Reports MB/s of body text
for `mask_json` on the parsed message (embedded JSON parsed, masked and re-serialised
inside), and for the whole response path (`response_path`: strict parse, mask, the
upstream's bytes when nothing changed or the masked message written out).

`--compare LEVER` measures with the lever off and on, alternating run by run (best of
`--repeat` each), so both figures come from the same conditions on a noisy machine.
`--clock cpu` times with the process's CPU time instead of the wall clock: steadier on a
machine other work loads. `--addons PATH` measures another checkout's holdgate (a
worktree of an older commit) with this script, for before/after figures.

    .venv/bin/python scripts/bench_masking.py [--sizes 1,10] [--repeat 5] [--kinds pii,clean]
                                              [--compare prefilter|orjson|verbatim]
                                              [--clock wall|cpu] [--addons PATH]
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from unittest import mock


def _addons() -> str:
    """The holdgate measured: `--addons PATH` if given (read before the imports), else ours."""
    if "--addons" in sys.argv[:-1]:
        return sys.argv[sys.argv.index("--addons") + 1]
    return str(Path(__file__).resolve().parent.parent / "addons")


sys.path.insert(0, _addons())

from holdgate.masking import masker, prefilter  # noqa: E402
from holdgate.masking.detectors import BUILTIN_DETECTORS, Detector  # noqa: E402
from holdgate.masking.masker import (  # noqa: E402
    FieldRule,
    MaskingPolicy,
    Profile,
    ProfilesInEffect,
    mask_json,
)
from holdgate.protocol.jsonrpc import dumps, loads_strict  # noqa: E402
from holdgate.protocol.verbatim import verbatim  # noqa: E402

FIRST = ["Jane", "John", "Ana", "Luis", "Mei", "Omar", "Sara", "Tom", "Ivy", "Noah", "Zoë"]
LAST = ["Doe", "Smith", "García", "Chen", "Okafor", "Müller", "Rossi", "Nguyen", "Khan"]
WORDS = (
    "the customer called about an invoice and asked for a refund of the last payment we "
    "agreed to follow up next week after checking the account history status pending "
    "shipment delayed due to weather version 1.2.3.4 deployed on 2024-01-15 order number "
    "100234 ticket SUP-4411 escalated priority high"
).split()


def card(rng: random.Random) -> str:
    digits = [4] + [rng.randint(0, 9) for _ in range(14)]
    total = 0
    for position, digit in enumerate(reversed(digits)):
        if position % 2 == 0:
            digit *= 2
            digit = digit - 9 if digit > 9 else digit
        total += digit
    number = "".join(map(str, digits)) + str((10 - total % 10) % 10)
    return " ".join(number[i : i + 4] for i in range(0, 16, 4))


def record(rng: random.Random, i: int, pii: bool = True) -> dict[str, Any]:
    first, last = rng.choice(FIRST), rng.choice(LAST)
    out: dict[str, Any] = {
        "id": 10000 + i,
        "customer_id": f"CUS-{i:06d}",
        "name": f"{first} {last}",
    }
    if pii:
        out["email"] = f"{first.lower()}.{i}@example.com"
        out["phone"] = f"+1 415 555 {i % 10000:04d}"
    out |= {
        "address": {"street": f"{rng.randint(1, 999)} Market St", "city": "San Francisco"},
        "created_at": "2024-01-15T10:22:31Z",
        "status": rng.choice(["active", "churned", "trial"]),
        "balance": round(rng.random() * 10000, 2),
        "tags": ["vip", "newsletter"][: rng.randint(0, 2)],
        "notes": " ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 25))),
    }
    if not pii:
        return out
    if i % 5 == 0:
        out["card"] = card(rng)
    if i % 7 == 0:
        out["iban"] = "DE89 3704 0044 0532 0130 00"
    if i % 11 == 0:
        out["ssn"] = "123-45-6789"
    return out


def prose(rng: random.Random, size: int, pii: bool = True) -> str:
    lines: list[str] = []
    total = 0
    while total < size:
        line = " ".join(rng.choice(WORDS) for _ in range(rng.randint(8, 30))).capitalize()
        if pii and rng.random() < 0.05:
            line += ", contact ops@example.org"
        lines.append(line + ".")
        total += len(line) + 2
    return "\n".join(lines)


def tool_result(size: int, seed: int = 7, pii: bool = True) -> str:
    """A tools/call result of about `size` bytes; `pii=False`: no sensitive value in it."""
    rng = random.Random(seed)
    records: list[dict[str, Any]] = []
    target = int(size * 0.7)
    length = 0
    while length < target:
        batch = [record(rng, len(records) + j, pii) for j in range(100)]
        records.extend(batch)
        length += len(json.dumps(batch, ensure_ascii=False))
    content = [
        {"type": "text", "text": json.dumps(records, ensure_ascii=False)},
        {"type": "text", "text": prose(rng, int(size * 0.3), pii)},
    ]
    message = {"jsonrpc": "2.0", "id": 7, "result": {"content": content, "isError": False}}
    return json.dumps(message, ensure_ascii=False)


def effects() -> dict[str, ProfilesInEffect]:
    def detectors(*names: str) -> tuple[Detector, ...]:
        return tuple(BUILTIN_DETECTORS[name] for name in names)

    design = MaskingPolicy(
        (
            Profile(
                "pii", detectors("email", "phone", "credit_card", "iban", "us_ssn"), (), "partial"
            ),
            Profile(
                "secrets",
                detectors("aws_access_key", "github_token", "jwt", "private_key", "generic_secret"),
                (FieldRule.parse("$..password"), FieldRule.parse("$..api_key")),
            ),
        )
    )
    every = MaskingPolicy((Profile("all", tuple(BUILTIN_DETECTORS.values())),))
    return {
        "design example profiles": design.profiles_for("crm", "search", ()),
        f"all {len(BUILTIN_DETECTORS)} built-in detectors": every.profiles_for("crm", "search", ()),
    }


@contextmanager
def prefilter_off() -> Iterator[None]:
    """Masking as before the prefilter: every detector on every text, embedded JSON parsed."""
    with (
        mock.patch.object(prefilter.Prefilter, "present", lambda self, text: self.detectors),
        mock.patch.object(prefilter.Prefilter, "clean_json", lambda self, text, context: False),
    ):
        yield


def verbatim_off() -> Any:
    """Every body written out again, as before forwarding the upstream's bytes."""
    return mock.patch(f"{__name__}.verbatim", lambda data, received, sent: False)


def orjson_off() -> Any:
    """Embedded JSON re-serialised with json.dumps, as before orjson."""
    return mock.patch.object(
        masker, "_serialise", lambda value, finite=True: masker._serialise_json(value)
    )


LEVERS: dict[str, Callable[[], Any]] = {
    "prefilter": prefilter_off,
    "orjson": orjson_off,
    "verbatim": verbatim_off,
}
"""Each lever's "off" state, for --compare."""


CLOCKS: dict[str, Callable[[], float]] = {"wall": time.perf_counter, "cpu": time.process_time}
clock = CLOCKS["wall"]


def best_of(repeat: int, run: Callable[[], object]) -> float:
    times = []
    for _ in range(repeat):
        start = clock()
        run()
        times.append(clock() - start)
    return min(times)


def response_path(data: bytes, effect: ProfilesInEffect) -> bytes:
    """What the response side does with a JSON body: strict parse, mask, and the upstream's
    bytes when nothing changed (else the masked message written out)."""
    message = loads_strict(data)
    masked = mask_json(message, effect).value
    return data if verbatim(data, [message], [masked]) else dumps(masked)


def measure(body: str, effect: ProfilesInEffect, repeat: int) -> tuple[float, float, int]:
    """Seconds for mask_json alone and for the whole response path; values masked."""
    message = json.loads(body)
    data = body.encode()
    masked = best_of(repeat, lambda: mask_json(message, effect))
    total = best_of(repeat, lambda: response_path(data, effect))
    return masked, total, sum(mask_json(message, effect).findings.values())


def compare(body: str, effect: ProfilesInEffect, repeat: int, lever: str) -> tuple[float, float]:
    """Best seconds with the lever off and on, runs alternating: mask_json, or the whole
    response path for `verbatim`."""
    message, data = json.loads(body), body.encode()

    def run() -> object:
        return response_path(data, effect) if lever == "verbatim" else mask_json(message, effect)

    off_times, on_times = [], []
    for _ in range(repeat):
        with LEVERS[lever]():
            off_times.append(best_of(1, run))
        on_times.append(best_of(1, run))
    with LEVERS[lever]():
        before = run()
    after = run()
    if isinstance(before, bytes) and isinstance(after, bytes):
        before, after = json.loads(before), json.loads(after)  # the same message, spaced anew
    if before != after:
        raise SystemExit(f"lever {lever} changed what masking outputs")
    return min(off_times), min(on_times)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--sizes", default="1,10", help="body sizes in MB, comma-separated")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--kinds", default="pii,clean", help="bodies: pii, clean")
    parser.add_argument("--compare", choices=sorted(LEVERS), help="A/B one lever, off vs on")
    parser.add_argument("--clock", choices=sorted(CLOCKS), default="wall", help="what to time")
    parser.add_argument("--addons", help="the holdgate to measure (default: this checkout's)")
    args = parser.parse_args()
    global clock
    clock = CLOCKS[args.clock]
    for size_mb in (float(s) for s in args.sizes.split(",")):
        for kind in args.kinds.split(","):
            body = tool_result(int(size_mb * 1_000_000), pii=kind == "pii")
            megabytes = len(body.encode()) / 1_000_000
            print(f"{kind} body {megabytes:.2f} MB")
            for label, effect in effects().items():
                if args.compare:
                    off, on = compare(body, effect, args.repeat, args.compare)
                    print(
                        f"  {label:26} {args.compare} off {megabytes / off:6.1f} MB/s"
                        f"   on {megabytes / on:6.1f} MB/s"
                    )
                    continue
                masked, total, found = measure(body, effect, args.repeat)
                print(
                    f"  {label:26} mask_json {megabytes / masked:6.1f} MB/s"
                    f"   response path {megabytes / total:6.1f} MB/s   ({found} values masked)"
                )


if __name__ == "__main__":
    main()
