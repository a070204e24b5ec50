"""Who a caller is (`Identity`), why a credential was refused (`AuthError`, with a fixed
reason that never echoes the credential), and the `WWW-Authenticate` challenge sent back."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# Request headers a caller's credential travels in: never forwarded as sent, never recorded.
CREDENTIAL_HEADERS = ("authorization", "x-api-key", "proxy-authorization")


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
class SubjectToken:
    """The caller's verified OIDC token: kept beside the flow only to exchange it for an
    upstream's own token (per-user credentials); never forwarded, recorded or shown."""

    token: str = field(repr=False)
    expires: float  # its `exp` (wall clock)


@dataclass(frozen=True)
class AuthOutcome:
    identity: Identity | None
    error: str | None = None  # safe for a body: reason, and any request text via `shown`
    spoofed_headers: tuple[str, ...] = ()
    reason: str | None = None  # one of AUTH_REASONS: the only part a response header gets
    subject: SubjectToken | None = field(default=None, repr=False)  # with an OIDC identity


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
        "the identity provider refused to exchange the token",
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
