"""Benchmark: the CPU a `holdgate` command costs before it does anything (its start-up).

    .venv/bin/python scripts/bench_cli.py [--runs N] [--tree TREE]
    (or: .venv/bin/python scripts/bench.py --scenario cli)

Runs `holdgate --help` and `holdgate approvals list --db EMPTY` (a store with no rows, made
once) N times each in fresh processes and prints the child's CPU time (user + sys, from
`os.wait4`), best and median. CPU rather than wall time: the figure holds on a busy machine.
The children may write bytecode (PYTHONDONTWRITEBYTECODE is dropped) and one warm-up run
of each comes first, so the figure is an installed command's, not a first compile's.
TREE is the checkout whose `addons/` is imported (default: this one), so another revision's
worktree can be measured with this checkout's interpreter for a before/after.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RUNS = 20

# The console script's own two lines, with TREE's package first on the path.
ENTRY = (
    "import sys; sys.path.insert(0, {addons!r}); sys.argv[0] = 'holdgate'; "
    "from holdgate.cli.main import main; sys.exit(main())"
)
MAKE_STORE = (
    "import sys; sys.path.insert(0, {addons!r}); "
    "from holdgate.store import open_store; open_store({path!r}, create=True).close()"
)


CHILD_ENV = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}


def child_cpu(command: list[str]) -> float:
    """Seconds of CPU (user + sys) one run of `command` took; it must succeed."""
    proc = subprocess.Popen(
        command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=CHILD_ENV
    )
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    stderr = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
    if proc.stderr:
        proc.stderr.close()
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(command[3:])} exited with {proc.returncode}:\n{stderr}")
    return usage.ru_utime + usage.ru_stime


def measure(tree: Path, runs: int) -> dict[str, dict[str, float]]:
    """Best and median CPU seconds of each command over `runs` runs, interleaved."""
    addons = str(tree / "addons")
    with tempfile.TemporaryDirectory(prefix="holdgate-bench-cli-") as tmp:
        store = str(Path(tmp) / "empty.sqlite3")
        subprocess.run(
            [sys.executable, "-c", MAKE_STORE.format(addons=addons, path=store)], check=True
        )
        commands = {
            "holdgate --help": ["--help"],
            "holdgate approvals list": ["approvals", "list", "--db", store],
        }
        entry = [sys.executable, "-c", ENTRY.format(addons=addons)]
        for args in commands.values():  # warm-up: bytecode written, files in the page cache
            child_cpu([*entry, *args])
        times: dict[str, list[float]] = {name: [] for name in commands}
        for _ in range(runs):
            for name, args in commands.items():
                times[name].append(child_cpu([*entry, *args]))
    return {
        name: {"best_s": min(values), "median_s": statistics.median(values), "runs": runs}
        for name, values in times.items()
    }


def print_table(tree: Path, results: dict[str, dict[str, float]]) -> None:
    print(f"CLI start-up CPU (user+sys of the child), {tree}")
    for name, figures in results.items():
        print(
            f"  {name:<26} best {figures['best_s'] * 1000:6.0f} ms   "
            f"median {figures['median_s'] * 1000:6.0f} ms   ({figures['runs']} runs)"
        )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=RUNS, help=f"runs each (default {RUNS})")
    parser.add_argument("--tree", type=Path, default=ROOT, help="the checkout to import")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args()
    results = measure(args.tree.resolve(), args.runs)
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        print_table(args.tree.resolve(), results)


if __name__ == "__main__":
    main()
