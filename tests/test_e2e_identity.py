"""Identity through a real mitmdump: real keys, a JWKS served on loopback, signed tokens."""

from __future__ import annotations

import hashlib
import hmac
import json
import sqlite3
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import jwt
import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

from helpers.clients import META, MODERN, connect, raw_post
from helpers.configs import ALICE, api_keys
from helpers.leaks import assert_nothing_leaked
from helpers.processes import start_demo, stop
from helpers.upstreams import Reply, Request, json_reply

pytestmark = pytest.mark.anyio

ISSUER = "https://idp.test/realms/acme"
UPSTREAM_TOKEN = "upstream-secret-7d1f0c"


class JWKS:
    """The identity provider's key set: serves whatever keys the test sets, counting fetches
    (the answer of a `FakeUpstream`)."""

    def __init__(self) -> None:
        self.keys: list[dict] = []
        self.fetched_at: list[float] = []  # time.monotonic() of each fetch
        self.cache_control: str | None = None
        self.url = ""  # set once served
        self._lock = threading.Lock()

    @property
    def fetches(self) -> int:
        return len(self.fetched_at)

    def __call__(self, request: Request) -> Reply:
        with self._lock:
            self.fetched_at.append(time.monotonic())
            keys = list(self.keys)
        extra = [("Cache-Control", self.cache_control)] if self.cache_control else []
        return json_reply({"keys": keys}, headers=extra)

    def wait_for(self, fetches: int, seconds: float = 15.0) -> None:
        deadline = time.monotonic() + seconds
        while self.fetches < fetches:
            assert time.monotonic() < deadline, f"{self.fetches} fetches, not {fetches}"
            time.sleep(0.05)


def jwk(private_key, kid: str) -> dict:
    public = private_key.public_key()
    alg = "RS256" if isinstance(private_key, rsa.RSAPrivateKey) else "ES256"
    algo = jwt.algorithms.RSAAlgorithm if alg == "RS256" else jwt.algorithms.ECAlgorithm
    data = json.loads(algo.to_jwk(public))
    return {**data, "kid": kid, "use": "sig", "alg": alg}


def token(private_key, kid: str, **overrides) -> str:
    now = int(time.time())
    claims = {
        "iss": ISSUER,
        "aud": "holdgate",
        "sub": "u-123",
        "preferred_username": "erin",
        "realm_access": {"roles": ["support", "offline_access"]},
        "iat": now,
        "exp": now + 300,
        **overrides,
    }
    alg = "RS256" if isinstance(private_key, rsa.RSAPrivateKey) else "ES256"
    return jwt.encode(claims, private_key, algorithm=alg, headers={"kid": kid})


CONFIG = (
    """
version: 1
identity:
  oidc:
    - issuer: {issuer}
      audience: holdgate
      jwks_uri: {jwks}
      algorithms: [RS256, ES256]
      user_claim: preferred_username
      groups_claim: realm_access.roles
      leeway: 5s
      jwks_min_refresh: 0s
"""
    + api_keys("alice", names={"alice": "ci-bot"})
    + """  trusted_header:
    from: [{trusted}]
    user: X-Forwarded-User
    groups: X-Forwarded-Groups
upstreams:
  - name: demo
    url: {url}
    inject:
      headers:
        Authorization: "Bearer ${{env:UPSTREAM_TOKEN}}"
rules:
  - name: support reads
    match: {{groups: [support]}}
    action: allow
"""
)


@pytest.fixture
def keys():
    return {
        "rsa": rsa.generate_private_key(public_exponent=65537, key_size=2048),
        "ec": ec.generate_private_key(ec.SECP256R1()),
        "rotated": rsa.generate_private_key(public_exponent=65537, key_size=2048),
    }


@pytest.fixture
def jwks(keys, fake_upstream) -> JWKS:
    provider = JWKS()
    provider.keys = [jwk(keys["rsa"], "k1"), jwk(keys["ec"], "k2")]
    provider.url = fake_upstream(provider).url + "/jwks"
    return provider


@pytest.fixture
def setup(tmp_path, jwks, gateway_factory):
    demo = start_demo(tmp_path, "--expect-token", UPSTREAM_TOKEN)
    gw = gateway_factory(
        CONFIG.format(issuer=ISSUER, jwks=jwks.url, url=demo.url, trusted="127.0.0.1/32"),
        demo.url,
        env={"UPSTREAM_TOKEN": UPSTREAM_TOKEN},
    )
    yield gw, demo
    stop(demo.proc)


