"""Compile holdgate's hot pure modules with mypyc into build/compiled/ (issue #31).

    .venv/bin/python scripts/build_compiled.py [--out DIR] [--modules a.b,c.d]   (make does)

The extensions go to their own folder with a manifest of the SHA-256 of every holdgate
source they were built from; `holdgate.compiled` loads them only while all still match.
Optional: with no working C compiler, or when mypyc fails, this prints one line, leaves no
build (the pure modules run) and exits 0. Writes `<out>.d`, the sources as a make rule, so
`make` rebuilds when one of them changes. The modules are the ones that paid >= 20% on
their benchmark (docs/performance.md, "Compiled modules (mypyc)").
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import importlib.machinery
import json
import os
import shlex
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ADDONS = ROOT / "addons"
MODULES = ("holdgate.policy.rules",)
GROUP = "holdgate_compiled"  # the native library the modules share: holdgate_compiled__mypyc
MANIFEST_VERSION = 1  # holdgate.compiled.MANIFEST_VERSION
BUILD_SECONDS = 1800  # mypyc and gcc, at most (16 s for rules.py here)


def source_of(module: str) -> Path:
    return ADDONS.joinpath(*module.split(".")).with_suffix(".py")


def holdgate_imports(path: Path) -> set[str]:
    """The holdgate modules a source imports (packages' `__init__` included)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        for name in names:
            parts = name.split(".")
            for end in range(1, len(parts) + 1):
                found.add(".".join(parts[:end]))
    return {name for name in found if name == "holdgate" or name.startswith("holdgate.")}


def sources(modules: tuple[str, ...]) -> list[Path]:
    """The compiled modules' sources and every holdgate source they import, transitively:
    the compiled code was typed against all of them."""
    seen: dict[str, Path] = {}
    todo = [".".join(m.split(".")[:end]) for m in modules for end in range(1, m.count(".") + 2)]
    while todo and len(seen) < 10_000:
        name = todo.pop()
        if name in seen:
            continue
        base = ADDONS.joinpath(*name.split("."))
        path = base / "__init__.py" if base.is_dir() else base.with_suffix(".py")
        if not path.is_file():
            continue  # a name imported from a module, not a module
        seen[name] = path
        todo += holdgate_imports(path) - seen.keys()
    return sorted(seen.values())


def compiler_works(scratch: Path) -> str:
    """ "" when the C compiler Python builds extensions with compiles a file, else why not."""
    compiler = os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc"
    (scratch / "probe.c").write_text("int probe(void) { return 0; }\n")
    try:
        done = subprocess.run(
            [*shlex.split(compiler), "-c", "probe.c", "-o", "probe.o"],
            cwd=scratch,
            capture_output=True,
            timeout=60,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"no C compiler ({compiler}: {exc})"
    return "" if done.returncode == 0 else f"the C compiler ({compiler}) does not work"


def compile_into(modules: tuple[str, ...], lib: Path, scratch: Path) -> None:
    """mypyc + setuptools in this process (the parent runs it in a child and keeps its
    output in a log)."""
    from mypyc.build import mypycify
    from setuptools import setup

    os.chdir(scratch)  # mypy reads no config of ours here: the options are all below
    (scratch / "mypy.ini").write_text("[mypy]\n")
    paths = [str(source_of(module)) for module in modules]
    options = ["--config-file", "mypy.ini", "--strict", "--ignore-missing-imports"]
    extensions = mypycify(
        [*options, *paths], group_name=GROUP, target_dir=str(scratch / "c"), opt_level="3"
    )
    setup(
        name=GROUP,
        ext_modules=extensions,
        script_args=["build_ext", "--build-lib", str(lib), "--build-temp", str(scratch / "o")],
    )


def digests(read: list[Path]) -> dict[str, str]:
    """Each source's SHA-256, taken before mypyc reads them: an edit during the build makes
    the build stale, never a build that claims the edited source."""
    return {
        str(path.relative_to(ADDONS)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in read
    }


def manifest(modules: tuple[str, ...], lib: Path, sources: dict[str, str]) -> dict[str, object]:
    suffix = importlib.machinery.EXTENSION_SUFFIXES[0]
    files = {m: str(Path(*m.split(".")).with_suffix(suffix)) for m in modules}
    files[f"{GROUP}__mypyc"] = f"{GROUP}__mypyc{suffix}"
    for name, rel in files.items():
        if not (lib / rel).is_file():
            raise ValueError(f"the build made no {rel} for {name}")
    return {
        "version": MANIFEST_VERSION,
        "ext_suffix": suffix,
        "compiled": list(modules),
        "files": files,
        "sources": sources,
    }


def depfile(out: Path, stamp: Path, read: list[Path]) -> None:
    """`<out>.d`: the stamp make builds depends on every source the build read."""
    names = " ".join(os.path.relpath(path, ROOT) for path in read)
    out.with_suffix(".d").write_text(f"{os.path.relpath(stamp, ROOT)}: {names}\n")


def build(modules: tuple[str, ...], out: Path) -> str:
    """Build into a fresh folder and swap it in; "" when built, else the one-line notice."""
    read = sources(modules)
    hashes = digests(read)
    out.parent.mkdir(parents=True, exist_ok=True)
    stamp = out.with_suffix(".stamp")
    depfile(out, stamp, read)
    shutil.rmtree(out, ignore_errors=True)  # never a build older than the sources
    log = out.with_suffix(".log")
    with tempfile.TemporaryDirectory(prefix="holdgate-mypyc-") as scratch_name:
        scratch = Path(scratch_name)
        why = compiler_works(scratch)
        if why:
            return (
                f"{why}: holdgate runs its pure Python modules (to compile them, install gcc "
                "and run scripts/build_compiled.py)"
            )
        lib = scratch / "lib"
        cmd = [sys.executable, __file__, "--child", str(lib), "--modules", ",".join(modules)]
        try:
            with log.open("wb") as sink:
                done = subprocess.run(
                    cmd, stdout=sink, stderr=subprocess.STDOUT, cwd=scratch, timeout=BUILD_SECONDS
                )
            if done.returncode != 0:
                raise ValueError(f"exit {done.returncode}")
            made = manifest(modules, lib, hashes)
        except (subprocess.TimeoutExpired, ValueError) as exc:
            return f"mypyc failed ({exc}; see {log}): holdgate runs its pure Python modules"
        (lib / "manifest.json").write_text(json.dumps(made, indent=2))
        fresh = out.with_name(out.name + ".new")
        shutil.rmtree(fresh, ignore_errors=True)
        shutil.copytree(lib, fresh, ignore=shutil.ignore_patterns("*.c", "*.o"))
        fresh.rename(out)  # whole: a gateway starting meanwhile sees no build, or all of it
    return ""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "build" / "compiled")
    parser.add_argument("--modules", default=",".join(MODULES), help="comma-separated")
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    modules = tuple(name for name in args.modules.split(",") if name)
    if args.child is not None:
        compile_into(modules, args.child, Path.cwd())
        return
    notice = build(modules, args.out.resolve())
    args.out.resolve().with_suffix(".stamp").touch()
    if notice:
        print(notice)
    else:
        print(f"compiled with mypyc into {args.out}: {', '.join(modules)}")


if __name__ == "__main__":
    main()
