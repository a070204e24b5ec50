"""The `credential_providers:` section and an upstream's `credentials:`: where per-user
upstream tokens come from (OAuth 2.0 Token Exchange, RFC 8693, or Microsoft's on-behalf-of
dialect), and what each upstream asks for.

    credential_providers:
      - name: acme-sso
        token_url: https://sso.acme.example/oauth2/token   # http:// only to loopback
        client_id: holdgate
        client_secret: ${env:HOLDGATE_TX_SECRET}           # client_secret_basic (default)
        # client_auth: private_key_jwt                     # or a signed assertion:
        # private_key_file: keys/holdgate-tx.pem           #   RSA (RS256) or P-256 (ES256)
        # key_id: tx-2026                                  #   its `kid`, optional
        profile: rfc8693                                   # rfc8693 | entra_obo
        timeout: 3s

    upstreams:
      - name: hr
        credentials:
          exchange: acme-sso
          audience: hr-mcp
          resource: https://hr.internal/mcp                # optional (RFC 8707)
          scopes: [hr.read]
          service_identities: deny                         # deny | static

The client secret must be a `${env:…}` or `${file:…}` reference: the config text is stored
with each config version, so a secret written into it would reach the store. Mistakes are
`ConfigError`s with file, line and key.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from holdgate.configfile import Node, Problems, is_loopback
from holdgate.masking.injected import MAX_SECRET_BYTES

PROVIDER_KEYS = {
    "name",
    "token_url",
    "client_id",
    "client_secret",
    "client_auth",
    "private_key_file",
    "key_id",
    "profile",
    "timeout",
}
CREDENTIALS_KEYS = {"exchange", "audience", "resource", "scopes", "service_identities"}
PROFILES = ("rfc8693", "entra_obo")
CLIENT_AUTH = ("client_secret_basic", "private_key_jwt")
MAX_TIMEOUT = 60.0
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
# An OAuth scope token (RFC 6749 §3.3): printable ASCII without space, `"` or `\`.
_SCOPE = re.compile(r"^[\x21\x23-\x5B\x5D-\x7E]+$")

Profile = Literal["rfc8693", "entra_obo"]
ClientAuth = Literal["client_secret_basic", "private_key_jwt"]


@dataclass(frozen=True)
class CredentialProvider:
    """One token endpoint the gateway exchanges callers' tokens at. `client_secret` and
    `private_key` are None when not used, or when the config was read without secrets."""

    name: str
    token_url: str
    client_id: str
    client_auth: ClientAuth = "client_secret_basic"
    client_secret: str | None = field(default=None, repr=False)
    private_key: str | None = field(default=None, repr=False)  # PEM
    signing_alg: str | None = None  # RS256 | ES256, from the key
    key_id: str | None = None
    profile: Profile = "rfc8693"
    timeout: float = 3.0

    @property
    def secrets(self) -> tuple[str, ...]:
        """What must never be written anywhere and is searched for in answers: the client
        secret. (The signing key never leaves the gateway: only assertions signed with it.)"""
        return (self.client_secret,) if self.client_secret else ()


@dataclass(frozen=True)
class UpstreamCredentials:
    """What one upstream receives instead of a shared credential: a token for the caller,
    obtained from `provider` for `audience` / `resource` / `scopes`. Callers without an
    OIDC token to exchange are refused (`deny`) or get the static `inject:` (`static`)."""

    provider: CredentialProvider
    audience: str | None
    resource: str | None = None
    scopes: tuple[str, ...] = ()
    service_identities: Literal["deny", "static"] = "deny"


def parse_credential_providers(
    node: Node, problems: Problems, secrets: bool = True
) -> tuple[CredentialProvider, ...]:
    """Every provider that parsed; each one's mistakes are recorded in `problems`."""
    if node.missing:
        return ()
    out: list[CredentialProvider] = []
    for item in problems.elements(node):
        provider = problems.attempt(_parse_provider, item, secrets, out)
        if provider is not None:
            out.append(provider)
    return tuple(out)


