"""A strict identity provider on loopback: the JWKS the gateway verifies callers' tokens
with, and an OAuth 2.0 Token Exchange endpoint (RFC 8693, and Microsoft Entra's
on-behalf-of form) that checks what a real one checks.

No pip package serves RFC 8693 properly, so this is ours. `/token` checks:
- the client: HTTP Basic (each part form-urlencoded) with the right id and secret, or a
  `private_key_jwt` assertion signed with the client's key (iss = sub = client id,
  aud = the endpoint, unexpired); never both; the secret in the body only for entra_obo;
- the subject token (or the OBO `assertion`): RS256 signature by this IdP's user key,
  `iss`, `aud` (the gateway's audience), `exp`;
- the grant type, the subject token type, the requested token type, a known audience
  (`invalid_target` otherwise), a known resource, and each form field given once.
It issues RS256 tokens with `sub` (the caller), `aud`, `scope`, `exp` and `act` (the
gateway's client id). Fault knobs: `fault` = "500" | "timeout" | "invalid_grant" |
"not_bearer"; `delay` (seconds, a slow IdP); `expires_in`. Counters: `requests`,
`issued` (each token), `refused` (each error code).
"""

from __future__ import annotations

import base64
import json
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, unquote

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa

from helpers.upstreams import Reply, Request, json_reply

ISSUER = "https://idp.test/realms/acme"
GATEWAY_AUDIENCE = "holdgate"
CLIENT_ID = "holdgate"
CLIENT_SECRET = "tx-secret-6c0f4b2e9a71d8"
TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"
ACCESS_TOKEN = "urn:ietf:params:oauth:token-type:access_token"
CLIENT_ASSERTION = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
HANG_SECONDS = 8.0  # longer than the gateway's timeout in the tests (3 s)


def _jwk(key: rsa.RSAPrivateKey, kid: str) -> dict[str, Any]:
    data = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
    return {**data, "kid": kid, "use": "sig", "alg": "RS256"}


class OAuthError(Exception):
    def __init__(self, code: str, status: int = 400) -> None:
        super().__init__(code)
        self.code = code
        self.status = status


