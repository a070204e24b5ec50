"""False positives of the masking detectors on a clean corpus: code, logs, prose and JSON.

Nothing in the corpus is meant to be sensitive, so every value masked is a false positive
(or a sample value written in docs: the per-source columns show where each came from).
The corpus is rebuilt the same way on any machine with the same Python and packages:

- `stdlib`: the Python standard library's top-level modules (`Lib/*.py`), sorted;
- `mitmproxy`: the installed mitmproxy package's source;
- `holdgate`: this repository's code and docs at a fixed commit (`--commit`, default the
  commit issue 25 was filed against), read with `git show`, so changes to the detectors
  do not change the corpus;
- `log`: a synthetic service log from a fixed seed (timestamps, ids, hashes, versions,
  durations, addresses, order numbers, dates);
- `json`: the JSON files of the installed packages, parsed, so detectors that read keys
  see them.

Every built-in detector is applied with `strategy: redact` (and national phone formats
for GB, FR and DE where the code has them); the counts are the findings masking records.

    .venv/bin/python scripts/false_positives.py [--addons PATH] [--commit REV] [--json]

`--addons` measures another checkout's detectors on the same corpus (e.g. a worktree of
an older commit), for a before/after comparison.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import random
import subprocess
import sys
import sysconfig
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_COMMIT = "8feb7f7"
LOG_LINES = 20_000
SEED = 25


def stdlib_texts() -> Iterator[str]:
    for path in sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py")):
        yield path.read_text(encoding="utf-8", errors="replace")


def mitmproxy_texts() -> Iterator[str]:
    import mitmproxy

    for path in sorted(Path(mitmproxy.__file__).parent.rglob("*.py")):
        yield path.read_text(encoding="utf-8", errors="replace")


def holdgate_texts(commit: str) -> Iterator[str]:
    listing = subprocess.run(
        ["git", "-C", str(ROOT), "ls-tree", "-r", "--name-only", commit],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split()
    for name in sorted(listing):
        if name.startswith("addons/") and name.endswith(".py") or name.endswith(".md"):
            shown = subprocess.run(
                ["git", "-C", str(ROOT), "show", f"{commit}:{name}"],
                check=True,
                capture_output=True,
            )
            yield shown.stdout.decode("utf-8", "replace")


def log_texts() -> Iterator[str]:
    rng = random.Random(SEED)
    services = ["billing", "search", "auth", "gateway", "worker", "scheduler"]
    levels = ["INFO", "INFO", "INFO", "WARN", "DEBUG", "ERROR"]
    paths = ["/api/v2/orders", "/healthz", "/metrics", "/api/v1/items/{}", "/static/app.{}.js"]
    lines = []
    for i in range(LOG_LINES):
        stamp = 1_733_500_000 + i * 3 + rng.randint(0, 2)
        when = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(stamp))
        path = rng.choice(paths).format(rng.randint(1, 99999))
        ip = ".".join(str(rng.randint(1, 254)) for _ in range(4))
        trace = f"{rng.getrandbits(128):032x}"
        lines.append(
            f"{when}.{rng.randint(0, 999):03d}Z {rng.choice(levels)} {rng.choice(services)}"
            f"[{rng.randint(100, 65000)}] {ip}:{rng.randint(1024, 65535)} "
            f'"GET {path} HTTP/1.1" {rng.choice([200, 200, 204, 301, 404, 500])} '
            f"{rng.randint(0, 10**6)}B {rng.random() * 900:.3f}ms trace={trace} "
            f"order={rng.randint(10**5, 10**9)} build=1.{rng.randint(0, 40)}.{rng.randint(0, 9)} "
            f"epoch_ms={stamp * 1000 + rng.randint(0, 999)} date={when[:10].replace('-', '/')} "
            f"uuid={rng.getrandbits(32):08x}-{rng.getrandbits(16):04x}-4{rng.getrandbits(12):03x}"
            f"-a{rng.getrandbits(12):03x}-{rng.getrandbits(48):012x} "
            f"sha={rng.getrandbits(160):040x} retry={rng.randint(0, 5)}/{rng.randint(5, 9)}"
        )
    for start in range(0, len(lines), 500):
        yield "\n".join(lines[start : start + 500])


def json_values() -> Iterator[Any]:
    purelib = Path(sysconfig.get_paths()["purelib"])
    for path in sorted(purelib.rglob("*.json")):
        try:
            yield json.loads(path.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError):
            continue


def effect() -> Any:
    """Every built-in detector, redacted; national phones where the code has them."""
    from holdgate.masking.detectors import BUILTIN_DETECTORS
    from holdgate.masking.masker import MaskingPolicy, Profile

    options: dict[str, Any] = {}
    if "phone_regions" in {f.name for f in dataclasses.fields(Profile)}:
        options["phone_regions"] = ("GB", "FR", "DE")
    profile = Profile("all", tuple(BUILTIN_DETECTORS.values()), (), "redact", **options)
    return MaskingPolicy((profile,)).profiles_for("corpus", None, ())


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--addons", default=str(ROOT / "addons"), help="the holdgate to measure")
    parser.add_argument("--commit", default=DEFAULT_COMMIT, help="this repo's corpus commit")
    parser.add_argument("--json", action="store_true", help="print the counts as JSON")
    args = parser.parse_args()
    sys.path.insert(0, args.addons)
    from holdgate.masking.masker import mask_json

    masking = effect()
    sources: dict[str, Iterator[Any]] = {
        "stdlib": stdlib_texts(),
        "mitmproxy": mitmproxy_texts(),
        "holdgate": holdgate_texts(args.commit),
        "log": log_texts(),
        "json": json_values(),
    }
    counts: dict[str, Counter[str]] = {}
    sizes: dict[str, int] = {}
    for source, values in sources.items():
        found: Counter[str] = Counter()
        size = 0
        for value in values:
            size += len(value) if isinstance(value, str) else len(json.dumps(value))
            found.update(mask_json(value, masking).findings)
        counts[source] = found
        sizes[source] = size
    if args.json:
        print(json.dumps({"sizes": sizes, "counts": counts}, indent=1, sort_keys=True))
        return
    names = sorted({name for found in counts.values() for name in found})
    print(f"corpus: {', '.join(f'{s} {n / 1e6:.1f} MB' for s, n in sizes.items())}")
    print(f"{'detector':22}" + "".join(f"{s:>11}" for s in sources) + f"{'total':>9}")
    for name in names:
        row = [counts[s][name] for s in sources]
        print(f"{name:22}" + "".join(f"{n:>11}" for n in row) + f"{sum(row):>9}")
    totals = [sum(counts[s].values()) for s in sources]
    print(f"{'total':22}" + "".join(f"{n:>11}" for n in totals) + f"{sum(totals):>9}")


if __name__ == "__main__":
    main()
