"""Who is calling: OIDC JWTs, API keys, or headers from a trusted auth proxy.

Every check refuses rather than guesses: several credentials at once, an algorithm
outside the issuer's allowlist, HMAC anything, `alg: none`. Errors say what was wrong
and never echo the credential.

An issuer's JWKS is fetched off the event loop and kept per issuer. A token naming an
unknown `kid` (the IdP rotated its key) fetches it again at once; callers asking at the
same time share one in-flight fetch, and an issuer is fetched at most once per
`jwks_min_refresh` (2 s), so tokens with made-up kids cannot flood the IdP. Started, the
`Authenticator` also refreshes each key set in the background when the response's
`Cache-Control: max-age` says (bounded), keeping the last good keys when a fetch fails.
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import hmac
import http.client
import ipaddress
import json
import logging
import secrets
import time
import urllib.request
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jwt
from jwt import PyJWK, PyJWKSet
from jwt.exceptions import PyJWKError, PyJWKSetError

from holdgate.config.configfile import Node, Problems, collected
from holdgate.protocol.jsonrpc import shown

logger = logging.getLogger("holdgate")
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
# A key set is refreshed when its response's `Cache-Control: max-age` says, but never
# sooner than the issuer's `jwks_min_age` nor later than this.
JWKS_LONGEST_AGE = 86_400.0


@dataclass(frozen=True)
class Identity:
    user: str
    groups: tuple[str, ...]
    method: str  # "oidc" | "api_key" | "trusted_header" | "anonymous"
    issuer: str | None = None
    key_id: str | None = None
    name: str | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "user": self.user,
            "groups": list(self.groups),
            "method": self.method,
        }
        for key in ("issuer", "key_id", "name"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        return out


ANONYMOUS = Identity("anonymous", (), "anonymous")


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


@dataclass(frozen=True)
class AuthOutcome:
    identity: Identity | None
    error: str | None = None  # safe for a body: reason, and any request text via `shown`
    spoofed_headers: tuple[str, ...] = ()
    reason: str | None = None  # one of AUTH_REASONS: the only part a response header gets


# Why a credential was refused, as the 401's `WWW-Authenticate` header may say it. A closed
# set: the header never carries text from the request (a CRLF in a token's `kid` would set
# response headers of the caller's choosing). The value that was wrong goes to the body only.
AUTH_REASONS = frozenset(
    {
        "no credentials",
        "multiple credentials",
        "the Authorization header must be `Bearer <token>`",
        "unknown API key",
        "malformed token",
        "unknown issuer",
        "wrong issuer",
        "wrong audience",
        "algorithm not allowed",
        "algorithm not allowed for this key",
        "token has no kid and the issuer has several keys",
        "unknown signing key",
        "cannot fetch the issuer's keys",
        "bad signature",
        "token expired",
        "token not yet valid",
        "token lacks a required claim",
        "token has no user claim",
        "the groups claim is neither a list of strings nor a string",
        "the trusted user header must appear exactly once",
        "invalid token",
    }
)


class AuthError(Exception):
    """A credential was presented and is not acceptable.

    `reason` is one of AUTH_REASONS; `detail` names what was wrong, with any request text
    already passed through `shown`. `str()` of the error is safe for bodies and logs.
    """

    def __init__(self, reason: str, detail: str | None = None) -> None:
        super().__init__(reason if detail is None else f"{reason} ({detail})")
        self.reason = reason
        self.detail = detail


def challenge(metadata_url: str, reason: str | None) -> str:
    """The 401's `WWW-Authenticate` value (RFC 6750, RFC 9728); nothing from a token in it.

    A reason outside AUTH_REASONS becomes a generic one; the URL (which in regular proxy
    mode comes from the client's Host header) is percent-encoded outside visible ASCII and
    has its quotes and backslashes encoded, so it cannot leave its quoted-string.
    """
    url = "".join(
        c if 0x21 <= ord(c) <= 0x7E and c not in '"\\' else _percent(c) for c in metadata_url
    )
    description = reason if reason in AUTH_REASONS else "invalid credentials"
    return (
        f'Bearer resource_metadata="{url}", error="invalid_token", '
        f'error_description="{description}"'
    )


def _percent(char: str) -> str:
    return "".join(f"%{b:02X}" for b in char.encode("utf-8", "surrogatepass"))


# --- config ------------------------------------------------------------------------------


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
    node.mapping(OIDC_KEYS, required={"issuer", "audience"})
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
            file_keys = tuple(_jwks_keys(path.read_bytes()))
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
    node.mapping({"name", "sha256", "groups"}, required={"name", "sha256"})
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


def _jwks_keys(data: bytes) -> list[dict[str, Any]]:
    try:
        doc = json.loads(data)
    except json.JSONDecodeError as exc:
        raise ValueError(f"invalid JSON ({exc.msg})") from None
    keys = doc.get("keys") if isinstance(doc, dict) else None
    if not isinstance(keys, list) or not all(isinstance(k, dict) for k in keys):
        raise ValueError('expected {"keys": [...]}')
    for key in keys:
        if key.get("kty") == "oct":
            raise ValueError("symmetric (oct) keys are not accepted")
    return keys


def authorization_servers(config: IdentityConfig) -> list[str]:
    return [issuer.issuer for issuer in config.oidc]


def api_key_hash(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def generate_api_key() -> tuple[str, str]:
    key = "hg_" + secrets.token_urlsafe(32)
    return key, api_key_hash(key)


# --- claims ------------------------------------------------------------------------------


def claim(claims: Mapping[str, Any], path: str) -> Any:
    """A claim by dotted path (`realm_access.roles`); a literal key with dots wins."""
    if path in claims:
        return claims[path]
    value: Any = claims
    for part in path.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return None
        value = value[part]
    return value


def group_list(value: Any) -> tuple[str, ...]:
    """Groups from a list, or a space- or comma-separated string."""
    if value is None:
        return ()
    if isinstance(value, str):
        return tuple(g for g in value.replace(",", " ").split() if g)
    if isinstance(value, list) and all(isinstance(g, str) for g in value):
        return tuple(value)
    raise AuthError("the groups claim is neither a list of strings nor a string")


# --- authentication ----------------------------------------------------------------------


@dataclass(frozen=True)
class JwksResponse:
    """A fetched key set: the body, and how long the IdP says it may be kept (seconds)."""

    body: bytes
    max_age: float | None = None


# JWKS fetches in this process by result ("ok", "failed"), read by the metrics at scrape
# time (a count, like a log line: every Authenticator adds to it).
JWKS_FETCHES: collections.Counter[str] = collections.Counter()

# The fetch seam: a URL's key set (bytes alone when the source gives no caching advice).
Fetch = Callable[[str], Awaitable[JwksResponse | bytes]]


async def fetch_url(url: str) -> JwksResponse:
    """Fetch a JWKS without blocking the event loop."""

    def get() -> JwksResponse:
        request = urllib.request.Request(url, headers={"Accept": "application/json"})
        with urllib.request.urlopen(request, timeout=5) as response:
            body = bytes(response.read(1_048_576))
            return JwksResponse(body, cache_max_age(response.headers.get("Cache-Control")))

    return await asyncio.to_thread(get)


def cache_max_age(cache_control: str | None) -> float | None:
    """Seconds from a `Cache-Control` value (`max-age=N`; `no-cache`/`no-store` are 0),
    or None when it says nothing usable."""
    if not cache_control:
        return None
    for directive in cache_control.split(","):
        name, _, value = directive.strip().partition("=")
        name = name.strip().lower()
        if name in ("no-cache", "no-store"):
            return 0.0
        if name == "max-age":
            value = value.strip().strip('"')
            if value.isdigit():
                return float(value)
    return None


def refresh_interval(max_age: float | None, issuer: OidcIssuer) -> float:
    """How long a fetched key set is used before the background refresh fetches it again."""
    if max_age is None:
        return issuer.max_age
    return min(max(max_age, issuer.min_age), JWKS_LONGEST_AGE)


@dataclass
class _KeyCache:
    keys: dict[str, PyJWK] = field(default_factory=dict)
    fetched_at: float = float("-inf")  # when the last fetch started (self._clock)
    refresh_at: float = float("-inf")  # when the background refresh fetches next
    failure: str | None = None  # why the last fetch failed; None when it worked
    fetching: asyncio.Task[None] | None = None  # the one in-flight fetch every caller awaits

    def knows(self, kid: str | None) -> bool:
        return kid in self.keys if kid is not None else bool(self.keys)


# A token verified once is taken again without the signature check for a short while:
# RSA verification and JWT parsing are most of an authenticated call's cost. Expiry and
# not-before are still checked on every use, and the signing key must still be known.
VERIFIED_TTL = 60.0
VERIFIED_MAX = 10_000


@dataclass(frozen=True)
class _Verified:
    identity: Identity
    issuer: str
    not_before: float  # wall clock, leeway applied
    expires: float
    cached_at: float  # self._clock


class Authenticator:
    def __init__(
        self,
        config: IdentityConfig,
        fetch: Fetch | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.config = config
        self._fetch = fetch or fetch_url
        self._clock = clock
        self._wall_clock = wall_clock
        self._sleep = sleep
        self._verified: OrderedDict[bytes, _Verified] = OrderedDict()
        self._caches: dict[str, _KeyCache] = {}
        self._refreshers: dict[str, asyncio.Task[None]] = {}
        for issuer in config.oidc:
            cache = _KeyCache()
            if issuer.jwks_file_keys is not None:
                cache.keys = _load_keys(list(issuer.jwks_file_keys))
                cache.fetched_at = cache.refresh_at = float("inf")
            self._caches[issuer.issuer] = cache

    def start(self) -> None:
        """Fetch each issuer's keys now and keep them fresh in the background (call it from
        the event loop; `close` stops it)."""
        loop = asyncio.get_running_loop()
        for issuer in self.config.oidc:
            running = self._refreshers.get(issuer.issuer)
            if issuer.jwks_uri is None or (running is not None and not running.done()):
                continue
            cache = self._caches[issuer.issuer]
            self._refreshers[issuer.issuer] = loop.create_task(self._keep_fresh(issuer, cache))

    def close(self) -> None:
        for task in self._refreshers.values():
            task.cancel()
        self._refreshers.clear()

    async def _keep_fresh(self, issuer: OidcIssuer, cache: _KeyCache) -> None:
        while True:
            wait = cache.refresh_at - self._clock()
            if wait > 0:
                await self._sleep(wait)
                continue  # a token's fetch may have moved the time on meanwhile
            await self._refresh(issuer, cache)

    async def authenticate(
        self, headers: Mapping[str, Sequence[str]], client_ip: str
    ) -> AuthOutcome:
        spoofed: tuple[str, ...] = ()
        trusted = self.config.trusted_header
        if trusted is not None:
            names = tuple(n for n in (trusted.user_header, trusted.groups_header) if n)
            present = tuple(n for n in names if n in headers)
            if present:
                if _address_in(client_ip, trusted.networks):
                    return self._trusted(headers, trusted)
                spoofed = present
        auth = headers.get("authorization", [])
        api = headers.get("x-api-key", [])
        try:
            if len(auth) > 1 or len(api) > 1:
                raise AuthError("multiple credentials")
            bearer = _bearer(auth[0]) if auth else None
            if bearer is not None and api and api[0] != bearer:
                raise AuthError("multiple credentials")
            credential = bearer if bearer is not None else (api[0] if api else None)
            if credential is None:
                raise AuthError("no credentials")
            if bearer is not None and credential.count(".") == 2 and self.config.oidc:
                identity = await self._jwt(credential)
            else:
                identity = self._api_key(credential)
        except AuthError as exc:
            return AuthOutcome(None, str(exc), spoofed, reason=exc.reason)
        return AuthOutcome(identity, None, spoofed)

    def _trusted(self, headers: Mapping[str, Sequence[str]], trusted: TrustedHeader) -> AuthOutcome:
        users = headers.get(trusted.user_header, [])
        if len(users) != 1 or not users[0].strip():
            reason = "the trusted user header must appear exactly once"
            return AuthOutcome(None, reason, reason=reason)
        groups_values = headers.get(trusted.groups_header, []) if trusted.groups_header else []
        groups = tuple(g for v in groups_values for g in group_list(v))
        return AuthOutcome(Identity(users[0].strip(), groups, "trusted_header"), None, ())

    def _api_key(self, credential: str) -> Identity:
        digest = hashlib.sha256(credential.encode("utf-8")).digest()
        found: ApiKey | None = None
        for key in self.config.api_keys:  # compare against every key: no early exit
            if hmac.compare_digest(digest, key.sha256):
                found = key
        if found is None:
            raise AuthError("unknown API key")
        return Identity(found.name, found.groups, "api_key", name=found.name)

    async def _jwt(self, token: str) -> Identity:
        digest = hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()
        hit = self._verified.get(digest)
        if hit is not None:
            if self._still_valid(hit):
                return hit.identity
            del self._verified[digest]
        identity, claims, leeway = await self._verify_jwt(token)
        if isinstance(claims.get("exp"), int | float):
            nbf = claims.get("nbf")
            self._verified[digest] = _Verified(
                identity,
                identity.issuer or "",
                (nbf - leeway) if isinstance(nbf, int | float) else float("-inf"),
                claims["exp"] + leeway,
                self._clock(),
            )
            if len(self._verified) > VERIFIED_MAX:
                self._verified.popitem(last=False)
        return identity

    def _still_valid(self, hit: _Verified) -> bool:
        now = self._wall_clock()
        keys = self._caches[hit.issuer].keys if hit.issuer in self._caches else {}
        return (
            self._clock() - hit.cached_at < VERIFIED_TTL
            and hit.not_before <= now < hit.expires
            and (hit.identity.key_id in keys if hit.identity.key_id is not None else bool(keys))
        )

    async def _verify_jwt(self, token: str) -> tuple[Identity, dict[str, Any], float]:
        try:
            header = jwt.get_unverified_header(token)
            unverified = jwt.decode(token, options={"verify_signature": False})
        except jwt.InvalidTokenError:
            raise AuthError("malformed token") from None
        issuer = next((i for i in self.config.oidc if i.issuer == unverified.get("iss")), None)
        if issuer is None:
            raise AuthError("unknown issuer", f"iss {shown(unverified.get('iss'))}")
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in issuer.algorithms:
            raise AuthError("algorithm not allowed", f"alg {shown(alg)}")
        kid = header.get("kid")
        key = await self._key(issuer, kid)
        if not _key_fits(key, alg):
            raise AuthError("algorithm not allowed for this key", f"alg {shown(alg)}")
        try:
            claims = jwt.decode(
                token,
                key=key.key,
                algorithms=[alg],
                audience=list(issuer.audience),
                issuer=issuer.issuer,
                leeway=issuer.leeway,
                options={"require": ["exp", "iss", "aud"]},
            )
        except jwt.ExpiredSignatureError:
            raise AuthError("token expired") from None
        except jwt.ImmatureSignatureError:
            raise AuthError("token not yet valid") from None
        except jwt.InvalidAudienceError:
            raise AuthError("wrong audience") from None
        except jwt.InvalidIssuerError:
            raise AuthError("wrong issuer") from None
        except jwt.InvalidSignatureError:
            raise AuthError("bad signature") from None
        except jwt.MissingRequiredClaimError as exc:
            raise AuthError("token lacks a required claim", shown(exc.claim)) from None
        except jwt.InvalidTokenError:
            raise AuthError("invalid token") from None
        user = claim(claims, issuer.user_claim)
        if not isinstance(user, str) or not user:
            raise AuthError("token has no user claim", shown(issuer.user_claim))
        groups = group_list(claim(claims, issuer.groups_claim)) if issuer.groups_claim else ()
        identity = Identity(user, groups, "oidc", issuer=issuer.issuer, key_id=kid)
        return identity, claims, issuer.leeway

    async def _key(self, issuer: OidcIssuer, kid: str | None) -> PyJWK:
        cache = self._caches[issuer.issuer]
        if issuer.jwks_uri is not None and not cache.knows(kid):
            # A new kid is most likely a rotated key: fetch at once, sharing a fetch under
            # way, but not again within min_refresh of the last one (kids made up to flood
            # the IdP get their 401 from the keys fetched then).
            if cache.fetching is not None or self._clock() - cache.fetched_at >= issuer.min_refresh:
                await self._refresh(issuer, cache)
        if not cache.knows(kid) and cache.failure is not None:
            raise AuthError("cannot fetch the issuer's keys", cache.failure)
        if kid is None:
            if len(cache.keys) == 1:
                return next(iter(cache.keys.values()))
            raise AuthError("token has no kid and the issuer has several keys")
        if kid not in cache.keys:
            raise AuthError("unknown signing key", f"kid {shown(kid)}")
        return cache.keys[kid]

    async def _refresh(self, issuer: OidcIssuer, cache: _KeyCache) -> None:
        """One fetch at a time per issuer: whoever asks while one is under way awaits it.
        The fetch is a task of its own, so a caller that gives up does not end it."""
        if cache.fetching is None:
            cache.fetched_at = self._clock()
            cache.fetching = asyncio.get_running_loop().create_task(self._fetch_keys(issuer, cache))
        await asyncio.shield(cache.fetching)

    async def _fetch_keys(self, issuer: OidcIssuer, cache: _KeyCache) -> None:
        """Replace the key set with a fresh one; a failed fetch keeps the last good one."""
        uri = issuer.jwks_uri or ""
        try:
            fetched = await self._fetch(uri)
            response = fetched if isinstance(fetched, JwksResponse) else JwksResponse(fetched)
            keys = _load_keys(_jwks_keys(response.body))
        except (OSError, ValueError, http.client.HTTPException) as exc:
            JWKS_FETCHES["failed"] += 1
            cache.failure = type(exc).__name__
            cache.refresh_at = self._clock() + issuer.min_age
            logger.warning(
                "holdgate: cannot fetch the keys of issuer %s from %s (%s); keeping the %d "
                "keys fetched before, trying again in %.0fs",
                issuer.issuer,
                uri,
                cache.failure,
                len(cache.keys),
                issuer.min_age,
            )
        else:
            JWKS_FETCHES["ok"] += 1
            cache.keys = keys
            cache.failure = None
            cache.refresh_at = self._clock() + refresh_interval(response.max_age, issuer)
        finally:
            cache.fetching = None


def _load_keys(keys: list[dict[str, Any]]) -> dict[str, PyJWK]:
    try:
        keyset = PyJWKSet.from_dict({"keys": [k for k in keys if k.get("use", "sig") == "sig"]})
    except (PyJWKSetError, PyJWKError) as exc:
        raise ValueError(str(exc)) from None
    return {k.key_id or "": k for k in keyset.keys if k.key_type != "oct"}


def _key_fits(key: PyJWK, alg: str) -> bool:
    """The algorithm family must match the key type (no RSA key used as an HMAC secret)."""
    families = {"RSA": ("RS", "PS"), "EC": ("ES",), "OKP": ("EdDSA",)}
    declared = key._jwk_data.get("alg")  # noqa: SLF001 - PyJWK keeps the JWK's own alg here
    if declared is not None and declared != alg:
        return False
    return any(alg.startswith(prefix) for prefix in families.get(key.key_type or "", ()))


def _bearer(value: str) -> str | None:
    scheme, _, token = value.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise AuthError("the Authorization header must be `Bearer <token>`")
    return token.strip()


def _address_in(client_ip: str, networks: Sequence[Any]) -> bool:
    try:
        address = ipaddress.ip_address(client_ip)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return any(address in network for network in networks)


class SessionOwners:
    """Which caller opened each MCP session, so nobody else can use or end it.

    A session belongs to the first identity seen with it: the one whose `initialize`
    answer carried the new `Mcp-Session-Id`, or, for a session no gateway has seen open,
    the first caller that uses it. The store decides for every replica (first claim wins);
    this is its bounded cache: a session's owner never changes while it lives.
    """

    def __init__(self, limit: int = 100_000) -> None:
        self.limit = limit
        self._owners: dict[str, str] = {}

    @staticmethod
    def key(upstream: str, session: str) -> str:
        """The store's key for a session: a digest (the raw id is the upstream's secret)."""
        return hashlib.sha256(f"{upstream}\0{session}".encode(errors="surrogatepass")).hexdigest()

    def cached(self, key: str) -> str | None:
        return self._owners.get(key)

    def remember(self, key: str, owner: str) -> None:
        if len(self._owners) >= self.limit:
            self._owners.pop(next(iter(self._owners)))
        self._owners[key] = owner

    def forget(self, key: str) -> None:
        self._owners.pop(key, None)
