"""One exchange at a token endpoint: the request a profile sends (RFC 8693 token exchange,
or Microsoft Entra's on-behalf-of), the client's authentication, and the answer read
strictly.

Failures, each naming only what may be shown (never the token, the secret, nor the IdP's
`error_description`, which may quote either):

    ExchangeFailed
     ├── IdpUnavailable   no answer, a timeout, a 5xx or a redirect: the call gets 503
     ├── IdpRefused       a 4xx (`invalid_grant`, `invalid_target`, …): the call gets 401
     └── TokenUnusable    a 2xx that is not a bearer access token the gateway can send
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
import time
import uuid
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import httpx
import jwt

from holdgate.credentials.credentials_config import CredentialProvider, UpstreamCredentials

TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"
ACCESS_TOKEN = "urn:ietf:params:oauth:token-type:access_token"
JWT_TOKEN = "urn:ietf:params:oauth:token-type:jwt"
CLIENT_ASSERTION = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
ASSERTION_LIFETIME = 60
# The most of an answer read: a token endpoint's JSON is a few kilobytes.
MAX_ANSWER_BYTES = 65_536
# The longest token sent on (the response guard searches every answer for it, in all forms).
MAX_TOKEN_BYTES = 4096
# An OAuth error code as RFC 6749 §5.2 allows it; anything else is shown as `unknown`.
_ERROR_CODE = re.compile(r"^[\x20\x21\x23-\x5B\x5D-\x7E]{1,64}$")
# What may go in an HTTP header value as a bearer token (RFC 6750 b64token, and JWTs).
_BEARER = re.compile(r"^[A-Za-z0-9\-._~+/]+=*$")


class ExchangeFailed(Exception):
    """The exchange did not give a token to send; `str()` is safe for bodies and logs."""

    kind = "failed"

    def __init__(self, reason: str, idp_error: str | None = None, status: int | None = None):
        super().__init__(reason)
        self.reason = reason
        self.idp_error = idp_error
        self.status = status

    def evidence(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": self.kind, "reason": self.reason}
        if self.idp_error is not None:
            out["idp_error"] = self.idp_error
        if self.status is not None:
            out["status"] = self.status
        return out


class IdpUnavailable(ExchangeFailed):
    """No usable answer in time: the identity provider is down, slow or failing."""

    kind = "unavailable"


class IdpRefused(ExchangeFailed):
    """The identity provider refused to exchange this caller's token (a 4xx)."""

    kind = "refused"


class TokenUnusable(ExchangeFailed):
    """The identity provider answered, but not with a bearer access token."""

    kind = "unusable"


@dataclass(frozen=True)
class IssuedToken:
    """An exchanged token and what the record may say of it (never the token itself)."""

    token: str = field(repr=False)
    expires_at: float | None  # wall clock, from `expires_in` or the JWT's `exp`
    claims: dict[str, Any]  # the issued JWT's claims as sent (not verified: evidence only)
    scope: str | None


def exchange_form(
    credentials: UpstreamCredentials, subject_token: str, now: float | None = None
) -> tuple[dict[str, str], dict[str, str]]:
    """The form and headers of one exchange, client authentication included."""
    provider = credentials.provider
    form: dict[str, str]
    if provider.profile == "entra_obo":
        form = {
            "grant_type": JWT_BEARER,
            "assertion": subject_token,
            "requested_token_use": "on_behalf_of",
            "scope": " ".join(credentials.scopes),
        }
    else:
        form = {
            "grant_type": TOKEN_EXCHANGE,
            "subject_token": subject_token,
            "subject_token_type": ACCESS_TOKEN,
            "requested_token_type": ACCESS_TOKEN,
        }
        if credentials.audience is not None:
            form["audience"] = credentials.audience
        if credentials.resource is not None:
            form["resource"] = credentials.resource
        if credentials.scopes:
            form["scope"] = " ".join(credentials.scopes)
    headers = {"Accept": "application/json"}
    if provider.client_auth == "private_key_jwt":
        form["client_id"] = provider.client_id
        form["client_assertion_type"] = CLIENT_ASSERTION
        form["client_assertion"] = client_assertion(provider, now)
    elif provider.profile == "entra_obo":
        # Microsoft documents the secret in the body for on-behalf-of.
        form["client_id"] = provider.client_id
        form["client_secret"] = provider.client_secret or ""
    else:
        headers["Authorization"] = basic_auth(provider.client_id, provider.client_secret or "")
    return form, headers


def basic_auth(client_id: str, secret: str) -> str:
    """RFC 6749 §2.3.1: each part form-urlencoded, then HTTP Basic."""
    pair = f"{quote(client_id, safe='')}:{quote(secret, safe='')}".encode()
    return "Basic " + base64.b64encode(pair).decode("ascii")


