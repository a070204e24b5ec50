"""The demo API keys (policies/default.yaml), written once: headers and the config block.

    CONFIG = "version: 1\n" + identity("alice", "bob") + "upstreams: ..."

The config's `sha256` values are computed from the keys, so the two cannot disagree.
Blocks contain no braces: they can be part of a `str.format` template.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class DemoKey:
    key: str
    groups: tuple[str, ...]

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.key.encode()).hexdigest()

    @property
    def headers(self) -> dict[str, str]:
        return {"X-API-Key": self.key}


DEMO_KEYS = {
    "alice": DemoKey("demo-alice-support", ("support",)),
    "bob": DemoKey("demo-bob-engineer", ("engineering",)),
    "carol": DemoKey("demo-carol-compliance", ("compliance", "support")),
    "dana": DemoKey("demo-dana-dba", ("dba", "engineering")),
}
ALICE = DEMO_KEYS["alice"].headers
BOB = DEMO_KEYS["bob"].headers
CAROL = DEMO_KEYS["carol"].headers
DANA = DEMO_KEYS["dana"].headers


def api_keys(
    *users: str,
    groups: Mapping[str, Sequence[str]] | None = None,
    names: Mapping[str, str] | None = None,
) -> str:
    """The `  api_keys:` list (indented under `identity:`) for these demo users.

    `groups` overrides a user's groups, `names` the identity name the key stands for.
    """
    lines = ["  api_keys:"]
    for user in users:
        demo = DEMO_KEYS[user]
        member = (groups or {}).get(user, demo.groups)
        lines += [
            f"    - name: {(names or {}).get(user, user)}",
            f"      sha256: {demo.sha256}",
            f"      groups: [{', '.join(member)}]",
        ]
    return "\n".join(lines) + "\n"


def identity(*users: str, groups: Mapping[str, Sequence[str]] | None = None) -> str:
    """An `identity:` section holding only the demo users' API keys."""
    return "identity:\n" + api_keys(*users, groups=groups)