def _parse_provider(
    node: Node, secrets: bool, before: list[CredentialProvider]
) -> CredentialProvider:
    node.mapping(PROVIDER_KEYS, required={"name", "token_url", "client_id"})
    name_node = node.child("name")
    name = name_node.string()
    if not _NAME.match(name):
        raise name_node.error(
            "letters, digits, '.', '_' and '-' (at most 64), e.g. acme-sso: upstreams name "
            "the provider in `credentials: {exchange: NAME}`"
        )
    if any(p.name == name for p in before):
        raise name_node.error(f"credential provider {name!r} is defined twice")
    token_url = _token_url(node.child("token_url"))
    client_id = node.child("client_id").string()
    auth_node = node.child("client_auth")
    client_auth = auth_node.choice(CLIENT_AUTH, "client_secret_basic")
    profile = node.child("profile").choice(PROFILES, "rfc8693")
    timeout_node = node.child("timeout")
    timeout = timeout_node.duration(default=3.0)
    if not 0 < timeout <= MAX_TIMEOUT:
        raise timeout_node.error(
            f"expected a duration from 1ms to {MAX_TIMEOUT:.0f}s, e.g. 3s: how long a call "
            "waits for the identity provider before it is refused with 503"
        )
    secret: str | None = None
    key: str | None = None
    alg: str | None = None
    if client_auth == "client_secret_basic":
        for other in ("private_key_file", "key_id"):
            if node.has(other):
                raise node.child(other).error(
                    f"`{other}` is for `client_auth: private_key_jwt`; with a client secret, "
                    "remove it"
                )
        secret_node = node.child("client_secret")
        if secret_node.missing:
            raise node.error(
                "missing required key 'client_secret': the secret the gateway authenticates "
                'to the token endpoint with, e.g. client_secret: "${env:HOLDGATE_TX_SECRET}" '
                "(or `client_auth: private_key_jwt` with `private_key_file`)"
            )
        if "${" not in secret_node.string():
            raise secret_node.error(
                'name the secret, do not write it here: client_secret: "${env:HOLDGATE_TX_SECRET}"'
                ' or "${file:tx-secret.txt}" (the config text is stored with each version)'
            )
        secret = secret_node.secret(resolve=secrets)
        if len(secret.encode("utf-8", "surrogatepass")) > MAX_SECRET_BYTES:
            raise secret_node.error(
                f"the secret is longer than {MAX_SECRET_BYTES} bytes (every answer is searched "
                "for it in all its forms); use a shorter one"
            )
    else:
        if node.has("client_secret"):
            raise node.child("client_secret").error(
                "`client_auth: private_key_jwt` signs an assertion instead of sending a "
                "secret; remove `client_secret` (or drop `client_auth` to use the secret)"
            )
        key_node = node.child("private_key_file")
        if key_node.missing:
            raise node.error(
                "missing required key 'private_key_file': `client_auth: private_key_jwt` "
                "needs the PEM file of the key it signs its assertions with"
            )
        key, alg = _private_key(key_node, secrets)
    return CredentialProvider(
        name,
        token_url,
        client_id,
        client_auth,  # type: ignore[arg-type]
        secret,
        key,
        alg,
        node.child("key_id").optional_string(),
        profile,  # type: ignore[arg-type]
        timeout,
    )


def _token_url(node: Node) -> str:
    url = node.string()
    parts = urlsplit(url)
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise node.error(f"expected an https:// URL, e.g. https://sso.example/token; got {url!r}")
    try:
        parts.port  # noqa: B018 - raises on a port that is not a number
    except ValueError:
        raise node.error("the URL's port is not a number from 1 to 65535") from None
    if parts.scheme == "http" and not is_loopback(parts.hostname):
        raise node.error(
            f"http:// would send callers' tokens and the client secret unencrypted; use "
            f"https:// for {parts.hostname} (http:// is accepted only to a loopback address, "
            "for tests and development)"
        )
    if parts.username is not None or parts.password is not None:
        raise node.error("no user info in the URL: the client authenticates with its secret")
    if parts.fragment:
        raise node.error("a token endpoint URL has no fragment (`#…`); remove it")
    return url


