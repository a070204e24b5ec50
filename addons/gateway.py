"""Holdgate entry point: `mitmdump -s addons/gateway.py`, from any folder.

The addons themselves live in the `holdgate.addons` package (`gateway_addons()`: the
addons in the order they run, behind one `Pipeline`); this script only finds the package
(installed, or beside this file) and makes sure mitmproxy never runs without it.

No way of starting mitmproxy with this script may leave a plain proxy:
- if the bundle cannot be imported, or a `holdgate_*` option is unknown or given twice
  (mitmproxy would drop the script silently), `Refuser` is installed instead: it logs
  the reason (mitmproxy stops at an error logged during startup), refuses every request
  and stops the proxy;
- `Sentinel` is added to mitmproxy's own addon chain, outside this script, so it stays
  even if the script is later dropped (a failed reload): it refuses every request the
  gateway did not see.
"""

from __future__ import annotations

import logging
import os
import sys

from mitmproxy import ctx, http, tcp, udp

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

STATE_KEY = "holdgate"  # holdgate.STATE_KEY, repeated: this file must work without it
NOT_RUNNING = (
    b'{"jsonrpc":"2.0","id":null,"error":{"code":-32603,'
    b'"message":"the gateway is not running its checks"}}'
)


def _refuse(flow: http.HTTPFlow) -> None:
    flow.response = http.Response.make(503, NOT_RUNNING, {"Content-Type": "application/json"})


class Refuser:
    """Stands in for the gateway when it cannot run: refuses all traffic and stops."""

    def __init__(self, reason: str) -> None:
        self.reason = reason

    def load(self, loader: object) -> None:
        logging.getLogger("holdgate").error("holdgate cannot start: %s", self.reason)

    def running(self) -> None:
        ctx.master.shutdown()

    def request(self, flow: http.HTTPFlow) -> None:
        _refuse(flow)


class Sentinel:
    """Last in mitmproxy's chain: a request the gateway's Router never saw is refused.

    MCP travels over HTTP only; raw TCP/UDP flows (ignored hosts) are never let through.
    """

    name = "holdgate_sentinel"

    def request(self, flow: http.HTTPFlow) -> None:
        if flow.response is None and STATE_KEY not in flow.metadata:
            logging.getLogger("holdgate").error(
                "holdgate: a request reached the end of the chain unchecked; refused"
            )
            _refuse(flow)

    def tcp_start(self, flow: tcp.TCPFlow) -> None:
        flow.kill()

    def udp_start(self, flow: udp.UDPFlow) -> None:
        flow.kill()


if ctx.master.addons.get(Sentinel.name) is None:
    ctx.master.addons.add(Sentinel())

try:
    from holdgate.addons import gateway_addons
    from holdgate.config.options import option_problems
except ImportError as import_error:  # exercised by a subprocess test
    addons: list[object] = [
        Refuser(
            f"{type(import_error).__name__}: {import_error}. Install it with `make run` "
            "(or `pip install -e .`) and use the mitmdump from that environment."
        )
    ]
else:
    problems = option_problems(ctx.options.deferred)
    addons = [Refuser("; ".join(problems))] if problems else gateway_addons()
