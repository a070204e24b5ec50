"""Who is calling: OIDC JWTs, API keys, or headers from a trusted auth proxy.

caller.py           the `Identity` a request runs as, `AuthError`, the 401 challenge
identity_config.py  the config's `identity` section (issuers, API keys, trusted header)
jwks.py             fetching an issuer's key set off the event loop, and reading it
authenticator.py    `Authenticator`: a request's headers to an `Identity`, or a refusal
session_owners.py   which caller opened each MCP session
"""

from holdgate.identity.authenticator import (
    VERIFIED_TTL,
    Authenticator,
    claim,
    group_list,
    refresh_interval,
)
from holdgate.identity.caller import (
    ANONYMOUS,
    AUTH_REASONS,
    CREDENTIAL_HEADERS,
    AuthError,
    AuthOutcome,
    Identity,
    SubjectToken,
    challenge,
)
from holdgate.identity.identity_config import (
    ApiKey,
    IdentityConfig,
    OidcIssuer,
    TrustedHeader,
    api_key_hash,
    authorization_servers,
    generate_api_key,
    parse_identity,
    parse_trusted_header,
)
from holdgate.identity.jwks import (
    JWKS_FETCHES,
    JWKS_LONGEST_AGE,
    Fetch,
    JwksResponse,
    cache_max_age,
    fetch_url,
)
from holdgate.identity.session_owners import SessionOwners

__all__ = [
    "ANONYMOUS",
    "AUTH_REASONS",
    "CREDENTIAL_HEADERS",
    "JWKS_FETCHES",
    "JWKS_LONGEST_AGE",
    "VERIFIED_TTL",
    "ApiKey",
    "AuthError",
    "AuthOutcome",
    "SubjectToken",
    "Authenticator",
    "Fetch",
    "Identity",
    "IdentityConfig",
    "JwksResponse",
    "OidcIssuer",
    "SessionOwners",
    "TrustedHeader",
    "api_key_hash",
    "authorization_servers",
    "cache_max_age",
    "challenge",
    "claim",
    "fetch_url",
    "generate_api_key",
    "group_list",
    "parse_identity",
    "parse_trusted_header",
    "refresh_interval",
]
