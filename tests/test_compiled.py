"""The compiled modules (mypyc, `holdgate.compiled`): used when built and current, never
when stale or turned off, and a build without a C compiler leaves the pure modules."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from holdgate import compiled

ROOT = Path(__file__).resolve().parent.parent
BUILD = ROOT / "build" / "compiled"
BUILD_SCRIPT = ROOT / "scripts" / "build_compiled.py"
sys.path.insert(0, str(ROOT / "scripts"))
from build_compiled import MODULES  # noqa: E402
from helpers.clients import META, MODERN, raw_post  # noqa: E402
from helpers.processes import start_gateway, stop_soon  # noqa: E402

# Who reports: a fresh interpreter, holdgate imported from `sys.argv[1]`'s package folder.
REPORT = """
import importlib, json, sys
sys.path.insert(0, sys.argv[1])
from holdgate import compiled
modules = [importlib.import_module(name) for name in sys.argv[2:]]
print(json.dumps({"status": compiled.status().describe(), "compiled": compiled.status().compiled,
                  "loaded": compiled.loaded(), "files": [m.__file__ for m in modules]}))
"""

GOOD = """\
version: 1
upstreams:
  - name: demo
    url: {url}
rules:
  - name: reads
    match: {{tool: get_customer}}
    action: allow
"""


def report(tmp: Path, env: dict[str, str], addons: Path = ROOT / "addons") -> dict[str, object]:
    """What a new process, started in `tmp`, loads for the modules the build compiles."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("HOLDGATE_")}
    done = subprocess.run(
        [sys.executable, "-c", REPORT, str(addons), *MODULES],
        capture_output=True,
        text=True,
        cwd=tmp,
        env={**clean, **env},
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return {**json.loads(done.stdout), "stderr": done.stderr}


def compiler() -> bool:
    return shutil.which(os.environ.get("CC", "cc")) is not None


needs_build = pytest.mark.skipif(
    not (compiler() and BUILD.with_suffix(".stamp").exists()),
    reason="no C compiler, or scripts/build_compiled.py has not run (make does)",
)


@needs_build
def test_with_a_compiler_and_the_build_the_listed_modules_run_compiled(tmp_path):
    seen = report(tmp_path, {})
    assert seen["compiled"] == list(MODULES), f"{seen['status']}; see build/compiled.log"
    assert seen["loaded"] == dict.fromkeys(MODULES, True)
    assert all(str(file).startswith(str(BUILD)) for file in seen["files"])  # type: ignore[attr-defined]


def test_holdgate_pure_python_loads_no_compiled_module(tmp_path):
    seen = report(tmp_path, {"HOLDGATE_PURE_PYTHON": "1"})
    assert seen["compiled"] == [] and seen["loaded"] == {}
    assert seen["status"] == "pure Python (HOLDGATE_PURE_PYTHON is set)"
    assert all(str(file).endswith(".py") for file in seen["files"])  # type: ignore[attr-defined]


@needs_build
def test_an_edited_source_loads_the_pure_modules_and_says_which_file(tmp_path):
    copy = tmp_path / "addons"
    shutil.copytree(ROOT / "addons" / "holdgate", copy / "holdgate")
    edited = copy / Path(*MODULES[0].split(".")).with_suffix(".py")
    edited.write_text(edited.read_text() + "\n# edited after the build\n")
    seen = report(tmp_path, {"HOLDGATE_COMPILED_DIR": str(BUILD)}, addons=copy)
    assert seen["compiled"] == [] and seen["loaded"] == {}
    assert all(str(file).endswith(".py") for file in seen["files"])  # type: ignore[attr-defined]
    warning = f"holdgate runs its pure Python modules: {edited} changed since the build"
    assert warning in str(seen["stderr"])


def fake_build(folder: Path, package: Path, **changes: object) -> None:
    source = package / "holdgate" / "hot.py"
    source.parent.mkdir(parents=True)
    source.write_text("X = 1\n")
    (folder / "hot.so").write_bytes(b"")
    manifest = {
        "version": compiled.MANIFEST_VERSION,
        "ext_suffix": compiled.importlib.machinery.EXTENSION_SUFFIXES[0],
        "compiled": ["holdgate.hot"],
        "files": {"holdgate.hot": "hot.so"},
        "sources": {"holdgate/hot.py": hashlib.sha256(b"X = 1\n").hexdigest()},
        **changes,
    }
    (folder / compiled.MANIFEST).write_text(json.dumps(manifest))


def test_a_current_build_is_loaded_and_any_mismatch_is_not(tmp_path):
    folder, package = tmp_path / "build", tmp_path / "addons"
    folder.mkdir()
    fake_build(folder, package)
    status, files = compiled.check(folder, package)
    assert status.compiled == ("holdgate.hot",) and files == {
        "holdgate.hot": str(folder / "hot.so")
    }

    (package / "holdgate" / "hot.py").write_text("X = 2\n")
    status, files = compiled.check(folder, package)
    assert files == {} and "hot.py changed since the build" in status.reason

    (package / "holdgate" / "hot.py").unlink()  # a source gone counts as changed
    assert compiled.check(folder, package)[1] == {}


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"ext_suffix": ".cpython-99-x.so"}, "built for .cpython-99-x.so, this Python loads"),
        ({"version": 0}, "is of another version: rebuild it"),
        ({"files": {"holdgate.hot": "gone.so"}}, "gone.so is missing"),
        ({"sources": None}, "unreadable (no valid 'sources'): rebuild it"),
        ({"compiled": "holdgate.hot"}, "unreadable (no valid 'compiled'): rebuild it"),
    ],
)
def test_a_build_for_another_python_or_incomplete_is_not_loaded(tmp_path, changes, reason):
    folder, package = tmp_path / "build", tmp_path / "addons"
    folder.mkdir()
    fake_build(folder, package, **changes)
    status, files = compiled.check(folder, package)
    assert files == {} and reason in status.reason


