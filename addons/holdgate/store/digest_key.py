"""The key of the argument digests when the config sets no `hash_key`: random, made once
and kept beside the store, so digests of identical calls correlate across restarts."""

from __future__ import annotations

import os
import secrets
from pathlib import Path


def load_or_create_key(path: str | os.PathLike[str]) -> bytes:
    """The key in `path` (hex), or a new one written there readable by its owner only."""
    key_file = Path(path)
    try:
        return bytes.fromhex(key_file.read_text().strip())
    except (OSError, ValueError):
        key = secrets.token_bytes(32)
        key_file.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(key.hex())
        return key
