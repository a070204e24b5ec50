"""Per-user upstream credentials through a real mitmdump: callers' OIDC tokens exchanged at a
strict RFC 8693 endpoint on loopback (tests/helpers/token_exchange.py), the demo server's
`whoami` reporting whom the token it received names."""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import anyio
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from helpers.approvals import wait_for_pending
from helpers.clients import META, MODERN, raw_post
from helpers.configs import DANA, api_keys
from helpers.leaks import assert_nothing_leaked
from helpers.processes import free_port, holdgate_cli
from helpers.token_exchange import CLIENT_SECRET, ISSUER, IdentityProvider
from helpers.upstreams import Reply, Request, result_for

pytestmark = pytest.mark.anyio

CONFIG = """
version: 1
identity:
  oidc:
    - issuer: {issuer}
      audience: holdgate
      jwks_uri: {jwks}
      algorithms: [RS256]
      groups_claim: groups
{keys}credential_providers:
  - name: acme-sso
    token_url: {token_url}
    client_id: holdgate
{client_auth}    profile: {profile}
    timeout: 3s  # six times the slow IdP of the single-flight test: a loaded machine is slower
upstreams:
  - name: demo
    url: {url}
{inject}    credentials:
      exchange: acme-sso
{target}      service_identities: {service_identities}
rules:
  - name: no shell
    match: {{tool: exec_shell}}
    action: deny
  - name: SQL needs a DBA
    match: {{tool: run_sql}}
    action: approve
    approvers: [dba]
    timeout: 30s
  - name: everyone else
    match: {{groups: [staff, dba, support]}}
    action: allow
"""
SECRET_AUTH = '    client_secret: "${env:HOLDGATE_TX_SECRET}"\n'
RFC8693_TARGET = "      audience: hr-mcp\n      scopes: [hr.read]\n"
STATIC_TOKEN = "static-upstream-9b3e1d77c2"
STATIC_INJECT = (
    '    inject:\n      headers:\n        Authorization: "Bearer ${env:STATIC_UPSTREAM_TOKEN}"\n'
)

# who decides is not what these tests are about: the store is written directly
BREAK_GLASS = ("--break-glass", "--as", "dana", "--reason", "token exchange test")


@pytest.fixture
def idp(fake_upstream) -> IdentityProvider:
    provider = IdentityProvider()
    provider.url = fake_upstream(provider).url
    return provider


def start(
    gateway_factory,
    idp: IdentityProvider,
    upstream_url: str,
    *,
    profile: str = "rfc8693",
    client_auth: str = SECRET_AUTH,
    target: str = RFC8693_TARGET,
    service_identities: str = "deny",
    inject: str = "",
    token_url: str | None = None,
):
    text = CONFIG.format(
        issuer=ISSUER,
        jwks=idp.jwks_url,
        keys=api_keys("alice", "dana"),
        token_url=token_url or idp.token_url,
        client_auth=client_auth,
        profile=profile,
        url=upstream_url,
        inject=inject,
        target=target,
        service_identities=service_identities,
    )
    env = {"HOLDGATE_TX_SECRET": CLIENT_SECRET, "STATIC_UPSTREAM_TOKEN": STATIC_TOKEN}
    return gateway_factory(text, upstream_url, env=env)


def call(gw, tool: str, headers: dict[str, str], arguments: dict[str, Any] | None = None):
    body = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "tools/call",
        "params": {"name": tool, "arguments": arguments or {}, "_meta": META},
    }
    return raw_post(
        gw.url + "/mcp", body, {**MODERN, "Mcp-Method": "tools/call", "Mcp-Name": tool, **headers}
    )


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def whoami(gw, token: str) -> dict[str, Any]:
    response = call(gw, "whoami", bearer(token))
    assert response.status == 200, response.body
    result = response.json()["result"]
    return result.get("structuredContent") or json.loads(result["content"][0]["text"])


def credentials_of(db: Path, tool: str | None = None) -> list[dict[str, Any]]:
    """`extra.upstream_credential` of each request row (of `tool`), in order."""
    with sqlite3.connect(db) as conn:
        rows = conn.execute(
            "SELECT target, extra FROM events WHERE direction = 'request' ORDER BY seq"
        ).fetchall()
    found = []
    for target, extra in rows:
        credential = json.loads(extra or "{}").get("upstream_credential")
        if credential is not None and (tool is None or target == tool):
            found.append(credential)
    return found


def wait_for_rows(db: Path, count: int, tool: str | None = None) -> list[dict[str, Any]]:
    deadline = time.monotonic() + 15
    while True:
        found = credentials_of(db, tool) if db.exists() else []
        if len(found) >= count or time.monotonic() > deadline:
            return found
        time.sleep(0.1)