def tools_list(gw, headers):
    body = {"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {"_meta": META}}
    return raw_post(gw.url + "/mcp", body, {**MODERN, "Mcp-Method": "tools/list", **headers})


@pytest.mark.parametrize("kind", ["rsa", "ec"])
async def test_valid_token_through_the_official_client(setup, keys, kind):
    gw, demo = setup
    kid = "k1" if kind == "rsa" else "k2"
    bearer = token(keys[kind], kid)
    async with connect(gw.url + "/mcp", {"Authorization": f"Bearer {bearer}"}) as client:
        result = await client.call_tool("get_customer", {"customer_id": 1})
    assert not result.is_error
    seen = demo.requests()
    assert seen and all(
        r["headers"].get("authorization") == f"Bearer {UPSTREAM_TOKEN}" for r in seen
    )
    assert bearer not in json.dumps(seen)


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda k: token(k["rsa"], "k1", exp=int(time.time()) - 60), "token expired"),
        (lambda k: token(k["rsa"], "k1", nbf=int(time.time()) + 600), "not yet valid"),
        (lambda k: token(k["rsa"], "k1", iss="https://evil.test/"), "unknown issuer"),
        (lambda k: token(k["rsa"], "k1", aud="someone-else"), "wrong audience"),
        (lambda k: token(k["rsa"], "k1")[:-6] + "AAAAAA", "bad signature"),
        (
            lambda k: jwt.encode(
                {"iss": ISSUER, "aud": "holdgate", "sub": "x", "exp": int(time.time()) + 60},
                None,
                algorithm="none",
            ),
            "algorithm not allowed",
        ),
        (lambda k: _hs256_with_public_key(k["rsa"]), "algorithm not allowed"),
        (lambda k: token(k["rsa"], "nope"), "unknown signing key"),
    ],
)
def test_bad_tokens_get_401_with_resource_metadata(setup, keys, make, reason):
    gw, demo = setup
    bad = make(keys)
    response = tools_list(gw, {"Authorization": f"Bearer {bad}"})
    assert response.status == 401
    challenge = response.headers.get("www-authenticate") or response.headers.get("WWW-Authenticate")
    assert f'resource_metadata="{gw.url}/.well-known/oauth-protected-resource"' in challenge
    assert reason in response.json()["error"]["message"]
    assert bad not in response.body.decode()
    assert demo.requests() == []


def _hs256_with_public_key(private_key) -> str:
    pem = private_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    claims = {
        "iss": ISSUER,
        "aud": "holdgate",
        "preferred_username": "mallory",
        "exp": int(time.time()) + 60,
    }
    header = jwt.utils.base64url_encode(json.dumps({"alg": "HS256", "kid": "k1"}).encode())
    payload = jwt.utils.base64url_encode(json.dumps(claims).encode())
    signature = hmac.new(pem, header + b"." + payload, hashlib.sha256).digest()
    return (header + b"." + payload + b"." + jwt.utils.base64url_encode(signature)).decode()


def test_key_rotation_is_accepted_after_refetch(setup, keys, jwks):
    gw, demo = setup
    rotated = token(keys["rotated"], "k3")
    assert tools_list(gw, {"Authorization": f"Bearer {rotated}"}).status == 401
    jwks.keys = [jwk(keys["rotated"], "k3")]
    before = jwks.fetches
    response = tools_list(gw, {"Authorization": f"Bearer {rotated}"})
    assert response.status == 200, response.body
    assert jwks.fetches == before + 1


def test_protected_resource_metadata_is_served(setup):
    gw, _ = setup
    with urllib.request.urlopen(gw.url + "/.well-known/oauth-protected-resource") as r:
        doc = json.loads(r.read())
    assert doc["authorization_servers"] == [ISSUER]
    assert doc["resource"] == gw.url


def test_api_key_right_and_wrong(setup):
    gw, demo = setup
    assert tools_list(gw, ALICE).status == 200
    wrong = tools_list(gw, {"X-API-Key": "guess"})
    assert wrong.status == 401 and "unknown API key" in wrong.json()["error"]["message"]
    both = tools_list(gw, {**ALICE, "Authorization": "Bearer other"})
    assert both.status == 401
    assert all(ALICE["X-API-Key"] not in json.dumps(r) for r in demo.requests())
    assert_nothing_leaked(gw, ALICE["X-API-Key"], UPSTREAM_TOKEN)


def test_trusted_header_from_allowed_address(setup):
    gw, demo = setup
    ok = tools_list(gw, {"X-Forwarded-User": "frank", "X-Forwarded-Groups": "support,ops"})
    assert ok.status == 200
    assert all("x-forwarded-user" not in r["headers"] for r in demo.requests())


