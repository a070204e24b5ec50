"""Authentication in process: who is calling, decided on the headers; credentials stop here."""

import pytest
from mitmproxy import http
from mitmproxy.test import tutils

from helpers.configs import ALICE, BOB, identity
from helpers.flows import (
    UPSTREAM_URL,
    answer,
    call,
    error_of,
    gateway,
    json_response,
    mcp_flow,
    response_json,
    result,
    send,
)
from holdgate.addons.authentication import Authentication, strip_credentials
from holdgate.addons.flowstate import state
from holdgate.addons.recorder import Recorder
from holdgate.addons.router import Router
from holdgate.config.gateway_config import Upstream

pytestmark = pytest.mark.anyio

CONFIG = (
    "version: 1\n"
    + identity("alice", "bob")
    + """  trusted_header:
    from: [10.9.9.9/32]
    user: X-Forwarded-User
    groups: X-Forwarded-Groups
upstreams:
  - name: crm
    url: """
    + UPSTREAM_URL
    + """
rules: []
"""
)
METADATA = "http://127.0.0.1:8080/.well-known/oauth-protected-resource"


@pytest.fixture
def tctx(tmp_path):
    with gateway(tmp_path, CONFIG, Router, Authentication, Recorder) as tctx:  # its store
        yield tctx


async def test_a_known_key_passes_and_the_upstream_never_sees_it(tctx):
    flow = mcp_flow(call("x"), {**ALICE, "Cookie": "sid=client-cookie"})
    await send(tctx, flow)
    assert flow.response is None
    assert "x-api-key" not in flow.request.headers
    assert "cookie" not in flow.request.headers  # pass_cookies is off


@pytest.mark.parametrize(
    ("headers", "reason"),
    [
        ({}, "no credentials"),
        ({"X-API-Key": "guess"}, "unknown API key"),
        ({**ALICE, "Authorization": "Bearer other"}, "multiple credentials"),
        (
            {"Authorization": "Basic YWxpY2U6eA=="},
            "the Authorization header must be `Bearer <token>`",
        ),
    ],
)
async def test_an_unknown_caller_is_401_with_the_fixed_challenge(tctx, headers, reason):
    flow = await send(tctx, mcp_flow(call("x"), headers))
    status, code, message = error_of(flow)
    assert (status, code) == (401, -32001)
    assert message.startswith("unauthorized: " + reason)
    assert flow.response.headers["WWW-Authenticate"] == (
        f'Bearer resource_metadata="{METADATA}", error="invalid_token", '
        f'error_description="{reason}"'
    )
    assert "guess" not in flow.response.headers["WWW-Authenticate"]
    assert "x-api-key" not in flow.request.headers  # not even a refused key is kept


async def test_a_refused_key_never_reaches_the_header_even_when_hostile(tctx):
    flow = await send(tctx, mcp_flow(call("x"), {"X-API-Key": "x\u2028Set-Cookie: a=b"}))
    assert error_of(flow)[0] == 401
    challenge = flow.response.headers["WWW-Authenticate"]
    assert "Set-Cookie" not in challenge and 'error_description="unknown API key"' in challenge
    assert "set-cookie" not in flow.response.headers


async def test_trusted_headers_from_an_untrusted_address_are_stripped(tctx):
    spoof = {"X-Forwarded-User": "root", "X-Forwarded-Groups": "admin"}
    alone = await send(tctx, mcp_flow(call("x"), spoof))  # from 127.0.0.1, not 10.9.9.9
    assert error_of(alone)[0] == 401
    with_key = await send(tctx, mcp_flow(call("x"), {**spoof, **ALICE}))
    assert with_key.response is None
    assert "x-forwarded-user" not in with_key.request.headers
    assert "x-forwarded-groups" not in with_key.request.headers


async def test_a_session_belongs_to_the_identity_that_opened_it(tctx):
    opened = await send(tctx, mcp_flow(request_initialize(), ALICE))
    assert opened.response is None
    await answer(tctx, opened, json_response(result(1, {}), headers={"Mcp-Session-Id": "s-1"}))
    foreign = await send(tctx, mcp_flow(call("x"), {**BOB, "Mcp-Session-Id": "s-1"}))
    status, _, message = error_of(foreign)
    assert (status, message) == (404, "session not found; initialize a new one")
    own = await send(tctx, mcp_flow(call("x"), {**ALICE, "Mcp-Session-Id": "s-1"}))
    assert own.response is None


async def test_a_grouped_session_id_cannot_be_named_by_a_client_or_an_upstream(tctx):
    # grouped ids (sessionless traffic) are never sent out: naming one forges a session
    forged = await send(
        tctx, mcp_flow(call("x"), {**BOB, "Mcp-Session-Id": "hg-0123456789abcdef0123"})
    )
    assert error_of(forged)[:1] == (404,)
    assert state(forged).refused.kind == "foreign-session"
    opened = await send(tctx, mcp_flow(request_initialize(), ALICE))
    await answer(tctx, opened, json_response(result(1, {}), headers={"Mcp-Session-Id": "hg-1"}))
    assert error_of(opened)[0] == 502  # the upstream's answer is withheld, never passed on


async def test_protected_resource_metadata_is_served_by_the_gateway(tctx):
    flow = await send(tctx, mcp_flow(method="GET", path="/.well-known/oauth-protected-resource"))
    assert flow.response.status_code == 200
    document = response_json(flow)
    assert document["resource"] == "http://127.0.0.1:8080"
    assert document["authorization_servers"] == []  # API keys only: no OAuth server


async def test_without_an_identity_section_everyone_is_anonymous(tmp_path):
    open_config = f"version: 1\nupstreams: [{{name: crm, url: {UPSTREAM_URL}}}]\nrules: []\n"
    with gateway(tmp_path, open_config, Router, Authentication) as tctx:
        flow = await send(tctx, mcp_flow(call("x"), {"X-API-Key": "anything"}))
    assert flow.response is None
    assert "x-api-key" not in flow.request.headers  # still never forwarded


def request_initialize() -> dict:
    params = {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t"}}
    return {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": params}


@pytest.mark.parametrize("pass_cookies", [False, True])
def test_every_credential_header_is_stripped_whatever_its_case(pass_cookies):
    request = tutils.treq(
        headers=http.Headers(
            [
                (b"AUTHORIZATION", b"Bearer a"),
                (b"x-Api-Key", b"k1"),
                (b"X-API-KEY", b"k2"),
                (b"Proxy-Authorization", b"Basic p"),
                (b"Cookie", b"sid=1"),
                (b"Accept", b"application/json"),
            ]
        )
    )
    strip_credentials(request, Upstream(name="u", pass_cookies=pass_cookies))
    names = [name.lower() for name, _ in request.headers.fields]
    assert names == ([b"cookie"] if pass_cookies else []) + [b"accept"]
