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


def dump_dom(url: str) -> str:
    """The document as Chromium built it from `url` (scripts run, styles applied)."""
    chromium = shutil.which("chromium")
    if chromium is None:
        raise RuntimeError("chromium is missing: run scripts/system-deps.sh (make test does)")
    with tempfile.TemporaryDirectory(prefix="holdgate-chromium-") as profile:
        done = subprocess.run(
            [chromium, *FLAGS, f"--user-data-dir={profile}", "--dump-dom", url],
            capture_output=True,
            text=True,
            timeout=60,
        )
    if done.returncode != 0:
        raise RuntimeError(f"chromium failed ({done.returncode}): {done.stderr[-2000:]}")
    return done.stdout
