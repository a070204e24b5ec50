"""A real headless Chromium (Debian's, installed by scripts/system-deps.sh) for the pages
people read: the DOM after the browser parsed it, never our own idea of the HTML."""

from __future__ import annotations

import shutil
import subprocess
import tempfile

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


def dump_dom(url: str, *extra: str) -> str:
    """The document as Chromium built it from `url` (scripts run, styles applied); `extra`
    flags, e.g. `--virtual-time-budget=5000` to follow a page that submits a form."""
    return _run(url, "--dump-dom", *extra)


def screenshot(url: str, path: str, *extra: str) -> None:
    """A PNG of the page at `url`, saved to `path`; `extra` flags as for `dump_dom`."""
    _run(url, f"--screenshot={path}", "--window-size=1200,1400", "--hide-scrollbars", *extra)


def _run(url: str, *flags: str) -> str:
    chromium = shutil.which("chromium")
    if chromium is None:
        raise RuntimeError("chromium is missing: run scripts/system-deps.sh (make test does)")
    with tempfile.TemporaryDirectory(prefix="holdgate-chromium-") as profile:
        done = subprocess.run(
            [chromium, *FLAGS, f"--user-data-dir={profile}", *flags, url],
            capture_output=True,
            text=True,
            timeout=60,
        )
    if done.returncode != 0:
        raise RuntimeError(f"chromium failed ({done.returncode}): {done.stderr[-2000:]}")
    return done.stdout
