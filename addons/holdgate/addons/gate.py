"""Gate: the last request hook. Nothing reaches an upstream unless every stage cleared it
and its decision is on record: its last step awaits the write-ahead (the Recorder's), which
refuses the request when the record cannot be kept.

It also swaps the caller's credentials for the upstream's at the last moment, and
masks the injected values in the flow once the request has left, so neither a held
flow nor a saved one shows them.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from urllib.parse import urlsplit

from mitmproxy import http

from holdgate.addons.flowstate import fail_closed, refuse, state
from holdgate.config.gateway_config import Upstream
from holdgate.protocol.jsonrpc import INTERNAL_ERROR

INJECTED_MARK = "[injected by holdgate]"

# Records a cleared flow's decision before it leaves, or refuses the flow.
WriteAhead = Callable[[http.HTTPFlow], Awaitable[None]]


class Gate:
    def __init__(self, write_ahead: WriteAhead) -> None:
        self.write_ahead = write_ahead

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
        if upstream.inject_headers and not goes_to(upstream, flow.request, reverse):
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
        # Every decision is final here: the record of them is made before anything leaves,
        # and before the upstream's credentials are in the flow.
        await self.write_ahead(flow)
        if st.refused is not None:
            return
        for name, value in upstream.inject_headers:
            flow.request.headers[name] = value
        st.injected = tuple(name for name, _ in upstream.inject_headers)

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        self._redact_injected(flow)

    def error(self, flow: http.HTTPFlow) -> None:
        self._redact_injected(flow)

    def _redact_injected(self, flow: http.HTTPFlow) -> None:
        for name in state(flow).injected:
            if name in flow.request.headers:
                flow.request.headers[name] = INJECTED_MARK


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
