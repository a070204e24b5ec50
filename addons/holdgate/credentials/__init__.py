"""Per-user upstream credentials: the caller's verified OIDC token exchanged for a token
of the upstream's own audience (RFC 8693, or Entra's on-behalf-of).

- `credentials_config`: the `credential_providers:` section and an upstream's
  `credentials:` (parsed with file and line for every mistake).
- `token_endpoint`: one exchange: the request each profile sends, client authentication
  (secret or signed assertion), the answer read strictly, the failures it means.
- `broker`: `CredentialBroker`, the cache (keyed digest, expiry, LRU), single flight and
  the remembered failures; `Delegation`, the token and the record's evidence of it.
"""

from holdgate.credentials.broker import CredentialBroker, Delegation
from holdgate.credentials.credentials_config import (
    CredentialProvider,
    UpstreamCredentials,
    parse_credential_providers,
    parse_upstream_credentials,
)
from holdgate.credentials.token_endpoint import (
    ExchangeFailed,
    IdpRefused,
    IdpUnavailable,
    TokenUnusable,
)

__all__ = [
    "CredentialBroker",
    "CredentialProvider",
    "Delegation",
    "ExchangeFailed",
    "IdpRefused",
    "IdpUnavailable",
    "TokenUnusable",
    "UpstreamCredentials",
    "parse_credential_providers",
    "parse_upstream_credentials",
]