def test_trusted_header_from_elsewhere_is_stripped_and_recorded(tmp_path, jwks, gateway_factory):
    demo = start_demo(tmp_path, "--expect-token", UPSTREAM_TOKEN)
    try:
        gw = gateway_factory(
            CONFIG.format(issuer=ISSUER, jwks=jwks.url, url=demo.url, trusted="10.9.9.9/32"),
            demo.url,
            env={"UPSTREAM_TOKEN": UPSTREAM_TOKEN},
        )
        spoof = tools_list(gw, {"X-Forwarded-User": "root", "X-Forwarded-Groups": "support"})
        assert spoof.status == 401
        with_key = tools_list(gw, {"X-Forwarded-User": "root", **ALICE})
        assert with_key.status == 200
        assert all("x-forwarded-user" not in r["headers"] for r in demo.requests())
        stop(gw.proc)
        extras = [e for (e,) in sqlite3.connect(gw.db).execute("select extra from events")]
        assert any("spoofing" in (e or "") for e in extras)
    finally:
        stop(demo.proc)


async def test_no_credentials_is_401_for_the_official_client(setup):
    gw, _ = setup
    with pytest.raises(Exception) as info:  # noqa: B017 - the SDK raises its own HTTP error
        async with connect(gw.url + "/mcp") as client:
            await client.list_tools()
    assert "no credentials" in repr(info.value)


def _hand_signed(private_key, header: dict) -> str:
    """A real RS256 signature over a header built by hand (pyjwt would refuse some of these)."""
    now = int(time.time())
    claims = {"iss": ISSUER, "aud": "holdgate", "preferred_username": "erin", "exp": now + 300}
    signing_input = (
        jwt.utils.base64url_encode(json.dumps(header).encode())
        + b"."
        + jwt.utils.base64url_encode(json.dumps(claims).encode())
    )
    signature = private_key.sign(signing_input, padding.PKCS1v15(), hashes.SHA256())
    return (signing_input + b"." + jwt.utils.base64url_encode(signature)).decode()


INJECTED = "x\r\nSet-Cookie: pwned=1"


@pytest.mark.parametrize(
    ("header", "reason"),
    [
        ({"alg": "RS256", "typ": "JWT", "kid": INJECTED}, "unknown signing key"),
        ({"alg": "RS256\r\nSet-Cookie: pwned=1", "kid": "k1"}, "algorithm not allowed"),
        ({"alg": 'RS256", error="x\r\nSet-Cookie: pwned=1', "kid": "k1"}, "algorithm not allowed"),
        ({"alg": "ES256", "kid": "k1"}, "algorithm not allowed for this key"),
        ({"alg": "RS256", "kid": "\n" * 5000 + "Set-Cookie: pwned=1"}, "unknown signing key"),
        ({"alg": "RS256", "kid": "k\u2028\u0085\x00\x1b[31m" + "z" * 3000}, "unknown signing key"),
    ],
)
def test_token_header_text_never_reaches_response_headers(setup, keys, header, reason):
    gw, demo = setup
    bad = _hand_signed(keys["rsa"], header)
    response = tools_list(gw, {"Authorization": f"Bearer {bad}"})
    assert response.status == 401
    names = {name.lower() for name in response.headers}
    assert "set-cookie" not in names
    challenge = response.headers.get("www-authenticate") or response.headers.get("WWW-Authenticate")
    assert not any(c in challenge for c in "\r\n\x00")
    assert f'error_description="{reason}"' in challenge
    assert challenge.count('"') == 6  # resource_metadata, error, error_description: nothing else
    message = response.json()["error"]["message"]
    assert reason in message
    assert len(message) < 200
    assert not any(ord(c) < 0x20 or c in "\u2028\u0085" for c in message)
    assert len(response.body) < 600
    assert demo.requests() == []


def test_the_audit_row_gets_the_bad_value_escaped_and_bounded(
    tmp_path, jwks, keys, gateway_factory
):
    demo = start_demo(tmp_path, "--expect-token", UPSTREAM_TOKEN)
    try:
        gw = gateway_factory(
            CONFIG.format(issuer=ISSUER, jwks=jwks.url, url=demo.url, trusted="127.0.0.1/32"),
            demo.url,
            env={"UPSTREAM_TOKEN": UPSTREAM_TOKEN},
        )
        kid = INJECTED + "y" * 5000
        response = tools_list(
            gw,
            {"Authorization": f"Bearer {_hand_signed(keys['rsa'], {'alg': 'RS256', 'kid': kid})}"},
        )
        assert response.status == 401
        assert 'kid "x\\r\\nSet-Cookie: pwned=1yyy' in response.json()["error"]["message"]
        stop(gw.proc)
        extras = [e for (e,) in sqlite3.connect(gw.db).execute("select extra from events") if e]
        errors = [json.loads(e).get("auth_error") for e in extras]
        errors = [e for e in errors if e]
        assert errors and all("\r" not in e and "\n" not in e and len(e) < 200 for e in errors)
        assert INJECTED not in gw.log_text()
    finally:
        stop(demo.proc)


