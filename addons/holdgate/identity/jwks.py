"""Fetching an issuer's JWKS and turning it into keys, off the event loop.

A fetch reads at most 1 MiB with a 5 s timeout and takes the caching advice of the
response's `Cache-Control`; symmetric (`oct`) keys are dropped and a key only signs with
its own algorithm family."""

from __future__ import annotations

import asyncio
import collections
import json
import urllib.request
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from jwt import PyJWK, PyJWKSet
from jwt.exceptions import PyJWKError, PyJWKSetError

# A key set is refreshed when its response's `Cache-Control: max-age` says, but never
# sooner than the issuer's `jwks_min_age` nor later than this.
JWKS_LONGEST_AGE = 86_400.0


def jwks_keys(data: bytes) -> list[dict[str, Any]]:
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


def load_keys(keys: list[dict[str, Any]]) -> dict[str, PyJWK]:
    try:
        keyset = PyJWKSet.from_dict({"keys": [k for k in keys if k.get("use", "sig") == "sig"]})
    except (PyJWKSetError, PyJWKError) as exc:
        raise ValueError(str(exc)) from None
    return {k.key_id or "": k for k in keyset.keys if k.key_type != "oct"}


def key_fits(key: PyJWK, alg: str) -> bool:
    """The algorithm family must match the key type (no RSA key used as an HMAC secret)."""
    families = {"RSA": ("RS", "PS"), "EC": ("ES",), "OKP": ("EdDSA",)}
    declared = key._jwk_data.get("alg")  # noqa: SLF001 - PyJWK keeps the JWK's own alg here
    if declared is not None and declared != alg:
        return False
    return any(alg.startswith(prefix) for prefix in families.get(key.key_type or "", ()))
