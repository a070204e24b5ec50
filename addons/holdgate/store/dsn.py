"""A PostgreSQL URL as it may be shown: in messages, logs, `holdgate replicas`, the
`pg_dump` command `holdgate backup` prints.

Passwords hide in two places, the user info (`user:pw@`) and the query (`password=`,
`sslpassword=`); both are left out. A URL whose user info does not split where it ends
(a password with an unescaped `/`, `?`, `#` or `@`) cannot be shown safely at all.
"""

from __future__ import annotations

from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

HIDDEN = "postgresql://(address hidden: the URL could not be parsed safely)"


def safe_dsn(dsn: str) -> str | None:
    """`dsn` without any password, or None when it cannot be shown safely."""
    try:
        parts = urlsplit(dsn)
        host, port_number = parts.hostname or "", parts.port
    except ValueError:  # e.g. a password with an unescaped '/' read as a port
        return None
    if "@" in parts.path + parts.query + parts.fragment:
        return None  # the user info was not split where it ends
    if ":" in host:
        host = f"[{host}]"
    user = quote(parts.username or "", safe="") + "@" if parts.username else ""
    port = f":{port_number}" if port_number else ""
    query = urlencode([(k, v) for k, v in parse_qsl(parts.query) if "password" not in k.lower()])
    return urlunsplit((parts.scheme, f"{user}{host}{port}", parts.path, query, ""))


def shown_dsn(dsn: str) -> str:
    """`dsn` for a message or a log: without any password, or a placeholder."""
    return safe_dsn(dsn) or HIDDEN
