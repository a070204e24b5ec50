"""The PolicyEnforcer addon in-process (mitmproxy's test helpers): comments, markers, explain."""

import json
import logging

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mitmproxy.test import taddons, tflow

from holdgate.addons.config_loader import ConfigLoader
from holdgate.addons.enforcement import PolicyEnforcer
from holdgate.addons.flowstate import objects, state
from holdgate.identity.identities import Identity

CONFIG = """version: 1
upstreams: [{name: crm}]
rules:
  - name: no shell
    match: {tool: "exec_*"}
    action: deny
  - name: support reads
    match: {groups: [support], tool: "get_*"}
    action: allow
"""


@pytest.fixture
def addon(tmp_path):
    config = tmp_path / "p.yaml"
    config.write_text(CONFIG)
    loader = ConfigLoader()
    policy = PolicyEnforcer(loader)
    with taddons.context(loader, policy) as tctx:
        tctx.configure(loader, holdgate_config=str(config))
        yield policy


def decided_flow(policy, tool):
    flow = tflow.tflow()
    flow.request.method = "POST"
    flow.request.content = json.dumps(
        {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": tool}}
    ).encode()
    state(flow)["upstream"] = "crm"
    objects(flow).extra["identity"] = Identity("alice", ("support",), "api_key")
    policy.request(flow)
    return flow


def test_decided_flows_carry_comment_and_marker(addon):
    allowed = decided_flow(addon, "get_customer")
    denied = decided_flow(addon, "exec_shell")
    assert allowed.comment == "holdgate: tools/call get_customer: allow by 'support reads'"
    assert allowed.marked == ":white_check_mark:" and allowed.response is None
    assert denied.marked == ":no_entry:"
    assert json.loads(denied.response.content)["error"]["code"] == -32003


def test_explain_command_logs_every_rule(addon, caplog):
    flow = decided_flow(addon, "get_customer")
    with caplog.at_level(logging.WARNING, logger="holdgate"):
        addon.explain([flow])
    text = caplog.text
    assert "skip  rule 'no shell'" in text
    assert "MATCH rule 'support reads'" in text
    assert "decision: allow by 'support reads'" in text


def decided_batch(policy, tools):
    flow = tflow.tflow()
    flow.request.method = "POST"
    flow.request.content = json.dumps(
        [
            {"jsonrpc": "2.0", "id": i, "method": "tools/call", "params": {"name": tool}}
            for i, tool in enumerate(tools)
        ]
    ).encode()
    state(flow)["upstream"] = "crm"
    objects(flow).extra["identity"] = Identity("alice", ("support",), "api_key")
    policy.request(flow)
    return flow


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture], max_examples=60)
@given(
    st.lists(st.sampled_from(["exec_shell", "get_customer", "other", "Get_x"]), min_size=1),
    st.randoms(use_true_random=False),
)
def test_a_batch_is_decided_as_its_messages_alone_in_any_order(addon, tools, rng):
    alone = [state(decided_flow(addon, tool))["messages"][0]["decision"] for tool in tools]
    batch = state(decided_batch(addon, tools))["messages"]
    assert [m["decision"] for m in batch] == alone
    order = list(range(len(tools)))
    rng.shuffle(order)
    shuffled = state(decided_batch(addon, [tools[i] for i in order]))["messages"]
    assert [shuffled[order.index(i)]["decision"] for i in range(len(tools))] == alone
