"""A flow's state for its flow file, without re-serializing its connections every time.

`HTTPFlow.get_state()` spends most of its time on the two connections (mitmproxy's generic
dataclass serialization walks ~30 typed fields each: ~90 µs of a ~140 µs snapshot), yet a
keep-alive connection carries many flows and rarely changes between them. `Snapshots`
keeps each connection's last state with the field values it was made from and reuses it
while every field is still equal; the rest of the flow is mitmproxy's own `get_state()`.
"""

from __future__ import annotations

import dataclasses
from collections import OrderedDict
from functools import cache
from typing import Any

from mitmproxy import connection, http

State = dict[str, Any]


@cache
def serialized_fields(kind: type[connection.Connection]) -> tuple[str, ...]:
    """The fields mitmproxy serializes for this connection class (its own rule)."""
    return tuple(
        f.name for f in dataclasses.fields(kind) if f.metadata.get("serialize", True) is not False
    )


class _Stated:
    """Stands in for a connection while the flow is serialized: answers with a state."""

    def __init__(self, state: State) -> None:
        self.state = state

    def get_state(self) -> State:
        return self.state


class Snapshots:
    """Flow states for recording, with connection states reused while unchanged."""

    def __init__(self, bound: int = 4096) -> None:
        self.bound = bound
        self._states: OrderedDict[str, tuple[tuple[Any, ...], State]] = OrderedDict()

    def connection_state(self, conn: connection.Connection) -> State:
        values = tuple(getattr(conn, name) for name in serialized_fields(type(conn)))
        known = self._states.get(conn.id)
        if known is not None and known[0] == values:
            self._states.move_to_end(conn.id)
            return known[1]
        state: State = conn.get_state()
        self._states[conn.id] = (values, state)
        self._states.move_to_end(conn.id)
        if len(self._states) > self.bound:
            self._states.popitem(last=False)
        return state

    def flow_state(self, flow: http.HTTPFlow) -> State:
        """What `flow.get_state()` returns (a test holds them equal), cheaper."""
        client, server = flow.client_conn, flow.server_conn
        stand_ins = _Stated(self.connection_state(client)), _Stated(self.connection_state(server))
        flow.client_conn, flow.server_conn = stand_ins  # type: ignore[assignment]
        try:
            snapshot: State = flow.get_state()
        finally:
            flow.client_conn, flow.server_conn = client, server
        return snapshot
