"""DNS rebinding: the Host and Origin a client writes must name this gateway.

A web page on `evil.example.com` whose name is made to resolve to the gateway's address
can make a browser send requests the browser believes are same-origin. Those requests
still carry `Host: evil.example.com` and `Origin: http://evil.example.com`, so both are
checked against the names the gateway is reached by (`FrontNames`): the address of the
socket the client connected to (and `localhost` when it is a loopback one), the approvals'
`public_url`, and the config's `allowed_hosts` / `allowed_origins`. A missing Origin is
allowed (clients other than browsers send none); a present one must be a name of the
gateway or an allowed origin.

Patterns (`allowed_hosts`): `name`, `name:port`, `name:*` (any port), `[v6]:port`; a
name without a port matches a Host without one or with the scheme's default port.
`allowed_origins`: `scheme://name[:port|:*]`, or `null` (sandboxed pages, `file:`).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

from holdgate.config.options import is_loopback

DEFAULT_PORTS = {"http": 80, "https": 443}


@dataclass(frozen=True)
class HostPattern:
    name: str  # lowercased; an IPv6 address without brackets
    port: int | None  # None: written without a port
    any_port: bool = False

    def matches(self, name: str, port: int | None, default_port: int) -> bool:
        if name != self.name:
            return False
        if self.any_port:
            return True
        if self.port is None:
            return port in (None, default_port)
        return (port if port is not None else default_port) == self.port


@dataclass(frozen=True)
class OriginPattern:
    scheme: str  # "http", "https", ... or "null"
    host: HostPattern | None  # None for `null`

    def matches(self, scheme: str, name: str, port: int | None) -> bool:
        if self.host is None or scheme != self.scheme:
            return False
        return self.host.matches(name, port, DEFAULT_PORTS.get(scheme, -1))


def _split_authority(text: str) -> tuple[str, str | None]:
    """`name[:port]` or `[v6][:port]` -> (name, port text or None); ValueError if malformed."""
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise ValueError("an IPv6 address opened with `[` is not closed with `]`")
        name, rest = text[1:end], text[end + 1 :]
        try:
            ipaddress.IPv6Address(name)
        except ValueError:
            raise ValueError(f"[{name}] is not an IPv6 address") from None
        if rest and not rest.startswith(":"):
            raise ValueError("only `:port` may follow `[address]`")
        return name.lower(), (rest[1:] if rest else None)
    name, sep, port = text.rpartition(":")
    if not sep:
        name, port = text, ""
    if not name or any(c in name for c in "/?#@[] \t\\") or ":" in name:
        raise ValueError("write a host name or address, with an optional `:port`")
    return name.lower().rstrip("."), (port if sep else None)


def _port(text: str | None, *, wildcard: bool) -> tuple[int | None, bool]:
    if text is None:
        return None, False
    if wildcard and text == "*":
        return None, True
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise ValueError(f"{text!r} is not a port (1-65535{' or *' if wildcard else ''})")
    return int(text), False


def parse_host_pattern(text: str) -> HostPattern:
    """An `allowed_hosts` entry; ValueError saying what is wrong."""
    name, port_text = _split_authority(text.strip())
    port, any_port = _port(port_text, wildcard=True)
    return HostPattern(name, port, any_port)


def parse_origin_pattern(text: str) -> OriginPattern:
    """An `allowed_origins` entry; ValueError saying what is wrong."""
    text = text.strip()
    if text.lower() == "null":
        return OriginPattern("null", None)
    scheme, sep, rest = text.partition("://")
    if not sep or not scheme.isalpha():
        raise ValueError("write an origin as `scheme://host[:port]` (e.g. https://app.example.com)")
    if "/" in rest:
        raise ValueError("an origin has no path: write only `scheme://host[:port]`")
    return OriginPattern(scheme.lower(), parse_host_pattern(rest))


def _parse_header_authority(text: str) -> tuple[str, int | None]:
    name, port_text = _split_authority(text.strip())
    port, _ = _port(port_text, wildcard=False)
    return name, port


@dataclass(frozen=True)
class FrontNames:
    """The names a client may call this gateway by, for one connection."""

    hosts: tuple[HostPattern, ...]
    origins: tuple[OriginPattern, ...]
    default_port: int  # of the connection's scheme: a Host without a port means this one
    check_host: bool  # False as a regular proxy, where Host names the upstream (checked there)

    @classmethod
    def build(
        cls,
        own: Iterable[tuple[str, int]],
        *,
        tls: bool,
        check_host: bool,
        public_url: str | None,
        allowed_hosts: Sequence[HostPattern],
        allowed_origins: Sequence[OriginPattern],
    ) -> FrontNames:
        hosts = list(allowed_hosts)
        for name, port in own:
            name = name.lower()
            hosts.append(HostPattern(name, port))
            if is_loopback(name):
                hosts.append(HostPattern("localhost", port))
        if public_url:
            parts = urlsplit(public_url)
            if parts.hostname:
                hosts.append(
                    HostPattern(
                        parts.hostname.lower(),
                        parts.port or DEFAULT_PORTS.get(parts.scheme.lower()),
                    )
                )
        return cls(tuple(hosts), tuple(allowed_origins), 443 if tls else 80, check_host)

    def host_allowed(self, name: str, port: int | None, default_port: int) -> bool:
        return any(h.matches(name, port, default_port) for h in self.hosts)


def front_problem(hosts: Sequence[str], origins: Sequence[str], names: FrontNames) -> str | None:
    """Why a request's Host/Origin headers do not name this gateway (None: they do)."""
    if names.check_host:
        if len(hosts) != 1:
            return (
                f"the request carries {len(hosts)} Host headers; send exactly one, naming this "
                "gateway"
            )
        try:
            name, port = _parse_header_authority(hosts[0])
        except ValueError:
            return f"the Host header {hosts[0][:200]!r} is malformed; name this gateway"
        if not names.host_allowed(name, port, names.default_port):
            return (
                f"the Host header {hosts[0][:200]!r} is not a name of this gateway (a web page "
                "may be trying DNS rebinding); if clients reach the gateway by that name, add "
                "it to `allowed_hosts:` in the config"
            )
    if not origins:
        return None
    if len(origins) > 1:
        return f"the request carries {len(origins)} Origin headers; send at most one"
    origin = origins[0]
    if _origin_allowed(origin.strip(), names):
        return None
    return (
        f"the Origin {origin[:200]!r} may not call this gateway (a web page on another site); "
        "if it should, add it to `allowed_origins:` in the config"
    )


def _origin_allowed(origin: str, names: FrontNames) -> bool:
    if origin.lower() == "null":
        return any(o.host is None for o in names.origins)
    scheme, sep, rest = origin.partition("://")
    if not sep or "/" in rest:
        return False
    scheme = scheme.lower()
    try:
        name, port = _parse_header_authority(rest)
    except ValueError:
        return False
    if any(o.matches(scheme, name, port) for o in names.origins):
        return True
    # A page served under one of the gateway's own names is same-site with it.
    default = DEFAULT_PORTS.get(scheme)
    return default is not None and names.host_allowed(name, port, default)
