"""Helpers shared by the tests; no test module imports another.

- `processes`: free ports, the demo MCP server and a real `mitmdump -s addons/gateway.py`
  as subprocesses (started on loopback, stopped by pid), the `holdgate` CLI;
- `clients`: the official MCP SDK client and raw HTTP for odd or hostile bodies;
- `upstreams`: one configurable fake upstream on loopback (answers given per test as a
  handler or a table), and the hostile upstream of the attack tests;
- `configs`: the demo API keys (headers and the config's `api_keys` block), written once;
- `leaks`: `assert_nothing_leaked`, a search of everything a gateway wrote;
- `flows`: in-process MCP flows for the addon tests (`mitmproxy.test.tflow`).
"""
