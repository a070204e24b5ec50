"""Identity: who is calling, proven before any decision; the caller's credentials stop here.

Also serves the RFC 9728 protected-resource metadata that OAuth-capable MCP clients
read after a 401 to find where to sign in.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from mitmproxy import http

from holdgate.addons.flowstate import (
    fail_closed,
    header_lists,
    is_mcp,
    json_response,
    refuse,
    session_key,
    state,
)
from holdgate.config.gateway_config import GatewayConfig, Upstream
from holdgate.identity import (
    ANONYMOUS,
    CREDENTIAL_HEADERS,
    Authenticator,
    SessionOwners,
    authorization_servers,
    challenge,
)
from holdgate.protocol.jsonrpc import INTERNAL_ERROR, INVALID_REQUEST
from holdgate.protocol.sessionless import is_grouped_id
from holdgate.store import StoreError

if TYPE_CHECKING:
    from holdgate.addons.audit_store import AuditStore
    from holdgate.addons.config_loader import ConfigLoader


WELL_KNOWN = "/.well-known/oauth-protected-resource"
UNAUTHORIZED = -32001


class Authentication:
    def __init__(self, loader: ConfigLoader, audit: AuditStore) -> None:
        self.loader = loader
        self.audit = audit
        self._authenticator: Authenticator | None = None
        self._built_for: str | None = None
        self.sessions = SessionOwners()

    def authenticator(self, config: GatewayConfig) -> Authenticator | None:
        """One authenticator per config version, so JWKS caches survive between requests;
        it keeps its issuers' keys fresh in the background until the next one replaces it.
        Called from the event loop (a hook)."""
        if self._built_for != config.digest:
            if self._authenticator is not None:
                self._authenticator.close()
            self._authenticator = None
            if config.identity is not None:
                self._authenticator = Authenticator(config.identity)
                self._authenticator.start()
            self._built_for = config.digest
        return self._authenticator

    def running(self) -> None:
        """Fetch the issuers' keys at start, so the first token does not wait for them."""
        if self.loader.current is not None:
            self.authenticator(self.loader.current)

    def done(self) -> None:
        if self._authenticator is not None:
            self._authenticator.close()

    @fail_closed
    async def requestheaders(self, flow: http.HTTPFlow) -> None:
        """Identity is settled on the headers, before the body is read: an unknown caller is
        refused before anything is decided, held or recorded beyond its refusal row."""
        if state(flow).local == "resource-metadata":
            self._serve_metadata(flow)
        elif is_mcp(flow):
            await self._authenticate(flow)

    def _serve_metadata(self, flow: http.HTTPFlow) -> None:
        config = state(flow).config
        if config is None:
            raise RuntimeError("no config loaded")
        path = flow.request.path.partition("?")[0]
        prefix = path.split(WELL_KNOWN, 1)[1]
        servers = authorization_servers(config.identity) if config.identity else []
        flow.response = json_response(
            200,
            {
                "resource": front_url(flow) + prefix,
                "authorization_servers": servers,
                "bearer_methods_supported": ["header"],
                "resource_name": "Holdgate MCP gateway",
            },
        )

    async def _authenticate(self, flow: http.HTTPFlow) -> None:
        st = state(flow)
        config, upstream = st.route.config, st.route.upstream
        authenticator = self.authenticator(config)
        if authenticator is None:
            identity = ANONYMOUS
        else:
            client_ip = flow.client_conn.peername[0] if flow.client_conn.peername else ""
            outcome = await authenticator.authenticate(
                header_lists(flow.request.headers), client_ip
            )
            for name in outcome.spoofed_headers:
                flow.request.headers.pop(name, None)
            if outcome.spoofed_headers:
                st.spoofing = {"headers": list(outcome.spoofed_headers), "from": client_ip}
            for name in trusted_header_names(config):
                flow.request.headers.pop(name, None)
            if outcome.identity is None:
                strip_credentials(flow.request, upstream)
                self._unauthorized(flow, upstream, outcome.error, outcome.reason)
                return
            identity = outcome.identity
            st.subject = outcome.subject
        strip_credentials(flow.request, upstream)
        st.identity = identity
        session = session_key(flow)
        if session is None:
            return
        try:
            # a grouped id is never sent to clients: one that names it forges a session
            foreign = is_grouped_id(session) or (
                await self._owner(upstream.name, session, identity.user) != identity.user
            )
        except StoreError as exc:
            refuse(
                flow,
                503,
                INTERNAL_ERROR,
                f"the session's owner cannot be checked: the audit store is unavailable "
                f"({exc}); not forwarded",
                kind="audit-unavailable",
            )
            return
        if foreign:
            # Answered as the upstream answers a session it does not know: nothing says
            # whose it is, or that it exists.
            refuse(
                flow,
                404,
                INVALID_REQUEST,
                "session not found; initialize a new one",
                kind="foreign-session",
            )

    async def _owner(self, upstream: str, session: str, user: str) -> str:
        """Who owns a session: cached, else claimed in the store for `user` if nobody has
        it yet (every replica asks the same store, off the event loop)."""
        key = SessionOwners.key(upstream, session)
        owner = self.sessions.cached(key)
        if owner is None:
            if not self.audit.is_open:
                raise RuntimeError("session owners need the audit store, which is not open")
            owner = await self.audit.run(lambda store: store.claim_session(key, user))
            self.sessions.remember(key, owner)
        return owner

    @fail_closed
    async def responseheaders(self, flow: http.HTTPFlow) -> None:
        """The session an upstream opens belongs to whoever opened it; a DELETE ends it."""
        st = state(flow)
        if not st.authenticated or flow.response is None or st.refused:
            return
        identity, upstream = st.identity, st.route.upstream.name
        opened = flow.response.headers.get("mcp-session-id")
        if opened and opened != session_key(flow):
            if is_grouped_id(opened):
                raise RuntimeError("the upstream issued a session id in Holdgate's own namespace")
            if await self._owner(upstream, opened, identity.user) != identity.user:
                raise RuntimeError("the upstream issued a session id another caller holds")
        if flow.request.method == "DELETE" and 200 <= flow.response.status_code < 300:
            ended = session_key(flow)
            if ended is not None and self.audit.is_open:
                key = SessionOwners.key(upstream, ended)
                self.sessions.forget(key)
                await self.audit.run(lambda store: store.end_session(key))

    def _unauthorized(
        self, flow: http.HTTPFlow, upstream: Upstream, error: str | None, reason: str | None
    ) -> None:
        """401. The header gets only a fixed reason; the body and the audit row also name the
        bad value, which `holdgate.protocol.jsonrpc.shown` has already quoted and bounded."""
        metadata = front_url(flow) + WELL_KNOWN + (upstream.prefix or "")
        error = error or "no credentials"
        refuse(
            flow,
            401,
            UNAUTHORIZED,
            f"unauthorized: {error}",
            kind="unauthenticated",
            headers={"WWW-Authenticate": challenge(metadata, reason or "no credentials")},
        )
        state(flow).auth_error = error


def strip_credentials(request: http.Request, upstream: Upstream) -> None:
    """The upstream must never see the caller's token; it gets the gateway's own instead.
    One pass over the raw fields (a `pop` per name walks them all each time)."""
    dropped = _CREDENTIALS if upstream.pass_cookies else _CREDENTIALS_AND_COOKIES
    fields = request.headers.fields
    kept = tuple(field for field in fields if field[0].lower() not in dropped)
    if len(kept) != len(fields):
        request.headers.fields = kept


_CREDENTIALS = frozenset(name.lower().encode("ascii") for name in CREDENTIAL_HEADERS)
_CREDENTIALS_AND_COOKIES = _CREDENTIALS | {b"cookie"}


def trusted_header_names(config: GatewayConfig) -> tuple[str, ...]:
    trusted = config.identity.trusted_header if config.identity else None
    if trusted is None:
        return ()
    return tuple(n for n in (trusted.user_header, trusted.groups_header) if n)


def front_url(flow: http.HTTPFlow) -> str:
    """The gateway's own address as the client used it."""
    return state(flow).front or f"{flow.request.scheme}://{flow.request.pretty_host}"
