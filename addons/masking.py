"""Masking: sensitive data in responses is masked before the client (or the record) sees it."""

from __future__ import annotations

from typing import Any

from mitmproxy import http

from configloader import ConfigLoader
from holdgate.masking import mask_json
from holdgate.proxy import MessageContext, objects, state

ENVELOPE = ("jsonrpc", "id", "method")


class Masking:
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
        if isinstance(message, dict):
            # The envelope (ids, method names) stays byte-identical; everything else is data.
            payload = {k: v for k, v in message.items() if k not in ENVELOPE}
            outcome = mask_json(payload, effect)
            masked: Any = {**message, **outcome.value} if outcome.changed else message
        else:
            outcome = mask_json(message, effect)
            masked = outcome.value
        if outcome.findings:
            context.findings = outcome.findings
            totals = state(flow).setdefault("masked", {})
            for name, count in outcome.findings.items():
                totals[name] = totals.get(name, 0) + count
        if effect.exemptions:
            state(flow)["exempted"] = list(effect.exemptions)
        return masked
