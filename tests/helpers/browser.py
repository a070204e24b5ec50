"""A real headless Chromium (Debian's, installed by scripts/system-deps.sh) for the pages
people read: the DOM after the browser parsed it, never our own idea of the HTML."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)


def dump_dom(url: str, wait_ms: int | None = None) -> str:
    """The document as Chromium built it from `url` (scripts run, styles applied);
    `wait_ms`: the page's scripts get that much (virtual) time first, e.g. for an app
    that fills the page from a WebSocket."""
    return _chromium(url, "--dump-dom", *_waiting(wait_ms))


def screenshot(url: str, path: Path, wait_ms: int | None = None) -> None:
    """A PNG of the page as Chromium shows it, 1600 pixels wide."""
    _chromium(url, f"--screenshot={path}", "--window-size=1600,900", *_waiting(wait_ms))


def _waiting(wait_ms: int | None) -> tuple[str, ...]:
    return (f"--virtual-time-budget={wait_ms}",) if wait_ms else ()


def _chromium(url: str, *args: str) -> str:
    chromium = shutil.which("chromium")
    if chromium is None:
        raise RuntimeError("chromium is missing: run scripts/system-deps.sh (make test does)")
    with tempfile.TemporaryDirectory(prefix="holdgate-chromium-") as profile:
        done = subprocess.run(
            [chromium, *FLAGS, f"--user-data-dir={profile}", *args, url],
            capture_output=True,
            text=True,
            timeout=60,
        )
    if done.returncode != 0:
        raise RuntimeError(f"chromium failed ({done.returncode}): {done.stderr[-2000:]}")
    return done.stdout
