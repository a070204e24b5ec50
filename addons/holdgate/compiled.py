"""Compiled hot modules (mypyc), loaded only while they match their sources.

`scripts/build_compiled.py` compiles a few pure modules into `build/compiled/`, beside the
package and never inside it (an extension next to its `.py` would shadow an edited source),
with a manifest of the SHA-256 of every holdgate source the compiled code was built from.
`install()` puts a finder ahead of the normal import path; the first time a module with an
extension in the build is imported, it reads the manifest and loads the extensions only if
every hash still matches. The modules share one native library and call each other's
native code directly, so it is all of them or none: one stale source, a missing file or
another Python means the pure modules, with one warning. `HOLDGATE_PURE_PYTHON=1` turns the
finder off; `HOLDGATE_COMPILED_DIR` points it at another build (tests, benchmarks).

Every `import holdgate` (the CLI's start-up included) runs `install()`: it imports nothing
the interpreter has not loaded and reads no file; the manifest is read, and the sources
hashed, only when a compiled module is about to be imported.
"""

from __future__ import annotations

import importlib.machinery
import os
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Sequence
    from types import ModuleType

PURE_ENV = "HOLDGATE_PURE_PYTHON"
DIR_ENV = "HOLDGATE_COMPILED_DIR"
MANIFEST = "manifest.json"
MANIFEST_VERSION = 1
GROUP_LIBRARY = "holdgate_compiled__mypyc"  # the native library the compiled modules share
PACKAGE_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # holds holdgate/
DEFAULT_DIR = os.path.join(os.path.dirname(PACKAGE_ROOT), "build", "compiled")
SUFFIX = importlib.machinery.EXTENSION_SUFFIXES[0]


class Status:
    """Which modules run compiled, or why none does ("" when compiled ones are)."""

    __slots__ = ("compiled", "reason")

    def __init__(self, compiled: tuple[str, ...], reason: str) -> None:
        self.compiled = compiled
        self.reason = reason

    def describe(self) -> str:
        if self.compiled:
            return "compiled (mypyc): " + ", ".join(self.compiled)
        return f"pure Python ({self.reason})"


def sha256_file(path: str) -> str:
    import hashlib

    with open(path, "rb") as source:
        return hashlib.sha256(source.read()).hexdigest()


def check(
    folder: str | os.PathLike[str], package_root: str | os.PathLike[str] = PACKAGE_ROOT
) -> tuple[Status, dict[str, str]]:
    """The build in `folder` against the sources under `package_root`: the status, and the
    extension file of every module the finder is to load (none unless all is current)."""
    import json

    manifest_path = os.path.join(folder, MANIFEST)
    try:
        with open(manifest_path) as file:
            manifest = json.load(file)
    except FileNotFoundError:
        return Status((), f"no compiled build in {folder}: run scripts/build_compiled.py"), {}
    except (OSError, ValueError) as exc:
        return Status((), f"{manifest_path} unreadable ({exc}): rebuild it"), {}
    if not isinstance(manifest, dict) or manifest.get("version") != MANIFEST_VERSION:
        return Status((), f"{manifest_path} is of another version: rebuild it"), {}
    if manifest.get("ext_suffix") != SUFFIX:
        return Status((), f"built for {manifest.get('ext_suffix')}, this Python loads {SUFFIX}"), {}
    shapes = {"sources": dict, "files": dict, "compiled": list}
    wrong = [key for key, kind in shapes.items() if not isinstance(manifest.get(key), kind)]
    if wrong:
        return Status((), f"{manifest_path} unreadable (no valid {wrong[0]!r}): rebuild it"), {}
    for source, digest in sorted(manifest["sources"].items()):
        path = os.path.join(package_root, source)
        try:
            current = sha256_file(path)
        except OSError:
            current = ""
        if current != digest:
            return Status((), f"{path} changed since the build: run scripts/build_compiled.py"), {}
    files = {name: os.path.join(folder, rel) for name, rel in manifest["files"].items()}
    missing = [path for path in files.values() if not os.path.isfile(path)]
    if missing:
        return Status((), f"{missing[0]} is missing: run scripts/build_compiled.py"), {}
    return Status(tuple(manifest["compiled"]), ""), files


class CompiledFinder:
    """A `sys.meta_path` finder for the modules of one build, and only while it is current."""

    def __init__(self, folder: str) -> None:
        self.folder = folder
        self.files: dict[str, str] | None = None  # checked: what may be loaded

    def find_spec(
        self, fullname: str, path: Sequence[str] | None = None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if self.files is None:
            if not fullname.startswith("holdgate.") and fullname != GROUP_LIBRARY:
                return None
            extension = os.path.join(self.folder, *fullname.split(".")) + SUFFIX
            if not os.path.isfile(extension):  # one stat: the common answer
                return None
            self.settle()
        extension_file = (self.files or {}).get(fullname)
        if extension_file is None:
            return None
        loader = importlib.machinery.ExtensionFileLoader(fullname, extension_file)
        spec = importlib.machinery.ModuleSpec(fullname, loader, origin=extension_file)
        spec.has_location = True  # its __file__: the extension
        return spec

    def settle(self) -> Status:
        """Check the build once: from now on all its modules load compiled, or none."""
        global _status
        if self.files is None:
            _status, self.files = check(self.folder)
            there = os.environ.get(DIR_ENV) or os.path.exists(os.path.join(self.folder, MANIFEST))
            if not self.files and there:
                self.warn()
        return _status

    @staticmethod
    def warn() -> None:
        """A build that is there but cannot be used: say so (no build at all is normal)."""
        import logging

        logging.getLogger("holdgate").warning(
            "holdgate runs its pure Python modules: %s", _status.reason
        )


_status = Status((), "not installed")


def _finder() -> CompiledFinder | None:
    return next((f for f in sys.meta_path if isinstance(f, CompiledFinder)), None)


def install() -> None:
    """Load the compiled modules from now on when the build is current (once a process)."""
    global _status
    if _finder() is not None:
        return
    if os.environ.get(PURE_ENV, "") not in ("", "0"):
        _status = Status((), f"{PURE_ENV} is set")
        return
    sys.meta_path.insert(0, CompiledFinder(os.environ.get(DIR_ENV) or DEFAULT_DIR))


def status() -> Status:
    """Which modules load compiled (the build is checked now if no import has yet)."""
    finder = _finder()
    return finder.settle() if finder is not None else _status


def loaded() -> dict[str, bool]:
    """For each module the build compiled and the process imported: is it the extension?"""
    extension = importlib.machinery.ExtensionFileLoader
    return {
        name: isinstance(getattr(sys.modules[name], "__loader__", None), extension)
        for name in status().compiled
        if name in sys.modules
    }
