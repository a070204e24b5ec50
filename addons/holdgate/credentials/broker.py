"""CredentialBroker: a token for the caller at one upstream, exchanged once and reused.

- Keyed by an HMAC (the gateway's digest key) of the subject token's digest, the
  provider, the audience, the resource and the scopes: the cache holds no subject token
  and its keys say nothing about one.
- A cached token is used until the earlier of its own expiry and the subject token's,
  less `SKEW`; a token without a known expiry is used for its call only. At most
  `MAX_ENTRIES` tokens, least recently used dropped first.
- Concurrent calls for one key share one exchange (single flight); the exchange runs as
  a task of its own, so a caller that gives up does not cancel it for the others.
- A failed exchange is remembered for `FAILURE_TTL`: calls in that window get the same
  answer without asking the identity provider again.
- Each token's forms are compiled once (off the event loop), for the response guard.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

from holdgate.credentials.credentials_config import UpstreamCredentials
from holdgate.credentials.token_endpoint import (
    ExchangeFailed,
    IssuedToken,
    post_exchange,
)
from holdgate.masking.injected import InjectedForms

logger = logging.getLogger("holdgate")

SKEW = 30.0
MAX_ENTRIES = 10_000
FAILURE_TTL = 5.0


@dataclass(frozen=True)
class Delegation:
    """The token to send an upstream for one caller, and what the record says of it."""

    token: str = field(repr=False)
    cache_key: bytes = field(repr=False)
    evidence: dict[str, Any] = field(default_factory=dict)
    forms: InjectedForms | None = field(default=None, repr=False)

    @property
    def authorization(self) -> str:
        return f"Bearer {self.token}"


@dataclass(frozen=True)
class _Cached:
    issued: IssuedToken
    forms: InjectedForms
    expires: float  # wall clock: min(issued, subject) - SKEW
    token_ref: str


def cache_key(key: bytes, credentials: UpstreamCredentials, subject_token: str) -> bytes:
    """HMAC of the subject token's digest and everything the exchange asks for (the
    provider's endpoint and client too: a reload that changes them starts afresh)."""
    subject = hashlib.sha256(subject_token.encode("utf-8", "surrogatepass")).hexdigest()
    provider = credentials.provider
    parts = (
        subject,
        provider.name,
        provider.token_url,
        provider.client_id,
        provider.profile,
        credentials.audience or "",
        credentials.resource or "",
        " ".join(sorted(credentials.scopes)),
    )
    return hmac.new(key, "\x00".join(parts).encode(), hashlib.sha256).digest()


def token_ref(key: bytes, token: str) -> str:
    """The keyed digest the record names a token by."""
    return "hmac-sha256:" + hmac.new(key, token.encode(), hashlib.sha256).hexdigest()


def evidence(
    credentials: UpstreamCredentials, cached: _Cached, hit: bool, user: str
) -> dict[str, Any]:
    """`extra.upstream_credential` of a call that got a token: whom it names, never it."""
    claims = cached.issued.claims
    scope = cached.issued.scope or claims.get("scope") or claims.get("scp")
    if scope is None and credentials.scopes:
        scope = " ".join(credentials.scopes)
    return {
        "mode": "exchange",
        "provider": credentials.provider.name,
        "sub": claims.get("sub", user),
        "aud": claims.get("aud", credentials.audience),
        "scope": scope,
        "act": claims.get("act"),
        "exp": int(cached.issued.expires_at) if cached.issued.expires_at is not None else None,
        "token_ref": cached.token_ref,
        "cache": "hit" if hit else "miss",
    }


ClientFactory = Callable[[], httpx.AsyncClient]


def default_client() -> httpx.AsyncClient:
    # No proxy from the environment, no redirects: the subject token goes to the token
    # endpoint the config names and nowhere else.
    return httpx.AsyncClient(trust_env=False, follow_redirects=False)


class CredentialBroker:
    def __init__(
        self,
        client_factory: ClientFactory = default_client,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._client_factory = client_factory
        self._clock = clock
        self._cache: OrderedDict[bytes, _Cached] = OrderedDict()
        self._failures: OrderedDict[bytes, tuple[ExchangeFailed, float]] = OrderedDict()
        self._inflight: dict[bytes, asyncio.Task[_Cached]] = {}
        self.exchanges = 0  # exchanges asked of identity providers (for tests and metrics)

    async def delegate(
        self,
        credentials: UpstreamCredentials,
        subject_token: str,
        subject_expires: float,
        user: str,
        key: bytes,
    ) -> Delegation:
        """The caller's token for the upstream; raises ExchangeFailed (with `cached` set
        when the failure is a remembered one)."""
        ckey = cache_key(key, credentials, subject_token)
        now = self._clock()
        found = self._cache.get(ckey)
        if found is not None and now < found.expires:
            self._cache.move_to_end(ckey)
            return self._delegation(credentials, found, ckey, True, user)
        if found is not None:
            del self._cache[ckey]
        failed = self._failures.get(ckey)
        if failed is not None:
            if now < failed[1]:
                raise failed[0]
            del self._failures[ckey]
        running = self._inflight.get(ckey)
        shared = running is not None
        if running is None:
            running = asyncio.get_running_loop().create_task(
                self._exchange(credentials, subject_token, subject_expires, key, ckey)
            )
            self._inflight[ckey] = running
            running.add_done_callback(lambda _: self._inflight.pop(ckey, None))
        cached = await asyncio.shield(running)
        return self._delegation(credentials, cached, ckey, shared, user)

    def _delegation(
        self,
        credentials: UpstreamCredentials,
        cached: _Cached,
        ckey: bytes,
        hit: bool,
        user: str,
    ) -> Delegation:
        return Delegation(
            cached.issued.token, ckey, evidence(credentials, cached, hit, user), cached.forms
        )

    async def _exchange(
        self,
        credentials: UpstreamCredentials,
        subject_token: str,
        subject_expires: float,
        key: bytes,
        ckey: bytes,
    ) -> _Cached:
        self.exchanges += 1
        now = self._clock()
        try:
            # A client per exchange: exchanges are rare (cached), and nothing is left open
            # for the gateway's shutdown to close.
            async with self._client_factory() as client:
                issued = await post_exchange(client, credentials, subject_token, now)
        except ExchangeFailed as exc:
            logger.warning(
                "holdgate: token exchange at %s failed (%s%s)",
                credentials.provider.name,
                exc.kind,
                f", {exc.idp_error}" if exc.idp_error else "",
            )
            self._failures[ckey] = (exc, now + FAILURE_TTL)
            while len(self._failures) > MAX_ENTRIES:
                self._failures.popitem(last=False)
            raise
        forms = await asyncio.to_thread(InjectedForms, (issued.token,))
        ends = (
            subject_expires
            if issued.expires_at is None
            else min(issued.expires_at, subject_expires)
        )
        cached = _Cached(issued, forms, ends - SKEW, token_ref(key, issued.token))
        if issued.expires_at is not None and cached.expires > self._clock():
            self._cache[ckey] = cached
            while len(self._cache) > MAX_ENTRIES:
                self._cache.popitem(last=False)
        return cached

    def evict(self, ckey: bytes) -> None:
        """Forget a token its upstream refused: the next call exchanges again."""
        self._cache.pop(ckey, None)