def test_alice_and_bob_reach_the_upstream_as_themselves(demo, gateway_factory, idp):
    gw = start(gateway_factory, idp, demo.url)
    alice, bob = idp.user_token("alice"), idp.user_token("bob")
    assert whoami(gw, alice) == {"sub": "alice", "aud": "hr-mcp", "bearer": True}
    assert whoami(gw, bob) == {"sub": "bob", "aud": "hr-mcp", "bearer": True}
    assert idp.requests == 2
    assert [f["audience"] for f in idp.forms] == ["hr-mcp", "hr-mcp"]
    assert [f["scope"] for f in idp.forms] == ["hr.read", "hr.read"]
    sent = [r["headers"].get("authorization") for r in demo.requests()]
    assert sent == [f"Bearer {token}" for token in idp.issued]
    rows = wait_for_rows(gw.db, 2, "whoami")
    assert [(r["mode"], r["provider"], r["sub"], r["aud"], r["cache"]) for r in rows] == [
        ("exchange", "acme-sso", "alice", "hr-mcp", "miss"),
        ("exchange", "acme-sso", "bob", "hr-mcp", "miss"),
    ]
    assert rows[0]["act"] == {"sub": "holdgate"}
    assert rows[0]["scope"] == "hr.read"
    assert isinstance(rows[0]["exp"], int)
    assert rows[0]["token_ref"].startswith("hmac-sha256:")
    assert rows[0]["token_ref"] != rows[1]["token_ref"]
    assert_nothing_leaked(gw, alice, bob, *idp.issued, CLIENT_SECRET)
    review = holdgate_cli(
        "review", "--format", "json", "--config", str(gw.config), "--db", str(gw.db)
    )
    assert review.returncode == 0, review.stderr
    seen = {p["user"]: p["upstream_credentials"] for p in json.loads(review.stdout)["identities"]}
    assert seen == {
        user: [
            {
                "upstream": "demo",
                "mode": "exchange",
                "subject": user,
                "audience": "hr-mcp",
                "calls": 1,
            }
        ]
        for user in ("alice", "bob")
    }
    markdown = holdgate_cli("review", "--config", str(gw.config), "--db", str(gw.db)).stdout
    assert "### Upstream credentials" in markdown
    assert "| ` demo ` | ` alice ` | ` hr-mcp ` | ` exchange ` | 1 |" in markdown
    page = holdgate_cli(
        "review", "--format", "html", "--config", str(gw.config), "--db", str(gw.db)
    ).stdout
    assert "<h3>Upstream credentials</h3>" in page
    assert (
        "<tr><td>demo</td><td>bob</td><td>hr-mcp</td><td>exchange</td>"
        '<td class="n">1</td></tr>' in page
    )


def test_an_upstream_echoing_the_exchanged_token_gives_it_to_nobody(
    fake_upstream, gateway_factory, idp
):
    def echo(request: Request) -> Reply:
        text = f"you sent {request.headers.get('authorization')}"
        return result_for(request, {"content": [{"type": "text", "text": text}]})

    upstream = fake_upstream(echo)
    gw = start(gateway_factory, idp, upstream.url)
    alice = idp.user_token("alice")
    response = call(gw, "whoami", bearer(alice))
    assert response.status == 200
    assert len(idp.issued) == 1
    assert idp.issued[0] not in response.body.decode()
    assert "[REDACTED:injected_credential]" in response.body.decode()
    wait_for_rows(gw.db, 1)
    assert_nothing_leaked(gw, alice, *idp.issued, CLIENT_SECRET)


def test_sixteen_concurrent_calls_by_alice_cause_one_exchange(demo, gateway_factory, idp):
    idp.delay = 0.5  # the exchange is still under way when the other fifteen arrive
    gw = start(gateway_factory, idp, demo.url)
    alice = idp.user_token("alice")
    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(lambda _: call(gw, "whoami", bearer(alice)), range(16)))
    assert [a.status for a in answers] == [200] * 16
    assert idp.requests == 1
    rows = wait_for_rows(gw.db, 16, "whoami")
    assert sorted(r["cache"] for r in rows) == ["hit"] * 15 + ["miss"]
    assert len({r["token_ref"] for r in rows}) == 1


def test_an_expired_exchanged_token_is_exchanged_again(demo, gateway_factory, idp):
    idp.expires_in = 32  # used until 30 s (the skew) before it ends: for two seconds
    gw = start(gateway_factory, idp, demo.url)
    alice = idp.user_token("alice")
    whoami(gw, alice)
    whoami(gw, alice)
    assert idp.requests == 1
    time.sleep(2.5)
    assert whoami(gw, alice)["sub"] == "alice"
    assert idp.requests == 2
    sent = [r["headers"]["authorization"] for r in demo.requests()]
    assert sent == [f"Bearer {idp.issued[0]}"] * 2 + [f"Bearer {idp.issued[1]}"]
    caches = [r["cache"] for r in wait_for_rows(gw.db, 3, "whoami")]
    assert caches == ["miss", "hit", "miss"]


