"""ResponseMasking: sensitive data in responses is masked before the client sees it."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from mitmproxy import http

from holdgate.addons.config_loader import ConfigLoader
from holdgate.addons.flowstate import MessageContext, objects, state
from holdgate.masking.masker import MaskOutcome, ProfilesInEffect, StreamMasker, mask_json

ENVELOPE = ("jsonrpc", "id", "method")
STREAM_MASKER = "stream_masker"  # key in objects(flow).extra: the event stream's look-behind


class ResponseMasking:
    def __init__(self, loader: ConfigLoader) -> None:
        self.loader = loader

    def on_message(self, flow: http.HTTPFlow, message: Any, context: MessageContext) -> Any:
        config = self.loader.current
        if config is None:
            raise RuntimeError("no config loaded")
        identity = objects(flow).extra.get("identity")
        groups = identity.groups if identity is not None else ()
        answers = context.answers
        tool = answers[1] if answers and answers[0] == "tools/call" else None
        effect = config.masking.profiles_for(state(flow)["upstream"], tool, groups)
        context.exemptions = effect.exemptions
        # Messages of one event stream also look behind, for values split between two.
        mask: Callable[[Any, ProfilesInEffect], MaskOutcome] = (
            _stream_masker(flow).mask if context.transport == "sse" else mask_json
        )
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
            totals = state(flow).setdefault("masked", {})
            for name, count in outcome.findings.items():
                totals[name] = totals.get(name, 0) + count
        if effect.exemptions:
            state(flow)["exempted"] = list(effect.exemptions)
        return masked


def _stream_masker(flow: http.HTTPFlow) -> StreamMasker:
    """The flow's event stream masker (one per stream: its look-behind is per stream)."""
    extra = objects(flow).extra
    masker = extra.get(STREAM_MASKER)
    if masker is None:
        masker = extra[STREAM_MASKER] = StreamMasker()
    return masker