def client_assertion(provider: CredentialProvider, now: float | None = None) -> str:
    """RFC 7523 client authentication: a short-lived JWT for the token endpoint."""
    issued = int(time.time() if now is None else now)
    claims = {
        "iss": provider.client_id,
        "sub": provider.client_id,
        "aud": provider.token_url,
        "jti": str(uuid.uuid4()),
        "iat": issued,
        "exp": issued + ASSERTION_LIFETIME,
    }
    headers = {"kid": provider.key_id} if provider.key_id else None
    return jwt.encode(
        claims, provider.private_key or "", algorithm=provider.signing_alg, headers=headers
    )


def read_answer(status: int, body: bytes, now: float) -> IssuedToken:
    """The issued token from the endpoint's answer, or the failure it means."""
    if status >= 500 or 300 <= status < 400:
        raise IdpUnavailable(f"the token endpoint answered HTTP {status}", _code(body), status)
    if status >= 400:
        raise IdpRefused(
            f"the identity provider refused the exchange (HTTP {status})", _code(body), status
        )
    if not 200 <= status < 300:
        raise IdpUnavailable(f"the token endpoint answered HTTP {status}", None, status)
    try:
        answer = json.loads(body)
    except ValueError:
        raise TokenUnusable("the token endpoint's answer is not JSON", None, status) from None
    if not isinstance(answer, dict):
        raise TokenUnusable("the token endpoint's answer is not a JSON object", None, status)
    token = answer.get("access_token")
    if not isinstance(token, str) or not token:
        raise TokenUnusable("the answer has no access_token", None, status)
    token_type = answer.get("token_type")
    if not isinstance(token_type, str) or token_type.lower() != "bearer":
        raise TokenUnusable(
            f"the issued token_type is {_shown(token_type)}, not Bearer", None, status
        )
    issued_type = answer.get("issued_token_type")
    if issued_type is not None and issued_type not in (ACCESS_TOKEN, JWT_TOKEN):
        raise TokenUnusable(
            f"the issued_token_type is {_shown(issued_type)}, not an access token", None, status
        )
    if len(token.encode()) > MAX_TOKEN_BYTES or not _BEARER.match(token):
        raise TokenUnusable(
            "the issued token is not a bearer token the gateway can send "
            f"(at most {MAX_TOKEN_BYTES} bytes of token68 characters)",
            None,
            status,
        )
    expires_in = answer.get("expires_in")
    expires_at: float | None = None
    if isinstance(expires_in, int | float) and not isinstance(expires_in, bool):
        expires_at = now + float(expires_in)
    claims = _claims(token)
    exp = claims.get("exp")
    if isinstance(exp, int | float) and not isinstance(exp, bool):
        expires_at = float(exp) if expires_at is None else min(expires_at, float(exp))
    scope = answer.get("scope")
    return IssuedToken(token, expires_at, claims, scope if isinstance(scope, str) else None)


def _claims(token: str) -> dict[str, Any]:
    """The claims of a JWT access token, unverified (the gateway is not its audience; they
    are kept as evidence of whom it names); {} for an opaque token."""
    if token.count(".") != 2:
        return {}
    try:
        claims = jwt.decode(token, options={"verify_signature": False})
    except jwt.InvalidTokenError:
        return {}
    return claims if isinstance(claims, dict) else {}


def _code(body: bytes) -> str | None:
    """The OAuth `error` code of an error answer (its description is never kept)."""
    try:
        answer = json.loads(body)
    except ValueError:
        return None
    code = answer.get("error") if isinstance(answer, dict) else None
    if code is None:
        return None
    return code if isinstance(code, str) and _ERROR_CODE.match(code) else "unknown"


def _shown(value: Any) -> str:
    text = json.dumps(value)
    return text if len(text) <= 60 else text[:60] + "…"


async def post_exchange(
    client: httpx.AsyncClient,
    credentials: UpstreamCredentials,
    subject_token: str,
    now: float,
) -> IssuedToken:
    """POST one exchange (on the event loop, never blocking it), bounded by the provider's
    timeout end to end; raises an ExchangeFailed."""
    provider = credentials.provider
    # off the loop: a signed client assertion is an RSA or ECDSA signature
    form, headers = await asyncio.to_thread(exchange_form, credentials, subject_token, now)

    async def post() -> tuple[int, bytes]:
        async with client.stream("POST", provider.token_url, data=form, headers=headers) as answer:
            body = bytearray()
            async for chunk in answer.aiter_bytes():
                body += chunk
                if len(body) > MAX_ANSWER_BYTES:
                    raise IdpUnavailable("the token endpoint's answer is too large")
            return answer.status_code, bytes(body)

    try:
        status, body = await asyncio.wait_for(post(), provider.timeout)
    except TimeoutError:
        raise IdpUnavailable(
            f"the token endpoint did not answer within {provider.timeout:g}s"
        ) from None
    except httpx.HTTPError as exc:
        raise IdpUnavailable(
            f"the token endpoint cannot be reached ({type(exc).__name__})"
        ) from None
    return read_answer(status, body, now)
