"""Holdgate entry point: `mitmdump -s addons/gateway.py`.

The addons run in this order for every flow (see ../README.md):
ConfigLoader -> Router -> Identity -> Policy -> Approval -> Gate -> Recorder (request
side: the recorder refuses when the audit store cannot be written); Streams runs each
response message through the Policy, ToolPinning, Masking and Recorder stages.

If the bundle cannot even be imported, mitmproxy would go on as a plain proxy and
forward everything unchecked; so a failed import installs `Refuser` instead, which
refuses every request and stops the proxy.
"""

from __future__ import annotations

import logging
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

try:
    from approval import Approval
    from configloader import ConfigLoader
    from gate import Gate
    from identity import Identity
    from masking import Masking
    from pinning import ToolPinning
    from policy import Policy
    from recorder import Recorder
    from router import Router
    from streams import Streams
except ImportError as import_error:  # pragma: no cover - exercised by a subprocess test
    from mitmproxy import ctx, http

    class Refuser:
        """Stands in for the gateway when it cannot load: refuses all traffic and stops."""

        def __init__(self, reason: str) -> None:
            self.reason = reason

        def running(self) -> None:
            logging.getLogger("holdgate").error(
                "holdgate cannot start: %s. Install it with `make run` (or `pip install -e .`) "
                "and use the mitmdump from that environment.",
                self.reason,
            )
            ctx.master.shutdown()

        def request(self, flow: http.HTTPFlow) -> None:
            flow.response = http.Response.make(
                503,
                b'{"jsonrpc":"2.0","id":null,"error":{"code":-32603,'
                b'"message":"the gateway is not running its checks"}}',
                {"Content-Type": "application/json"},
            )

    addons = [Refuser(f"{type(import_error).__name__}: {import_error}")]
else:
    loader = ConfigLoader()
    recorder = Recorder(loader)
    pins = ToolPinning(loader, recorder)
    policy = Policy(loader, pins)
    addons = [
        loader,
        Router(loader),
        Identity(loader),
        policy,
        Approval(loader, policy, recorder),
        Gate(),
        Streams(loader, stages=[policy, pins, Masking(loader), recorder]),
        recorder,
        pins,  # after the recorder, which opens (or creates) the store the pins are read from
    ]
