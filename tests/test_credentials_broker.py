"""The token endpoint client and the broker, against `httpx.MockTransport`: what each
profile sends, how answers are read, the cache's key, expiry and bound, single flight and
the failures remembered."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from urllib.parse import parse_qs

import httpx
import jwt
import pytest

from holdgate.credentials import (
    CredentialBroker,
    CredentialProvider,
    IdpRefused,
    IdpUnavailable,
    TokenUnusable,
    UpstreamCredentials,
)
from holdgate.credentials import broker as broker_module
from holdgate.credentials.broker import cache_key
from holdgate.credentials.token_endpoint import exchange_form, read_answer

pytestmark = pytest.mark.anyio

PROVIDER = CredentialProvider(
    "acme-sso", "https://sso.test/token", "holdgate", client_secret="s3cr:et/+"
)
HR = UpstreamCredentials(PROVIDER, "hr-mcp", "https://hr.internal/mcp", ("hr.read",))
KEY = b"k" * 32


def issued(sub: str = "alice", lifetime: int = 300, **extra) -> str:
    claims = {"sub": sub, "aud": "hr-mcp", "exp": int(time.time()) + lifetime, **extra}
    return jwt.encode(claims, "issuer-key-for-tests-only-0123456789", algorithm="HS256")


def answer(token: str, expires_in: int = 300, **extra) -> dict:
    return {
        "access_token": token,
        "token_type": "Bearer",
        "issued_token_type": "urn:ietf:params:oauth:token-type:access_token",
        "expires_in": expires_in,
        **extra,
    }


def test_the_rfc8693_form_and_basic_client_authentication():
    form, headers = exchange_form(HR, "subject.jwt.token")
    assert form == {
        "grant_type": "urn:ietf:params:oauth:grant-type:token-exchange",
        "subject_token": "subject.jwt.token",
        "subject_token_type": "urn:ietf:params:oauth:token-type:access_token",
        "requested_token_type": "urn:ietf:params:oauth:token-type:access_token",
        "audience": "hr-mcp",
        "resource": "https://hr.internal/mcp",
        "scope": "hr.read",
    }
    # RFC 6749 2.3.1: each part form-urlencoded before Basic
    pair = base64.b64decode(headers["Authorization"].removeprefix("Basic "))
    assert pair == b"holdgate:s3cr%3Aet%2F%2B"


def test_the_entra_obo_form():
    provider = CredentialProvider(
        "entra", "https://login.test/token", "app-id", client_secret="s", profile="entra_obo"
    )
    form, headers = exchange_form(
        UpstreamCredentials(provider, None, None, ("api://hr/.default",)), "subject"
    )
    assert form == {
        "grant_type": "urn:ietf:params:oauth:grant-type:jwt-bearer",
        "assertion": "subject",
        "requested_token_use": "on_behalf_of",
        "scope": "api://hr/.default",
        "client_id": "app-id",
        "client_secret": "s",
    }
    assert "Authorization" not in headers


@pytest.mark.parametrize(
    ("status", "body", "error", "code"),
    [
        (500, {"error": "server_error"}, IdpUnavailable, "server_error"),
        (302, {}, IdpUnavailable, None),
        (
            400,
            {"error": "invalid_grant", "error_description": "token abc"},
            IdpRefused,
            "invalid_grant",
        ),
        (400, {"error": "bad\ncode"}, IdpRefused, "unknown"),
        (200, {"access_token": "x", "token_type": "N_A"}, TokenUnusable, None),
        (
            200,
            {
                "access_token": "x",
                "token_type": "Bearer",
                "issued_token_type": "urn:ietf:params:oauth:token-type:refresh_token",
            },
            TokenUnusable,
            None,
        ),
        (200, {"access_token": "a b", "token_type": "Bearer"}, TokenUnusable, None),
        (200, {"token_type": "Bearer"}, TokenUnusable, None),
        (200, "not json", TokenUnusable, None),
    ],
)
def test_answers_that_give_no_token_fail_as_what_they_mean(status, body, error, code):
    raw = body.encode() if isinstance(body, str) else json.dumps(body).encode()
    with pytest.raises(error) as raised:
        read_answer(status, raw, time.time())
    assert raised.value.idp_error == code
    assert "abc" not in str(raised.value)  # never the IdP's description


def test_expiry_is_the_earlier_of_expires_in_and_the_jwts_exp():
    token = issued(lifetime=100)
    got = read_answer(200, json.dumps(answer(token, expires_in=3600)).encode(), time.time())
    assert got.expires_at == pytest.approx(time.time() + 100, abs=2)
    assert got.claims["sub"] == "alice"


def test_the_cache_key_changes_with_everything_the_exchange_asks_for():
    base = cache_key(KEY, HR, "subject")
    assert cache_key(KEY, HR, "subject") == base
    assert cache_key(KEY, HR, "other") != base
    assert cache_key(b"x" * 32, HR, "subject") != base
    for changed in (
        UpstreamCredentials(PROVIDER, "other", HR.resource, HR.scopes),
        UpstreamCredentials(PROVIDER, HR.audience, None, HR.scopes),
        UpstreamCredentials(PROVIDER, HR.audience, HR.resource, ("hr.write",)),
    ):
        assert cache_key(KEY, changed, "subject") != base
    assert b"subject" not in base


class Endpoint:
    def __init__(self, *tokens: str, status: int = 200, delay: float = 0.0) -> None:
        self.tokens = list(tokens)
        self.status = status
        self.delay = delay
        self.calls = 0

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        self.calls += 1
        form = parse_qs(request.content.decode())
        assert form["subject_token"][0].startswith("subject")
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.status != 200:
            return httpx.Response(self.status, json={"error": "temporarily_unavailable"})
        return httpx.Response(200, json=answer(self.tokens.pop(0)))


def broker_for(endpoint: Endpoint, clock=time.time) -> CredentialBroker:
    return CredentialBroker(
        lambda: httpx.AsyncClient(transport=httpx.MockTransport(endpoint)), clock=clock
    )


async def test_concurrent_calls_share_one_exchange_and_later_ones_hit_the_cache():
    endpoint = Endpoint(issued(), delay=0.05)
    broker = broker_for(endpoint)
    far = time.time() + 3600
    got = await asyncio.gather(
        *(broker.delegate(HR, "subject-a", far, "alice", KEY) for _ in range(16))
    )
    again = await broker.delegate(HR, "subject-a", far, "alice", KEY)
    assert endpoint.calls == 1
    assert sorted(d.evidence["cache"] for d in got) == ["hit"] * 15 + ["miss"]
    assert again.evidence["cache"] == "hit" and again.token == got[0].token
    assert got[0].evidence["sub"] == "alice" and got[0].evidence["aud"] == "hr-mcp"
    assert got[0].token not in json.dumps(got[0].evidence)


async def test_a_token_is_used_until_the_subject_or_it_ends_less_the_skew():
    now = [1000.0]
    endpoint = Endpoint(issued(), issued())
    broker = broker_for(endpoint, clock=lambda: now[0])
    subject_ends = now[0] + broker_module.SKEW + 10  # earlier than the issued token
    await broker.delegate(HR, "subject-a", subject_ends, "alice", KEY)
    now[0] += 9
    await broker.delegate(HR, "subject-a", subject_ends, "alice", KEY)
    assert endpoint.calls == 1
    now[0] += 2
    await broker.delegate(HR, "subject-a", subject_ends, "alice", KEY)
    assert endpoint.calls == 2


async def test_a_failure_is_remembered_for_a_short_while():
    now = [1000.0]
    endpoint = Endpoint(status=503)
    broker = broker_for(endpoint, clock=lambda: now[0])
    for _ in range(3):
        with pytest.raises(IdpUnavailable):
            await broker.delegate(HR, "subject-a", now[0] + 3600, "alice", KEY)
    assert endpoint.calls == 1
    now[0] += broker_module.FAILURE_TTL + 0.1
    with pytest.raises(IdpUnavailable):
        await broker.delegate(HR, "subject-a", now[0] + 3600, "alice", KEY)
    assert endpoint.calls == 2


async def test_the_cache_is_bounded_least_recently_used_first(monkeypatch):
    monkeypatch.setattr(broker_module, "MAX_ENTRIES", 2)
    endpoint = Endpoint(*(issued(sub) for sub in ("a", "b", "c", "a")))
    broker = broker_for(endpoint)
    far = time.time() + 3600
    for subject in ("subject-a", "subject-b", "subject-c", "subject-a"):
        await broker.delegate(HR, subject, far, "x", KEY)
    assert endpoint.calls == 4  # a was dropped when c came


async def test_an_evicted_token_is_exchanged_again():
    endpoint = Endpoint(issued(), issued("alice", 200))
    broker = broker_for(endpoint)
    far = time.time() + 3600
    first = await broker.delegate(HR, "subject-a", far, "alice", KEY)
    broker.evict(first.cache_key)
    second = await broker.delegate(HR, "subject-a", far, "alice", KEY)
    assert endpoint.calls == 2 and second.token != first.token


async def test_a_slow_endpoint_times_out_as_unavailable():
    provider = CredentialProvider(
        "acme-sso", "https://sso.test/token", "holdgate", client_secret="s", timeout=0.05
    )
    endpoint = Endpoint(issued(), delay=1.0)
    broker = broker_for(endpoint)
    with pytest.raises(IdpUnavailable, match="did not answer within 0.05s"):
        await broker.delegate(
            UpstreamCredentials(provider, "hr-mcp"), "subject-a", time.time() + 60, "a", KEY
        )
