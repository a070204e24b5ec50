"""Which caller opened each MCP session, cached in front of the store's first-claim row."""

from __future__ import annotations

import hashlib


class SessionOwners:
    """Which caller opened each MCP session, so nobody else can use or end it.

    A session belongs to the first identity seen with it: the one whose `initialize`
    answer carried the new `Mcp-Session-Id`, or, for a session no gateway has seen open,
    the first caller that uses it. The store decides for every replica (first claim wins);
    this is its bounded cache: a session's owner never changes while it lives.
    """

    def __init__(self, limit: int = 100_000) -> None:
        self.limit = limit
        self._owners: dict[str, str] = {}

    @staticmethod
    def key(upstream: str, session: str) -> str:
        """The store's key for a session: a digest (the raw id is the upstream's secret)."""
        return hashlib.sha256(f"{upstream}\0{session}".encode(errors="surrogatepass")).hexdigest()

    def cached(self, key: str) -> str | None:
        return self._owners.get(key)

    def remember(self, key: str, owner: str) -> None:
        if len(self._owners) >= self.limit:
            self._owners.pop(next(iter(self._owners)))
        self._owners[key] = owner

    def forget(self, key: str) -> None:
        self._owners.pop(key, None)
