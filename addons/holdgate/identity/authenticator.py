"""`Authenticator`: a request's credential (OIDC JWT, API key, or headers from a trusted
auth proxy) to an `Identity`, or a refusal.

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
import hashlib
import hmac
import http.client
import ipaddress
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import jwt
from jwt import PyJWK

from holdgate.identity.caller import AuthError, AuthOutcome, Identity, SubjectToken
from holdgate.identity.identity_config import ApiKey, IdentityConfig, OidcIssuer, TrustedHeader
from holdgate.identity.jwks import (
    JWKS_FETCHES,
    JWKS_LONGEST_AGE,
    Fetch,
    JwksResponse,
    fetch_url,
    jwks_keys,
    key_fits,
    load_keys,
)
from holdgate.protocol.jsonrpc import shown

logger = logging.getLogger("holdgate")


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
    exp: float  # the token's own `exp`


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
                cache.keys = load_keys(list(issuer.jwks_file_keys))
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
        subject: SubjectToken | None = None
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
                identity, expires = await self._jwt(credential)
                subject = SubjectToken(credential, expires)
            else:
                identity = self._api_key(credential)
        except AuthError as exc:
            return AuthOutcome(None, str(exc), spoofed, reason=exc.reason)
        return AuthOutcome(identity, None, spoofed, subject=subject)

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

    async def _jwt(self, token: str) -> tuple[Identity, float]:
        """The token's identity and its `exp`."""
        digest = hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()
        hit = self._verified.get(digest)
        if hit is not None:
            if self._still_valid(hit):
                return hit.identity, hit.exp
            del self._verified[digest]
        identity, claims, leeway = await self._verify_jwt(token)
        exp = claims.get("exp")
        if not isinstance(exp, int | float) or isinstance(exp, bool):
            raise AuthError("invalid token")  # PyJWT checked it is there and a number
        nbf = claims.get("nbf")
        self._verified[digest] = _Verified(
            identity,
            identity.issuer or "",
            (nbf - leeway) if isinstance(nbf, int | float) else float("-inf"),
            exp + leeway,
            self._clock(),
            float(exp),
        )
        if len(self._verified) > VERIFIED_MAX:
            self._verified.popitem(last=False)
        return identity, float(exp)

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
        if not key_fits(key, alg):
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
            keys = load_keys(jwks_keys(response.body))
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
