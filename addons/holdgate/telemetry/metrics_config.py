"""The `metrics:` section: who may scrape `/metrics` on the admin listener.

    metrics:
      auth: identity          # loopback (default) | open | identity
      groups: [monitoring]    # with identity: only members of these groups (default: anyone
                              # who authenticates like an MCP client)

`loopback` serves it only while the admin listener (`holdgate_admin`) is bound to a
loopback address; on any other address it is refused until one of the others is chosen.
`groups` also limits who may read `/status` (which always needs a credential).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from holdgate.configfile import Node

METRICS_KEYS = {"auth", "groups"}
MetricsAuth = Literal["loopback", "open", "identity"]
METRICS_AUTH: tuple[MetricsAuth, ...] = ("loopback", "open", "identity")


@dataclass(frozen=True)
class MetricsConfig:
    auth: MetricsAuth = "loopback"
    groups: tuple[str, ...] = ()  # empty: any authenticated caller


def parse_metrics(node: Node, has_identity: bool) -> MetricsConfig:
    if node.missing:
        return MetricsConfig()
    node.mapping(METRICS_KEYS)
    auth: MetricsAuth = node.child("auth").choice(METRICS_AUTH, "loopback")  # type: ignore[assignment]
    groups = node.child("groups").strings()
    if groups and auth != "identity":
        raise node.child("groups").error("`groups` only applies with `auth: identity`")
    if auth == "identity" and not has_identity:
        raise node.child("auth").error(
            "`auth: identity` authenticates scrapers like MCP clients, but the config has "
            "no `identity:` section; add one (e.g. an api_keys entry for the scraper)"
        )
    return MetricsConfig(auth, groups)
