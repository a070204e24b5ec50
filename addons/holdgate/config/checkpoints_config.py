"""The `checkpoints:` section: signed checkpoints of the audit chain, and where they go.

    checkpoints:
      key: "${file:keys/audit-signing.pem}"   # Ed25519 private key (holdgate keys signing new)
      every: 1s                                # also written at shutdown
      witness: checkpoints.log                 # or syslog:HOST:PORT, or an https:// webhook

The key must be a `${file:…}` or `${env:…}` reference: the config text is stored with each
config version, so a key written into it would reach the store.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from holdgate.configfile import Node
from holdgate.store.checkpoints import BadKey, key_id, load_private_key

CHECKPOINT_KEYS = {"key", "every", "witness"}
MIN_EVERY = 0.05


@dataclass(frozen=True)
class Witness:
    """Where checkpoints go: an append-only file, syslog over UDP, or a webhook."""

    kind: Literal["file", "syslog", "webhook"]
    target: str  # the file's path, "host:port", or the URL
    host: str = ""
    port: int = 0


@dataclass(frozen=True)
class CheckpointsConfig:
    """`key` is None when the config was read without its secrets (policy check)."""

    witness: Witness
    every: float = 1.0
    key: Ed25519PrivateKey | None = field(default=None, repr=False, compare=False)
    key_id: str | None = None


def parse_checkpoints(node: Node, secrets: bool = True) -> CheckpointsConfig | None:
    if node.missing:
        return None
    node.mapping(CHECKPOINT_KEYS, required={"key", "witness"})
    key_node = node.child("key")
    text = key_node.string()
    if "${" not in text:
        raise key_node.error(
            'write the key in a file and name it: key: "${file:keys/audit-signing.pem}" '
            "(the config text is stored with each version; a key in it would be too)"
        )
    key = None
    if secrets:
        try:
            key = load_private_key(key_node.secret().encode())
        except BadKey as exc:
            raise key_node.error(
                f"{exc}; make one with `holdgate keys signing new --out FILE`"
            ) from None
    every = node.child("every").duration(default=1.0)
    if every < MIN_EVERY:
        raise node.child("every").error(f"at least {MIN_EVERY}s; 1s is a good interval")
    return CheckpointsConfig(
        witness=_parse_witness(node.child("witness")),
        every=every,
        key=key,
        key_id=key_id(key.public_key()) if key is not None else None,
    )


def _parse_witness(node: Node) -> Witness:
    text = node.string()
    if text.startswith("syslog:"):
        address = text.removeprefix("syslog:").removeprefix("//")
        host, _, port = address.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise node.error("expected syslog:HOST:PORT (UDP), e.g. syslog:127.0.0.1:514")
        return Witness("syslog", address, host.strip("[]"), int(port))
    if "://" in text:
        url = urlsplit(text)
        if url.scheme not in ("https", "http") or not url.hostname:
            raise node.error(
                f"expected a file, syslog:HOST:PORT or an https:// webhook URL; got {url.scheme}://"
            )
        return Witness("webhook", text)
    path = Path(text)
    if not path.is_absolute():
        path = Path(node.doc.file).parent / path
    return Witness("file", str(path))