def test_no_build_or_a_broken_manifest_means_pure_and_says_how_to_fix(tmp_path):
    status, files = compiled.check(tmp_path)
    assert files == {} and "run scripts/build_compiled.py" in status.reason
    (tmp_path / compiled.MANIFEST).write_text("{not json")
    status, files = compiled.check(tmp_path)
    assert files == {} and "unreadable" in status.reason and "rebuild it" in status.reason


def test_without_a_working_c_compiler_the_build_says_so_and_builds_nothing(tmp_path):
    out = tmp_path / "compiled"
    done = subprocess.run(
        [sys.executable, str(BUILD_SCRIPT), "--out", str(out)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "CC": "false"},
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "the C compiler (false) does not work: holdgate runs its pure Python modules "
        "(to compile them, install gcc and run scripts/build_compiled.py)"
    ]
    assert not out.exists()
    assert (tmp_path / "compiled.stamp").exists()  # make does not retry it every time
    assert (
        (tmp_path / "compiled.d")
        .read_text()
        .startswith(os.path.relpath(tmp_path / "compiled.stamp", ROOT))
    )


@pytest.mark.skipif(not compiler(), reason="no C compiler: the compiler check answers first")
def test_when_mypyc_fails_the_build_says_where_to_look_and_builds_nothing(tmp_path):
    out = tmp_path / "compiled"
    done = subprocess.run(
        [sys.executable, str(BUILD_SCRIPT), "--out", str(out), "--modules", "holdgate.nowhere"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    log = tmp_path / "compiled.log"
    assert done.stdout.splitlines() == [
        f"mypyc failed (exit 1; see {log}): holdgate runs its pure Python modules"
    ]
    assert not out.exists() and "nowhere" in log.read_text()


@needs_build
def test_the_gateway_started_from_another_folder_runs_and_logs_the_compiled_modules(tmp_path, demo):
    clean = {k: "" for k in os.environ if k.startswith("HOLDGATE_")}
    gw = start_gateway(tmp_path, GOOD.format(url=demo.url), demo.url, env=clean)
    try:
        body = {
            "jsonrpc": "2.0",
            "id": 1,
            "method": "tools/call",
            "params": {"name": "get_customer", "arguments": {"customer_id": 1}, "_meta": META},
        }
        headers = {**MODERN, "Mcp-Method": "tools/call", "Mcp-Name": "get_customer"}
        answer = raw_post(gw.url + "/mcp", body, headers).json()
        assert "result" in answer, answer  # allowed by the compiled policy rules
        assert f"holdgate runs compiled (mypyc): {', '.join(MODULES)}" in gw.log_text()
    finally:
        stop_soon(gw.proc)