@pytest.mark.parametrize("fault", ["500", "timeout", "down"])
def test_the_idp_down_is_503_and_nothing_reaches_the_upstream(demo, gateway_factory, idp, fault):
    token_url = None
    if fault == "down":
        token_url = f"http://127.0.0.1:{free_port()}/token"  # nothing listens there
    else:
        idp.fault = fault
    gw = start(gateway_factory, idp, demo.url, token_url=token_url)
    alice = idp.user_token("alice")
    response = call(gw, "whoami", bearer(alice))
    assert response.status == 503
    message = response.json()["error"]["message"]
    assert "upstream 'demo'" in message and "not forwarded" in message
    again = call(gw, "whoami", bearer(alice))  # remembered: the IdP is not asked again
    assert again.status == 503
    assert demo.requests() == []
    assert idp.requests == (0 if fault == "down" else 1)
    rows = wait_for_rows(gw.db, 2)
    assert [r["error"]["kind"] for r in rows] == ["unavailable", "unavailable"]
    assert_nothing_leaked(gw, alice, CLIENT_SECRET)


@pytest.mark.parametrize(
    ("fault", "audiences", "code"),
    [("invalid_grant", {"hr-mcp"}, "invalid_grant"), (None, set(), "invalid_target")],
)
def test_the_idp_refusing_is_401_with_resource_metadata(
    demo, gateway_factory, idp, fault, audiences, code
):
    idp.fault, idp.audiences = fault, audiences
    gw = start(gateway_factory, idp, demo.url)
    alice = idp.user_token("alice")
    response = call(gw, "whoami", bearer(alice))
    assert response.status == 401
    challenge = response.headers.get("WWW-Authenticate") or response.headers["www-authenticate"]
    assert f'resource_metadata="{gw.url}/.well-known/oauth-protected-resource"' in challenge
    body = response.body.decode()
    assert code in body
    assert "rejected" not in body  # the IdP's description quotes the token: never passed on
    assert demo.requests() == []
    assert idp.refused == [code]
    rows = wait_for_rows(gw.db, 1)
    assert rows[0]["error"] == {
        "kind": "refused",
        "reason": "the identity provider refused the exchange (HTTP 400)",
        "idp_error": code,
        "status": 400,
    }
    assert_nothing_leaked(gw, alice, CLIENT_SECRET, "rejected " + alice[:30])


def test_a_token_that_is_not_a_bearer_access_token_is_refused(demo, gateway_factory, idp):
    idp.fault = "not_bearer"
    gw = start(gateway_factory, idp, demo.url)
    alice = idp.user_token("alice")
    response = call(gw, "whoami", bearer(alice))
    assert response.status == 502
    assert "not Bearer" in response.json()["error"]["message"]
    assert demo.requests() == []
    assert_nothing_leaked(gw, alice, *idp.issued, CLIENT_SECRET)


def test_an_api_key_caller_is_refused_when_service_identities_deny(demo, gateway_factory, idp):
    gw = start(gateway_factory, idp, demo.url)
    response = call(gw, "whoami", DANA)
    assert response.status == 403
    assert "no OIDC token" in response.json()["error"]["message"]
    assert demo.requests() == [] and idp.requests == 0
    (row,) = wait_for_rows(gw.db, 1)
    assert row["error"] == {"kind": "no-subject-token", "caller": "api_key"}


def test_an_api_key_caller_gets_the_static_credential_when_service_identities_static(
    demo, gateway_factory, idp
):
    gw = start(gateway_factory, idp, demo.url, service_identities="static", inject=STATIC_INJECT)
    assert call(gw, "whoami", DANA).status == 200
    alice = idp.user_token("alice")
    assert whoami(gw, alice)["sub"] == "alice"  # an OIDC caller still gets their own
    sent = [r["headers"].get("authorization") for r in demo.requests()]
    assert sent == [f"Bearer {STATIC_TOKEN}", f"Bearer {idp.issued[0]}"]
    rows = wait_for_rows(gw.db, 2, "whoami")
    assert rows[0] == {"mode": "static", "caller": "api_key", "headers": ["Authorization"]}
    assert rows[1]["mode"] == "exchange"
    assert_nothing_leaked(gw, alice, STATIC_TOKEN, *idp.issued, CLIENT_SECRET)


def test_a_denied_call_mints_nothing(demo, gateway_factory, idp):
    gw = start(gateway_factory, idp, demo.url)
    response = call(gw, "exec_shell", bearer(idp.user_token("alice")), {"command": "id"})
    assert "denied" in response.json()["error"]["message"]
    assert idp.requests == 0 and demo.requests() == []


