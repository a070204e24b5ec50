"""The `identity` section of the config: OIDC issuers, API keys, a trusted auth proxy.

Every check refuses rather than guesses: an algorithm outside the asymmetric allowlist
(`none` and HMAC would allow forged tokens) is a config error. API keys are kept as their
SHA-256 only."""

from __future__ import annotations

import hashlib
import ipaddress
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from holdgate.configfile import Node, Problems, collected, keys_then
from holdgate.identity.jwks import jwks_keys

ASYMMETRIC = (
    "RS256",
    "RS384",
    "RS512",
    "PS256",
    "PS384",
    "PS512",
    "ES256",
    "ES384",
    "ES512",
    "EdDSA",
)


IDENTITY_KEYS = {"oidc", "api_keys", "trusted_header"}


OIDC_KEYS = {
    "issuer",
    "audience",
    "jwks_uri",
    "jwks_file",
    "algorithms",
    "user_claim",
    "groups_claim",
    "leeway",
    "jwks_min_refresh",
    "jwks_min_age",
    "jwks_max_age",
}


@dataclass(frozen=True)
class OidcIssuer:
    issuer: str
    audience: tuple[str, ...]
    algorithms: tuple[str, ...]
    user_claim: str = "sub"
    groups_claim: str | None = None
    leeway: float = 30.0
    jwks_uri: str | None = None
    jwks_file_keys: tuple[dict[str, Any], ...] | None = None
    min_refresh: float = 2.0  # the fewest seconds between two fetches of the keys
    min_age: float = 60.0  # a max-age below this is raised to it
    max_age: float = 3600.0  # the refresh interval when the response names no max-age


@dataclass(frozen=True)
class ApiKey:
    name: str
    sha256: bytes
    groups: tuple[str, ...]


@dataclass(frozen=True)
class TrustedHeader:
    networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]
    user_header: str
    groups_header: str | None


@dataclass(frozen=True)
class IdentityConfig:
    oidc: tuple[OidcIssuer, ...] = ()
    api_keys: tuple[ApiKey, ...] = ()
    trusted_header: TrustedHeader | None = None


def parse_identity(node: Node, problems: Problems | None = None) -> IdentityConfig | None:
    """The `identity:` section. Each issuer, API key and the trusted header are checked on
    their own: one with a mistake is recorded in `problems` and left out (without
    `problems`, all mistakes are raised at the end)."""
    return collected(lambda found: _parse_identity(node, found), problems)


def _parse_identity(node: Node, problems: Problems) -> IdentityConfig | None:
    if node.missing:
        return None
    before = len(problems.found)
    problems.attempt(node.mapping, IDENTITY_KEYS)
    if not isinstance(node.value, dict):
        return None
    oidc = _each(node, "oidc", _parse_oidc, problems)
    keys = _each(node, "api_keys", _parse_api_key, problems)
    trusted = problems.attempt(parse_trusted_header, node.child("trusted_header"))
    if not oidc and not keys and trusted is None and len(problems.found) == before:
        problems.add(
            node.error(
                "configure at least one of oidc, api_keys, trusted_header "
                "(or remove `identity` to allow anonymous callers)"
            )
        )
    return IdentityConfig(oidc, keys, trusted)


def _each[T](node: Node, key: str, parse: Callable[[Node], T], problems: Problems) -> tuple[T, ...]:
    if not node.has(key):
        return ()
    parsed = (problems.attempt(parse, item) for item in problems.elements(node.child(key)))
    return tuple(item for item in parsed if item is not None)


def _parse_oidc(node: Node) -> OidcIssuer:
    return keys_then(node, OIDC_KEYS, {"issuer", "audience"}, lambda: _oidc_fields(node))


def _oidc_fields(node: Node) -> OidcIssuer:
    algorithms = node.child("algorithms").strings() or ("RS256", "ES256")
    for alg in algorithms:
        if alg not in ASYMMETRIC:
            raise node.child("algorithms").error(
                f"algorithm {alg!r} is not allowed: only asymmetric algorithms "
                f"({', '.join(ASYMMETRIC)}); `none` and HMAC would allow forged tokens"
            )
    uri = node.child("jwks_uri").optional_string()
    file_node = node.child("jwks_file")
    if (uri is None) == file_node.missing:
        raise node.error("give exactly one of jwks_uri or jwks_file")
    file_keys = None
    if not file_node.missing:
        path = Path(file_node.string())
        if not path.is_absolute():
            path = Path(node.doc.file).parent / path
        try:
            file_keys = tuple(jwks_keys(path.read_bytes()))
        except OSError as exc:
            raise file_node.error(f"cannot read {path} ({exc.strerror})") from None
        except ValueError as exc:
            raise file_node.error(f"{path} is not a JWKS: {exc}") from None
    return OidcIssuer(
        issuer=node.child("issuer").string(),
        audience=node.child("audience").strings(),
        algorithms=algorithms,
        user_claim=node.child("user_claim").string(default="sub"),
        groups_claim=node.child("groups_claim").optional_string(),
        leeway=node.child("leeway").duration(default=30.0),
        jwks_uri=uri,
        jwks_file_keys=file_keys,
        min_refresh=node.child("jwks_min_refresh").duration(default=2.0),
        min_age=node.child("jwks_min_age").duration(default=60.0),
        max_age=node.child("jwks_max_age").duration(default=3600.0),
    )


def _parse_api_key(node: Node) -> ApiKey:
    keys = {"name", "sha256", "groups"}
    return keys_then(node, keys, {"name", "sha256"}, lambda: _api_key_fields(node))


def _api_key_fields(node: Node) -> ApiKey:
    digest = node.child("sha256").string().lower()
    if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
        raise node.child("sha256").error(
            "expected 64 hex digits; make one with `holdgate keys hash KEY`"
        )
    return ApiKey(
        node.child("name").string(), bytes.fromhex(digest), node.child("groups").strings()
    )


def parse_trusted_header(node: Node) -> TrustedHeader | None:
    """A `trusted_header:` block (`from`, `user`, `groups`), None when it is absent."""
    if node.missing:
        return None
    node.mapping({"from", "user", "groups"}, required={"from", "user"})
    networks = []
    for item in (
        node.child("from").elements()
        if isinstance(node.value.get("from"), list)
        else [node.child("from")]
    ):
        try:
            networks.append(ipaddress.ip_network(item.string(), strict=False))
        except ValueError:
            raise item.error(f"{item.value!r} is not an address or CIDR range") from None
    return TrustedHeader(
        tuple(networks),
        node.child("user").string().lower(),
        (node.child("groups").optional_string() or "").lower() or None,
    )


def authorization_servers(config: IdentityConfig) -> list[str]:
    return [issuer.issuer for issuer in config.oidc]


def api_key_hash(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def generate_api_key() -> tuple[str, str]:
    key = "hg_" + secrets.token_urlsafe(32)
    return key, api_key_hash(key)
