"""Holdgate: an MCP security gateway built as mitmproxy addons."""