async def decided_while_held(
    gw: Any,
    token: str,
    query: str,
    decision: str,
    meanwhile: Callable[[dict[str, Any]], Awaitable[None]] | None = None,
) -> Any:
    """Alice's `run_sql` held for a DBA, `meanwhile` run on its pending approval, then
    decided (`approve` or `deny`) by break-glass: the answer the held call got."""
    answers = []
    async with anyio.create_task_group() as tg:

        async def held() -> None:
            answers.append(
                await anyio.to_thread.run_sync(
                    lambda: call(gw, "run_sql", bearer(token), {"query": query})
                )
            )

        tg.start_soon(held)
        pending = await wait_for_pending(gw.db)
        if meanwhile is not None:
            await meanwhile(pending)
        decided = holdgate_cli(
            "approvals", decision, pending["approval_id"], *BREAK_GLASS, "--db", str(gw.db)
        )
        assert decided.returncode == 0, decided.stderr
    return answers[0]


async def test_a_held_then_denied_call_mints_nothing(demo, gateway_factory, idp):
    gw = start(gateway_factory, idp, demo.url)
    answer = await decided_while_held(gw, idp.user_token("alice"), "DELETE FROM x", "deny")
    assert "error" in answer.json()
    assert idp.requests == 0 and demo.requests() == []


async def test_a_held_call_is_exchanged_for_only_once_approved(demo, gateway_factory, idp):
    gw = start(gateway_factory, idp, demo.url)

    async def nothing_minted_yet(pending: dict[str, Any]) -> None:
        assert idp.requests == 0

    answer = await decided_while_held(
        gw, idp.user_token("alice"), "SELECT 1", "approve", nothing_minted_yet
    )
    assert answer.status == 200 and "result" in answer.json()
    assert idp.requests == 1
    sent = [r["headers"].get("authorization") for r in demo.requests()]
    assert sent == [f"Bearer {idp.issued[0]}"]


async def test_a_held_call_whose_token_expired_meanwhile_is_401_when_released(
    demo, gateway_factory, idp
):
    gw = start(gateway_factory, idp, demo.url)
    alice = idp.user_token("alice", lifetime=3)

    async def until_it_expires(pending: dict[str, Any]) -> None:
        await anyio.sleep(max(0.0, pending_deadline(alice) - time.time()) + 0.5)

    answer = await decided_while_held(gw, alice, "SELECT 1", "approve", until_it_expires)
    assert answer.status == 401
    assert "token expired" in answer.json()["error"]["message"]
    assert idp.requests == 0 and demo.requests() == []


def pending_deadline(token: str) -> float:
    return float(jwt.decode(token, options={"verify_signature": False})["exp"])


def test_an_upstream_401_evicts_the_token_and_is_never_replayed(
    fake_upstream, gateway_factory, idp
):
    answers = iter([401])

    def refuses_once(request: Request) -> Reply:
        status = next(answers, 200)
        if status == 401:
            return Reply(401, b'{"error": "invalid_token"}', [("Content-Type", "application/json")])
        return result_for(request, {"content": [{"type": "text", "text": "ok"}]})

    upstream = fake_upstream(refuses_once)
    gw = start(gateway_factory, idp, upstream.url)
    alice = idp.user_token("alice")
    first = call(gw, "whoami", bearer(alice))
    assert first.status == 502
    assert "refused the token" in first.json()["error"]["message"]
    assert len(upstream.received) == 1  # not sent again on the caller's behalf
    second = call(gw, "whoami", bearer(alice))
    assert second.status == 200
    assert idp.requests == 2  # the refused token was forgotten: exchanged anew
    auth = [r.headers["authorization"] for r in upstream.received]
    assert auth == [f"Bearer {idp.issued[0]}", f"Bearer {idp.issued[1]}"]


def test_entra_on_behalf_of_with_a_signed_client_assertion(demo, gateway_factory, idp, tmp_path):
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    idp.client_key = key
    (tmp_path / "tx-key.pem").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    gw = start(
        gateway_factory,
        idp,
        demo.url,
        profile="entra_obo",
        client_auth="    client_auth: private_key_jwt\n    private_key_file: tx-key.pem\n",
        target="      scopes: [api://hr-mcp/.default]\n",
    )
    alice = idp.user_token("alice")
    assert whoami(gw, alice) == {"sub": "alice", "aud": "hr-mcp", "bearer": True}
    form = idp.forms[0]
    assert form["grant_type"] == "urn:ietf:params:oauth:grant-type:jwt-bearer"
    assert form["requested_token_use"] == "on_behalf_of"
    assert form["scope"] == "api://hr-mcp/.default"
    assert form["client_assertion_type"].endswith("client-assertion-type:jwt-bearer")
    assert_nothing_leaked(gw, alice, *idp.issued)