@dataclass
class IdentityProvider:
    """The IdP: serve it with `fake_upstream(idp)`, then set `url` to the served base."""

    audiences: set[str] = field(default_factory=lambda: {"hr-mcp"})
    resources: set[str] = field(default_factory=set)
    client_secret: str = CLIENT_SECRET
    client_key: rsa.RSAPrivateKey | None = None  # set: private_key_jwt clients
    fault: str | None = None
    delay: float = 0.0
    expires_in: int = 300
    url: str = ""
    user_key: rsa.RSAPrivateKey = field(
        default_factory=lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048)
    )
    issue_key: rsa.RSAPrivateKey = field(
        default_factory=lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048)
    )
    requests: int = 0
    issued: list[str] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)
    forms: list[dict[str, str]] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def token_url(self) -> str:
        return self.url + "/token"

    @property
    def jwks_url(self) -> str:
        return self.url + "/jwks"

    def user_token(self, user: str, lifetime: int = 300, **claims: Any) -> str:
        """A caller's token, as the gateway's OIDC issuer signs it."""
        now = int(time.time())
        body = {
            "iss": ISSUER,
            "aud": GATEWAY_AUDIENCE,
            "sub": user,
            "groups": ["staff"],
            "iat": now,
            "exp": now + lifetime,
            **claims,
        }
        return jwt.encode(body, self.user_key, algorithm="RS256", headers={"kid": "user-1"})

    def __call__(self, request: Request) -> Reply:
        path = request.path.partition("?")[0]
        if path == "/jwks":
            return json_reply({"keys": [_jwk(self.user_key, "user-1")]})
        if path != "/token":
            return json_reply({"error": "not_found"}, 404)
        with self._lock:
            self.requests += 1
            fault, delay = self.fault, self.delay
        if fault == "timeout":
            time.sleep(HANG_SECONDS)
        if delay:
            time.sleep(delay)
        if fault == "500":
            return json_reply({"error": "server_error"}, 500)
        try:
            answer = self._token(request, fault)
        except OAuthError as exc:
            with self._lock:
                self.refused.append(exc.code)
            # The description quotes what was sent, as careless IdPs do: the gateway must
            # never pass it on.
            form = parse_qs(request.body.decode("ascii", "replace"))
            quoted = (form.get("subject_token") or form.get("assertion") or [""])[0]
            return json_reply(
                {"error": exc.code, "error_description": f"rejected {quoted[:40]}"},
                exc.status,
                headers=[("Cache-Control", "no-store")],
            )
        return json_reply(answer, headers=[("Cache-Control", "no-store")])

    def _token(self, request: Request, fault: str | None) -> dict[str, Any]:
        if request.method != "POST":
            raise OAuthError("invalid_request")
        ctype = request.headers.get("content-type", "").split(";")[0].strip()
        if ctype != "application/x-www-form-urlencoded":
            raise OAuthError("invalid_request")
        raw = parse_qs(request.body.decode("ascii"), keep_blank_values=True, strict_parsing=True)
        if any(len(values) != 1 for values in raw.values()):
            raise OAuthError("invalid_request")
        form = {name: values[0] for name, values in raw.items()}
        grant = form.get("grant_type")
        self._client(request, form, obo=grant == JWT_BEARER)
        with self._lock:
            self.forms.append(
                {k: v for k, v in form.items() if k not in ("client_secret", "client_assertion")}
            )
        if fault == "invalid_grant":
            raise OAuthError("invalid_grant")
        if grant == TOKEN_EXCHANGE:
            if form.get("subject_token_type") != ACCESS_TOKEN:
                raise OAuthError("invalid_request")
            if form.get("requested_token_type", ACCESS_TOKEN) != ACCESS_TOKEN:
                raise OAuthError("invalid_request")
            subject = self._subject(form.get("subject_token", ""))
            audience = form.get("audience")
            if audience not in self.audiences:
                raise OAuthError("invalid_target")
            resource = form.get("resource")
            if resource is not None and resource not in self.resources:
                raise OAuthError("invalid_target")
            scope = form.get("scope")
        elif grant == JWT_BEARER:
            if form.get("requested_token_use") != "on_behalf_of":
                raise OAuthError("invalid_request")
            subject = self._subject(form.get("assertion", ""))
            scope = form.get("scope") or ""
            scopes = scope.split()
            if len(scopes) != 1 or not scopes[0].startswith("api://"):
                raise OAuthError("invalid_scope")
            audience = scopes[0].removeprefix("api://").rsplit("/", 1)[0]
            if audience not in self.audiences:
                raise OAuthError("invalid_target")
        else:
            raise OAuthError("unsupported_grant_type")
        now = int(time.time())
        claims = {
            "iss": ISSUER,
            "sub": subject["sub"],
            "aud": audience,
            "iat": now,
            "exp": now + self.expires_in,
            "jti": str(uuid.uuid4()),
            "act": {"sub": CLIENT_ID},
        }
        if scope:
            claims["scope"] = scope
        token = jwt.encode(claims, self.issue_key, algorithm="RS256", headers={"kid": "tx-1"})
        with self._lock:
            self.issued.append(token)
        answer: dict[str, Any] = {
            "access_token": token,
            "token_type": "N_A" if fault == "not_bearer" else "Bearer",
            "expires_in": self.expires_in,
        }
        if grant == TOKEN_EXCHANGE:
            answer["issued_token_type"] = ACCESS_TOKEN
        if scope:
            answer["scope"] = scope
        return answer

    def _client(self, request: Request, form: dict[str, str], obo: bool) -> None:
        """Exactly one client authentication, and the right one."""
        basic = request.headers.get("authorization")
        in_body = "client_secret" in form
        assertion = form.get("client_assertion")
        if sum(map(bool, (basic, in_body, assertion))) != 1:
            raise OAuthError("invalid_client", 401)
        if basic is not None:
            scheme, _, value = basic.partition(" ")
            try:
                user, _, secret = base64.b64decode(value, validate=True).decode().partition(":")
            except ValueError:
                raise OAuthError("invalid_client", 401) from None
            if scheme != "Basic" or (unquote(user), unquote(secret)) != (
                CLIENT_ID,
                self.client_secret,
            ):
                raise OAuthError("invalid_client", 401)
        elif in_body:
            if not obo or form.get("client_id") != CLIENT_ID:
                raise OAuthError("invalid_client", 401)
            if form["client_secret"] != self.client_secret:
                raise OAuthError("invalid_client", 401)
        else:
            if self.client_key is None or form.get("client_assertion_type") != CLIENT_ASSERTION:
                raise OAuthError("invalid_client", 401)
            try:
                claims = jwt.decode(
                    assertion or "",
                    self.client_key.public_key(),
                    algorithms=["RS256"],
                    audience=self.token_url,
                    issuer=CLIENT_ID,
                    options={"require": ["exp", "iss", "sub", "aud", "jti"]},
                )
            except jwt.InvalidTokenError:
                raise OAuthError("invalid_client", 401) from None
            if claims["sub"] != CLIENT_ID or form.get("client_id") != CLIENT_ID:
                raise OAuthError("invalid_client", 401)

    def _subject(self, token: str) -> dict[str, Any]:
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                self.user_key.public_key(),
                algorithms=["RS256"],
                audience=GATEWAY_AUDIENCE,
                issuer=ISSUER,
                options={"require": ["exp", "iss", "aud", "sub"]},
            )
        except jwt.InvalidTokenError:
            raise OAuthError("invalid_grant") from None
        return claims
