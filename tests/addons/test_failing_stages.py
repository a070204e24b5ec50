"""A request stage that raises, whichever it is, ends in a refusal and an audit row, and a
response stage that raises withholds the answer: the Pipeline guarantees it, not each
hook's own `fail_closed`. The cases are every such hook `default_addons()` implements, so
a stage added later is covered too."""

from __future__ import annotations

import dataclasses
import json

import pytest
from mitmproxy import hooks

from helpers.configs import ALICE, identity
from helpers.flows import (
    UPSTREAM_URL,
    answer,
    call,
    error_of,
    finish,
    gateway,
    json_response,
    mcp_flow,
    result,
    send,
    store_rows,
)
from holdgate.addons import default_addons
from holdgate.addons.authentication import Authentication
from holdgate.addons.pipeline import GUARDED, hook_names

pytestmark = pytest.mark.anyio

TOKEN = "failing-stage-upstream-token-8c2d"
CONFIG = (
    "version: 1\n"
    + identity("alice")
    + f"""upstreams:
  - name: crm
    url: {UPSTREAM_URL}
    inject:
      headers: {{Authorization: "Bearer {TOKEN}"}}
rules:
  - name: reads
    match: {{tool: "get_*"}}
    action: allow
"""
)
REQUEST_PHASE = ("requestheaders", "request")
RESPONSE_PHASE = ("responseheaders", "response")


def flow_hooks() -> set[str]:
    """Every event mitmproxy dispatches with an HTTP flow."""
    return {
        name
        for name in hook_names() - {"load"}
        if any("HTTPFlow" in str(f.type) for f in dataclasses.fields(hooks.all_hooks[name]))
    }


def implemented(names: tuple[str, ...]) -> list[tuple[type, str]]:
    return [
        (type(stage), name)
        for stage in default_addons()
        for name in names
        if callable(getattr(stage, name, None))
    ]


def test_every_flow_hook_of_the_gateway_is_guarded_by_the_pipeline() -> None:
    """Only `error` is left out: its flow already failed, there is nothing to forward."""
    used = {name for _, name in implemented(tuple(flow_hooks()))}
    assert set(REQUEST_PHASE) <= used
    assert used - {"error"} <= GUARDED
    kinds = {kind.__name__ for kind, _ in implemented(REQUEST_PHASE)}
    assert {"Router", "Authentication", "PolicyEnforcer", "ApprovalHolds", "Gate"} <= kinds


@pytest.mark.parametrize(
    ("kind", "hook"),
    implemented(REQUEST_PHASE),
    ids=lambda value: value.__name__ if isinstance(value, type) else value,
)
async def test_a_request_stage_that_raises_refuses_the_call_on_record(
    tmp_path, monkeypatch, kind: type, hook: str
) -> None:
    def broken(self: object, flow: object) -> None:
        raise RuntimeError("the stage broke")

    monkeypatch.setattr(kind, hook, broken)  # no `fail_closed` of its own any more
    where = f"{kind.__name__}.{hook}"
    with gateway(tmp_path, CONFIG) as tctx:
        flow = await send(tctx, mcp_flow(call("get_customer"), ALICE))
        status, code, message = error_of(flow)
        assert (status, code) == (502, -32603)
        assert f"internal error in the gateway ({where})" in message
        assert flow.request.headers.get("Authorization") != f"Bearer {TOKEN}"
        finish(tctx)
    rows = [r for r in store_rows(tmp_path, "select * from events") if r["flow_id"] == flow.id]
    assert rows, "no audit row for the refused call"
    extra = json.loads(rows[-1]["extra"])
    assert extra["refused"]["kind"] == "internal-error"
    assert extra["error"] == {"where": where, "type": "RuntimeError"}


@pytest.mark.parametrize(
    ("kind", "hook"),
    implemented(RESPONSE_PHASE),
    ids=lambda value: value.__name__ if isinstance(value, type) else value,
)
async def test_a_response_stage_that_raises_withholds_the_answer(
    tmp_path, monkeypatch, kind: type, hook: str
) -> None:
    def broken(self: object, flow: object) -> None:
        raise RuntimeError("the stage broke")

    monkeypatch.setattr(kind, hook, broken)
    where = f"{kind.__name__}.{hook}"
    with gateway(tmp_path, CONFIG) as tctx:
        flow = await send(tctx, mcp_flow(call("get_customer"), ALICE))
        assert flow.response is None  # cleared: it left
        await answer(tctx, flow, json_response(result(1, {"secret": "upstream-answer-5f1e"})))
        status, code, message = error_of(flow)
        assert (status, code) == (502, -32603)
        assert f"internal error in the gateway ({where}); the response was withheld" in message
        assert "upstream-answer-5f1e" not in flow.response.text


async def test_a_flow_authentication_never_saw_is_refused_by_the_next_stage_on_record(
    tmp_path, monkeypatch
) -> None:
    """The stages after Authentication read the caller through one accessor: a flow it
    skipped is refused there, saying so, and never forwarded with no identity."""

    def skipped(self: object, flow: object) -> None:
        return None

    monkeypatch.setattr(Authentication, "requestheaders", skipped)
    with gateway(tmp_path, CONFIG) as tctx:
        flow = await send(tctx, mcp_flow(call("get_customer"), ALICE))
        status, code, message = error_of(flow)
        assert (status, code) == (502, -32603)
        assert "internal error in the gateway (PolicyEnforcer.request)" in message
        assert flow.request.headers.get("Authorization") != f"Bearer {TOKEN}"
        finish(tctx)
    rows = [r for r in store_rows(tmp_path, "select * from events") if r["flow_id"] == flow.id]
    assert rows, "no audit row for the refused call"
    extra = json.loads(rows[-1]["extra"])
    assert extra["error"] == {"where": "PolicyEnforcer.request", "type": "StageSkipped"}
