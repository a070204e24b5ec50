"""ShadowPolicy in process, behind the real Router, Authentication and PolicyEnforcer: what
the candidate decides is never what the client gets; it shows on the flow (mitmweb's
comment and marker) and is counted, and a candidate that raises or is slow changes
nothing but its counts."""

import dataclasses
import json
import logging
from typing import Any

import pytest
from mitmproxy import exceptions

from helpers.configs import ALICE, identity
from helpers.flows import (
    UPSTREAM_URL,
    call,
    find,
    finish,
    gateway,
    mcp_flow,
    response_json,
    send,
    store_rows,
    write_config,
)
from holdgate.addons.authentication import Authentication
from holdgate.addons.enforcement import PolicyEnforcer
from holdgate.addons.recorder import Recorder
from holdgate.addons.replicas import Replicas
from holdgate.addons.router import Router
from holdgate.addons.shadow import ShadowPolicy
from holdgate.policy.rules import Policy

pytestmark = pytest.mark.anyio

SECRET_ARGUMENT = "s3cr3t-argument-value"
RULES = """rules:
  - name: no shell
    match: {tool: "exec_*"}
    action: deny
  - name: support reads
    match: {groups: [support], tool: "get_*"}
    action: allow
"""
CONFIG = (
    "version: 1\n" + identity("alice") + f"upstreams:\n  - name: crm\n    url: {UPSTREAM_URL}\n"
)
CANDIDATE = f"""version: 1
upstreams:
  - name: crm
    url: {UPSTREAM_URL}
rules:
  - name: no customer reads
    match: {{tool: get_customer}}
    action: deny
  - name: support reads
    match: {{groups: [support], tool: "get_*"}}
    action: allow
"""


class RaisingPolicy:
    """A candidate whose every decision fails, quoting the call's argument as it does: a
    stand-in for the candidate's Policy (which, compiled with mypyc, cannot be subclassed)."""

    def __init__(self, policy: Policy) -> None:
        self.policy = policy

    def __getattr__(self, name: str) -> Any:
        return getattr(self.policy, name)

    def evaluate(self, caller, upstream, message):  # type: ignore[no-untyped-def]
        raise ValueError(f"cannot decide {message.arguments}")


@pytest.fixture
def tctx(tmp_path):
    candidate = write_config(tmp_path, CANDIDATE, "candidate.yaml")
    kinds = (Replicas, Router, Authentication, PolicyEnforcer, ShadowPolicy, Recorder)
    with gateway(tmp_path, CONFIG + RULES, *kinds, holdgate_shadow=candidate) as tctx:
        yield tctx


async def test_a_difference_is_shown_on_the_flow_and_never_enforced(tctx):
    flow = await send(tctx, mcp_flow(call("get_customer", {"id": 1}), ALICE))
    assert flow.response is None  # allowed by the policy in force: it leaves
    assert flow.comment == (
        "holdgate: alice tools/call get_customer: allow (rule 'support reads'); "
        "shadow tighten: get_customer would be deny by 'no customer reads'"
    )
    assert flow.marked == ":crystal_ball:"
    same = await send(tctx, mcp_flow(call("get_orders", {"id": 1}), ALICE))
    assert "shadow" not in same.comment and same.marked == ":white_check_mark:"


async def test_a_candidate_that_raises_changes_nothing_and_is_counted(tctx, tmp_path, caplog):
    shadow = find(tctx, ShadowPolicy)
    assert shadow.candidate is not None
    failing = RaisingPolicy(shadow.candidate.policy)
    shadow.candidate = dataclasses.replace(shadow.candidate, policy=failing)
    with caplog.at_level(logging.DEBUG, logger="holdgate"):
        allowed = await send(tctx, mcp_flow(call("get_customer", {"q": SECRET_ARGUMENT}), ALICE))
        denied = await send(tctx, mcp_flow(call("exec_shell", {"q": SECRET_ARGUMENT}), ALICE))
        finish(tctx)  # the summary row is written at shutdown
    assert allowed.response is None and allowed.marked == ":white_check_mark:"
    assert response_json(denied)["error"]["code"] == -32003
    assert "shadow" not in allowed.comment + denied.comment
    assert SECRET_ARGUMENT not in caplog.text
    assert "the shadow policy failed on 2 call(s)" in caplog.text and "ValueError" in caplog.text
    (summary,) = store_rows(
        tmp_path, "SELECT * FROM config_versions WHERE role = 'candidate' AND outcome = 'summary'"
    )
    counts = json.loads(summary["detail"])
    assert counts["errors"] == 2 and counts["error_types"] == {"ValueError": 2}
    assert counts["evaluated"] == 0 and SECRET_ARGUMENT not in summary["detail"]
    (refused,) = store_rows(tmp_path, "SELECT * FROM events WHERE target = 'exec_shell'")
    assert refused["decision"] == "deny" and "shadow" not in json.loads(refused["extra"])


async def test_messages_beyond_the_budget_are_skipped_and_counted(tctx, tmp_path):
    shadow = find(tctx, ShadowPolicy)
    shadow.budget_seconds = 0.0  # spent before the first message: every one is skipped
    batch = [call("get_customer", {"id": 1}, msg_id=1), call("get_customer", msg_id=2)]
    flow = await send(tctx, mcp_flow(batch, ALICE))
    assert flow.response is None and "shadow" not in flow.comment
    finish(tctx)
    (summary,) = store_rows(
        tmp_path, "SELECT detail FROM config_versions WHERE outcome = 'summary'"
    )
    assert json.loads(summary["detail"])["skipped"] == 2


async def test_a_broken_candidate_set_while_running_is_refused_and_the_last_one_kept(
    tctx, tmp_path
):
    shadow = find(tctx, ShadowPolicy)
    kept = shadow.candidate
    broken = write_config(tmp_path, CANDIDATE.replace("action: deny", "action: nope"), "b.yaml")
    with pytest.raises(exceptions.OptionsError, match=r"holdgate_shadow: .*b\.yaml:\d+"):
        tctx.options.update(holdgate_shadow=broken)
    assert shadow.candidate is not None and shadow.candidate.digest == kept.digest
    flow = await send(tctx, mcp_flow(call("get_customer", {"id": 1}), ALICE))
    assert "shadow tighten" in flow.comment
    tctx.options.update(holdgate_shadow="")  # off: nothing decided beside
    flow = await send(tctx, mcp_flow(call("get_customer", {"id": 1}), ALICE))
    assert "shadow" not in flow.comment and shadow.candidate is None
