"""Holdgate, an MCP security gateway: the library (pure, typed) and, in `holdgate.addons`,
the mitmproxy glue over it."""

STATE_KEY = "holdgate"
"""The `flow.metadata` key under which the gateway keeps what it decided about a flow."""

from holdgate import compiled  # noqa: E402  (after the constants; it imports nothing of ours)

compiled.install()