def _private_key(node: Node, secrets: bool) -> tuple[str | None, str]:
    """The PEM of the signing key (None when secrets are not read) and its algorithm."""
    text = node.string()
    path = Path(text)
    if not path.is_absolute():
        path = Path(node.doc.file).parent / path
    if not secrets:
        return None, "RS256"
    try:
        pem = path.read_text("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not a text file"
        raise node.error(f"cannot read the private key file {path} ({reason})") from None
    try:
        key = load_pem_private_key(pem.encode("utf-8"), password=None)
    except (ValueError, TypeError):
        raise node.error(
            f"{path} is not an unencrypted PEM private key (write it with "
            "`openssl genpkey -algorithm RSA -out FILE`)"
        ) from None
    if isinstance(key, rsa.RSAPrivateKey) and key.key_size >= 2048:
        return pem.strip(), "RS256"
    if isinstance(key, ec.EllipticCurvePrivateKey) and isinstance(key.curve, ec.SECP256R1):
        return pem.strip(), "ES256"
    raise node.error(f"{path}: expected an RSA key of 2048 bits or more, or an EC P-256 key")


def parse_upstream_credentials(
    node: Node,
    providers: tuple[CredentialProvider, ...],
    declared: set[str] | None,
    has_static_authorization: bool,
) -> UpstreamCredentials | None:
    """An upstream's `credentials:`; None when it has none, or when it names a provider
    that is declared but failed to parse (that provider's own mistake is reported)."""
    if node.missing:
        return None
    node.mapping(CREDENTIALS_KEYS, required={"exchange"})
    exchange = node.child("exchange")
    name = exchange.string()
    provider = next((p for p in providers if p.name == name), None)
    if provider is None:
        if declared is None or name in declared:
            return None
        known = ", ".join(sorted(p.name for p in providers)) or "none"
        raise exchange.error(
            f"no credential provider named {name!r}; known: {known} "
            "(declare it under `credential_providers:`)"
        )
    audience_node = node.child("audience")
    audience = audience_node.optional_string()
    if audience is None and provider.profile == "rfc8693":
        raise node.error(
            "missing required key 'audience': the upstream's name at the identity provider, "
            "which the exchanged token is issued for (e.g. audience: hr-mcp)"
        )
    resource = node.child("resource").optional_string()
    if resource is not None:
        parts = urlsplit(resource)
        if not parts.scheme or not (parts.netloc or parts.path) or parts.fragment:
            raise node.child("resource").error(
                "expected an absolute URI without a fragment (RFC 8707), e.g. "
                "https://hr.internal/mcp"
            )
        if provider.profile == "entra_obo":
            raise node.child("resource").error(
                "the entra_obo profile names the API in its scope (api://…/.default); "
                "remove `resource`"
            )
    scopes_node = node.child("scopes")
    scopes = scopes_node.strings()
    for index, scope in enumerate(scopes):
        if not _SCOPE.match(scope):
            where = scopes_node.child(index) if isinstance(scopes_node.value, list) else scopes_node
            raise where.error(
                f"{scope!r} is not one scope: no spaces or quotes (list each scope on its own)"
            )
    if provider.profile == "entra_obo" and not scopes:
        raise node.error(
            "the entra_obo profile needs `scopes`, e.g. scopes: [api://hr-mcp/.default]"
        )
    kind_node = node.child("service_identities")
    kind = kind_node.choice(("deny", "static"), "deny")
    if kind == "static" and not has_static_authorization:
        raise kind_node.error(
            "`static` sends callers without an OIDC token the upstream's static "
            "credential, but the upstream has none: add `inject: {headers: {Authorization: "
            '"Bearer ${env:…}"}}` or write `service_identities: deny`'
        )
    return UpstreamCredentials(
        provider,
        audience,
        resource,
        scopes,
        kind,  # type: ignore[arg-type]
    )
