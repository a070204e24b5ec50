"""Gate: the last request hook. Nothing reaches an upstream unless every stage cleared it
and its decision is on record: its last step awaits the write-ahead (the Recorder's), which
refuses the request when the record cannot be kept.

It also swaps the caller's credentials for the upstream's at the last moment, and
masks the injected values in the flow once the request has left, so neither a held
flow nor a saved one shows them. For an upstream with `credentials:` that is a token for
the caller, exchanged only now, once every decision is made (a denied or held call mints
nothing), and before the write-ahead, so the rows say which credential went out.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urlsplit

from mitmproxy import http

from holdgate.addons.authentication import UNAUTHORIZED, WELL_KNOWN, front_url
from holdgate.addons.flowstate import fail_closed, refuse, state
from holdgate.config.gateway_config import GatewayConfig, Upstream
from holdgate.credentials import (
    CredentialBroker,
    ExchangeFailed,
    IdpRefused,
    IdpUnavailable,
    UpstreamCredentials,
)
from holdgate.identity import challenge
from holdgate.protocol.jsonrpc import INTERNAL_ERROR

INJECTED_MARK = "[injected by holdgate]"

# Records a cleared flow's decision before it leaves, or refuses the flow.
WriteAhead = Callable[[http.HTTPFlow], Awaitable[None]]
# The key the record's digests are made with (the AuditStore's), for a config.
DigestKey = Callable[[GatewayConfig], bytes]


class Gate:
    def __init__(
        self, write_ahead: WriteAhead, broker: CredentialBroker, digest_key: DigestKey
    ) -> None:
        self.write_ahead = write_ahead
        self.broker = broker
        self.digest_key = digest_key

    @fail_closed
    async def request(self, flow: http.HTTPFlow) -> None:
        st = state(flow)
        if flow.response is not None:
            return
        if not st.routed or not st.cleared or not st.authenticated:
            missing = "no upstream" if not st.routed else "no identity or decision"
            refuse(
                flow,
                502,
                INTERNAL_ERROR,
                f"internal error in the gateway: the request was not cleared ({missing}); "
                "it was not forwarded",
                kind="internal-error",
            )
            return
        upstream = st.route.upstream
        reverse = flow.client_conn.proxy_mode.type_name == "reverse"
        if upstream.sends_credentials and not goes_to(upstream, flow.request, reverse):
            refuse(
                flow,
                502,
                INTERNAL_ERROR,
                f"the request for upstream {upstream.name!r} is not addressed to the server "
                "the config names for it, so its credentials were not sent and it was not "
                "forwarded; give the upstream a `url` (or a `host`)",
                kind="internal-error",
            )
            return
        headers = list(upstream.inject_headers)
        if upstream.credentials is not None:
            exchanged = await self._delegate(flow, upstream, upstream.credentials)
            if exchanged is None:
                return
            if exchanged:
                headers = [(n, v) for n, v in headers if n.lower() != "authorization"]
        if headers and st.delegation is None:
            # the shared credential: the record says so, and which headers carried it
            st.upstream_credential = {
                **(st.upstream_credential or {"mode": "static"}),
                "headers": [name for name, _ in headers],
            }
        # Every decision is final here: the record of them is made before anything leaves,
        # and before the upstream's credentials are in the flow.
        await self.write_ahead(flow)
        if st.refused is not None:
            return
        if st.delegation is not None:
            headers.append(("Authorization", st.delegation.authorization))
        for name, value in headers:
            flow.request.headers[name] = value
        st.injected = tuple(name for name, _ in headers)

    async def _delegate(
        self, flow: http.HTTPFlow, upstream: Upstream, credentials: UpstreamCredentials
    ) -> bool | None:
        """The caller's own token for the upstream, in `st.delegation`: True; the static
        credential for a service identity the upstream accepts: False; refused: None."""
        st = state(flow)
        identity, subject = st.identity, st.subject
        provider = credentials.provider.name
        if subject is None:
            if credentials.service_identities == "static":
                st.upstream_credential = {"mode": "static", "caller": identity.method}
                return False
            refuse(
                flow,
                403,
                UNAUTHORIZED,
                f"forbidden: upstream {upstream.name!r} receives a token for the person "
                f"calling, and a caller authenticated by {identity.method} has no OIDC "
                "token to exchange; call with an OIDC token, or the operator may set "
                "`service_identities: static` for this upstream",
                kind="no-delegable-identity",
            )
            st.upstream_credential = exchange_error(
                credentials, {"kind": "no-subject-token", "caller": identity.method}
            )
            return None
        if subject.expires <= time.time():
            # Valid when it arrived; a held call may have waited past its expiry.
            self._unauthorized(flow, upstream, "token expired", "token expired")
            st.upstream_credential = exchange_error(credentials, {"kind": "subject-expired"})
            return None
        try:
            st.delegation = await self.broker.delegate(
                credentials,
                subject.token,
                subject.expires,
                identity.user,
                self.digest_key(st.route.config),
            )
        except ExchangeFailed as exc:
            st.upstream_credential = exchange_error(credentials, exc.evidence())
            self._exchange_failed(flow, upstream, provider, exc)
            return None
        st.upstream_credential = st.delegation.evidence
        return True

    def _exchange_failed(
        self, flow: http.HTTPFlow, upstream: Upstream, provider: str, exc: ExchangeFailed
    ) -> None:
        if isinstance(exc, IdpRefused):
            code = f" ({exc.idp_error})" if exc.idp_error else ""
            self._unauthorized(
                flow,
                upstream,
                f"the identity provider {provider!r} refused to exchange your token for "
                f"upstream {upstream.name!r}{code}; sign in again",
                "the identity provider refused to exchange the token",
            )
            return
        status = 503 if isinstance(exc, IdpUnavailable) else 502
        refuse(
            flow,
            status,
            INTERNAL_ERROR,
            f"upstream {upstream.name!r} needs a token for you from {provider!r}, which "
            f"could not be had: {exc.reason}; the request was not forwarded"
            + ("; try again shortly" if status == 503 else ""),
            kind=f"credential-{exc.kind}",
        )

    @staticmethod
    def _unauthorized(flow: http.HTTPFlow, upstream: Upstream, message: str, reason: str) -> None:
        metadata = front_url(flow) + WELL_KNOWN + (upstream.prefix or "")
        refuse(
            flow,
            401,
            UNAUTHORIZED,
            f"unauthorized: {message}",
            kind="unauthenticated",
            headers={"WWW-Authenticate": challenge(metadata, reason)},
        )
        state(flow).auth_error = reason

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        self._redact_injected(flow)
        st = state(flow)
        response = flow.response
        if st.delegation is None or response is None or response.status_code != 401:
            return
        # The upstream does not take the token it was given (revoked, or its audience
        # changed): forget it, and never replay the call on the caller's behalf.
        self.broker.evict(st.delegation.cache_key)
        st.upstream_credential = {**(st.upstream_credential or {}), "upstream_refused": True}
        name = st.route.upstream.name
        refuse(
            flow,
            502,
            INTERNAL_ERROR,
            f"upstream {name!r} refused the token the gateway obtained for you; it was "
            "discarded, and the request was not sent again (it may be sent again by you)",
            kind="credential-rejected",
        )

    def error(self, flow: http.HTTPFlow) -> None:
        self._redact_injected(flow)

    def _redact_injected(self, flow: http.HTTPFlow) -> None:
        for name in state(flow).injected:
            if name in flow.request.headers:
                flow.request.headers[name] = INJECTED_MARK


def exchange_error(credentials: UpstreamCredentials, error: dict[str, Any]) -> dict[str, Any]:
    """`extra.upstream_credential` of a call that got no token (nothing was forwarded)."""
    return {
        "mode": "exchange",
        "provider": credentials.provider.name,
        "aud": credentials.audience,
        "error": error,
    }


def goes_to(upstream: Upstream, request: http.Request, reverse: bool) -> bool:
    """Whether the request is addressed to the server the config names for `upstream`.

    An upstream with neither `url` nor `host` is the reverse-mode target, which the
    operator fixed; as a regular proxy, the client would name the server.
    """
    if upstream.url:
        target = urlsplit(upstream.url)
        port = target.port or (443 if target.scheme == "https" else 80)
        return (request.scheme, request.host.lower(), request.port) == (
            target.scheme,
            (target.hostname or "").lower(),
            port,
        )
    if upstream.host_name:
        return request.host.lower() == upstream.host_name and upstream.host_port in (
            None,
            request.port,
        )
    return reverse
