"""Compiled hot modules (mypyc), loaded only while they match their sources.

`scripts/build_compiled.py` compiles a few pure modules into `build/compiled/`, beside the
package and never inside it (an extension next to its `.py` would shadow an edited source),
with a manifest of the SHA-256 of every holdgate source the compiled code was built from.
`install()` puts a finder ahead of the normal import path that loads those extensions when
every hash still matches. The modules share one native library and call each other's
native code directly, so it is all of them or none: one stale source, a missing file or
another Python means the pure modules, with one warning. `HOLDGATE_PURE_PYTHON=1` turns the
finder off; `HOLDGATE_COMPILED_DIR` points it at another build (tests, benchmarks).
"""

from __future__ import annotations

import hashlib
import importlib.machinery
import importlib.util
import json
import logging
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

PURE_ENV = "HOLDGATE_PURE_PYTHON"
DIR_ENV = "HOLDGATE_COMPILED_DIR"
MANIFEST = "manifest.json"
MANIFEST_VERSION = 1
PACKAGE_ROOT = Path(__file__).resolve().parent.parent  # the folder holding `holdgate/`
DEFAULT_DIR = PACKAGE_ROOT.parent / "build" / "compiled"

logger = logging.getLogger("holdgate")


@dataclass(frozen=True)
class Status:
    """Which modules run compiled, or why none does."""

    compiled: tuple[str, ...]
    reason: str  # why the pure modules are used ("" when compiled ones are)

    def describe(self) -> str:
        if self.compiled:
            return "compiled (mypyc): " + ", ".join(self.compiled)
        return f"pure Python ({self.reason})"


def sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def check(folder: Path, package_root: Path = PACKAGE_ROOT) -> tuple[Status, dict[str, Path]]:
    """The build in `folder` against the sources under `package_root`: the status, and the
    extension file of every module the finder is to load (none unless all is current)."""
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
    except FileNotFoundError:
        return Status((), f"no compiled build in {folder}: run scripts/build_compiled.py"), {}
    except (OSError, ValueError) as exc:
        return Status((), f"{folder / MANIFEST} unreadable ({exc}): rebuild it"), {}
    suffix = importlib.machinery.EXTENSION_SUFFIXES[0]
    if not isinstance(manifest, dict) or manifest.get("version") != MANIFEST_VERSION:
        return Status((), f"{folder / MANIFEST} is of another version: rebuild it"), {}
    if manifest.get("ext_suffix") != suffix:
        return Status((), f"built for {manifest.get('ext_suffix')}, this Python loads {suffix}"), {}
    for source, digest in sorted(manifest["sources"].items()):
        path = package_root / source
        try:
            current = sha256_file(path)
        except OSError:
            current = ""
        if current != digest:
            return Status((), f"{path} changed since the build: run scripts/build_compiled.py"), {}
    files = {name: folder / rel for name, rel in manifest["files"].items()}
    missing = [str(path) for path in files.values() if not path.is_file()]
    if missing:
        return Status((), f"{missing[0]} is missing: run scripts/build_compiled.py"), {}
    return Status(tuple(manifest["compiled"]), ""), files


class CompiledFinder:
    """A `sys.meta_path` finder for the modules of one current build, and nothing else."""

    def __init__(self, files: dict[str, Path]) -> None:
        self.files = files

    def find_spec(
        self, fullname: str, path: Sequence[str] | None = None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        extension = self.files.get(fullname)
        if extension is None:
            return None
        loader = importlib.machinery.ExtensionFileLoader(fullname, str(extension))
        return importlib.util.spec_from_file_location(fullname, extension, loader=loader)


_status = Status((), "not installed")


def install() -> Status:
    """Load the compiled modules from now on when the build is current (once a process)."""
    global _status
    if any(isinstance(finder, CompiledFinder) for finder in sys.meta_path):
        return _status
    if os.environ.get(PURE_ENV, "") not in ("", "0"):
        _status = Status((), f"{PURE_ENV} is set")
        return _status
    folder = Path(os.environ.get(DIR_ENV) or DEFAULT_DIR)
    explicit = bool(os.environ.get(DIR_ENV)) or (folder / MANIFEST).exists()
    _status, files = check(folder)
    if files:
        sys.meta_path.insert(0, CompiledFinder(files))
    elif explicit:  # a build that is there but cannot be used: say so; no build is normal
        logger.warning("holdgate runs its pure Python modules: %s", _status.reason)
    return _status


def status() -> Status:
    """What `install()` decided; the modules it lists are loaded compiled when imported."""
    return _status


def loaded() -> dict[str, bool]:
    """For each module the build compiled and the process imported: is it the extension?"""
    extension = importlib.machinery.ExtensionFileLoader
    return {
        name: isinstance(getattr(sys.modules[name], "__loader__", None), extension)
        for name in _status.compiled
        if name in sys.modules
    }
