"""ResponseMasking: sensitive data in responses is masked before the client sees it."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from mitmproxy import http

from holdgate.addons.flowstate import FlowState, MessageContext, answered_tool, state
from holdgate.masking.masker import MaskOutcome, ProfilesInEffect, StreamMasker, mask_json
from holdgate.protocol.mrtr import request_state, restore_request_state, without_request_state

ENVELOPE = ("jsonrpc", "id", "method")


class ResponseMasking:
    """A response stage: masks each message with the profiles of the flow's config."""

    def on_message(self, flow: http.HTTPFlow, message: Any, context: MessageContext) -> Any:
        st = state(flow)
        route = st.route
        groups = st.identity.groups if st.authenticated else ()
        effect = route.config.masking.profiles_for(
            route.upstream.name, answered_tool(context), groups
        )
        context.exemptions = effect.exemptions
        # Messages of one event stream also look behind, for values split between two.
        mask: Callable[[Any, ProfilesInEffect], MaskOutcome] = (
            _stream_masker(st).mask if context.transport == "sse" else mask_json
        )
        opaque = request_state(message)
        if opaque is not None:  # returned to the server as is by the client: never masked
            message = without_request_state(message)
        if isinstance(message, dict):
            # The envelope (ids, method names) stays byte-identical; everything else is data.
            payload = {k: v for k, v in message.items() if k not in ENVELOPE}
            outcome = mask(payload, effect)
            masked: Any = {**message, **outcome.value} if outcome.changed else message
        else:
            outcome = mask(message, effect)
            masked = outcome.value
        if outcome.findings:
            context.findings = outcome.findings
            st.count_masked(outcome.findings)
        if effect.exemptions:
            st.exempted = effect.exemptions
        return masked if opaque is None else restore_request_state(masked, opaque)


def _stream_masker(st: FlowState) -> StreamMasker:
    """The flow's event stream masker (one per stream: its look-behind is per stream)."""
    if st.stream_masker is None:
        st.stream_masker = StreamMasker()
    return st.stream_masker