# --- key rotation without an outage (issue 15, item 5) ------------------------------------

# The defaults: a 2 s window between fetches of an issuer's keys, an hour without max-age.
ROTATING = CONFIG.replace("      jwks_min_refresh: 0s\n", "{limits}")
WINDOW = 2.0


@pytest.fixture
def rotating(tmp_path, jwks, gateway_factory, request):
    limits, jwks.cache_control = getattr(request, "param", ("", None))
    demo = start_demo(tmp_path, "--expect-token", UPSTREAM_TOKEN)
    text = ROTATING.format(
        issuer=ISSUER, jwks=jwks.url, url=demo.url, trusted="127.0.0.1/32", limits=limits
    )
    gw = gateway_factory(text, demo.url, env={"UPSTREAM_TOKEN": UPSTREAM_TOKEN})
    jwks.wait_for(1)  # the keys are fetched at start
    yield gw
    stop(demo.proc)


def test_the_first_token_signed_with_a_rotated_key_is_accepted(rotating, keys, jwks):
    gw = rotating
    assert tools_list(gw, {"Authorization": f"Bearer {token(keys['rsa'], 'k1')}"}).status == 200
    time.sleep(WINDOW + 0.2)  # the IdP rotates some time after the fetch at start
    jwks.keys = [jwk(keys["rotated"], "k3")]  # its only key is replaced
    before = jwks.fetches
    response = tools_list(gw, {"Authorization": f"Bearer {token(keys['rotated'], 'k3')}"})
    assert response.status == 200, response.body  # 401 for 30 s before this issue
    assert jwks.fetches == before + 1
    old = tools_list(gw, {"Authorization": f"Bearer {token(keys['rsa'], 'k1')}"})
    assert old.status == 401 and "unknown signing key" in old.json()["error"]["message"]


def test_tokens_with_random_kids_fetch_at_most_once_per_window(rotating, keys, jwks):
    gw = rotating
    time.sleep(WINDOW + 0.2)
    before = jwks.fetches
    started = time.monotonic()
    bearers = [token(keys["rsa"], f"random-{secrets_hex()}") for _ in range(100)]
    with ThreadPoolExecutor(max_workers=50) as pool:
        first = list(
            pool.map(lambda b: tools_list(gw, {"Authorization": f"Bearer {b}"}), bearers[:50])
        )
        second = list(
            pool.map(lambda b: tools_list(gw, {"Authorization": f"Bearer {b}"}), bearers[50:])
        )
    elapsed = time.monotonic() - started
    for response in first + second:
        assert response.status == 401
        assert "unknown signing key" in response.json()["error"]["message"]
    during = jwks.fetched_at[before:]
    assert 1 <= len(during) <= 1 + int(elapsed / WINDOW), (len(during), elapsed)
    gaps = [b - a for a, b in zip(jwks.fetched_at, jwks.fetched_at[1:], strict=False)]
    assert all(gap >= WINDOW - 0.1 for gap in gaps), gaps


def secrets_hex() -> str:
    return hashlib.sha256(str(time.perf_counter_ns()).encode()).hexdigest()[:16]


@pytest.mark.parametrize(
    "rotating",
    [("      jwks_min_refresh: 1h\n      jwks_min_age: 1s\n", "public, max-age=1")],
    indirect=True,
)
def test_the_background_refresh_honours_max_age(rotating, keys, jwks):
    """No token may fetch (a window of an hour): only the refresh, every max-age, can."""
    gw = rotating
    jwks.wait_for(2)  # refreshed after max-age (1 s), not after an hour
    jwks.keys = [jwk(keys["rotated"], "k3")]
    seen = jwks.fetches
    jwks.wait_for(seen + 2, seconds=10)  # a whole refresh after the rotation
    response = tools_list(gw, {"Authorization": f"Bearer {token(keys['rotated'], 'k3')}"})
    assert response.status == 200, response.body
    gaps = [b - a for a, b in zip(jwks.fetched_at, jwks.fetched_at[1:], strict=False)]
    assert all(0.8 <= gap < 5 for gap in gaps[1:]), gaps  # max-age=1, raised to no more
