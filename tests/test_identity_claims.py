"""Pure identity logic: claim mapping, config validation, API keys, trusted addresses."""

import asyncio
import json
import time

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from holdgate.configfile import ConfigError, parse_yaml
from holdgate.identity import (
    AUTH_REASONS,
    VERIFIED_TTL,
    Authenticator,
    AuthError,
    api_key_hash,
    challenge,
    claim,
    generate_api_key,
    group_list,
    parse_identity,
)
from holdgate.protocol.jsonrpc import shown


@pytest.mark.parametrize(
    ("claims", "path", "expected"),
    [
        ({"sub": "u1"}, "sub", "u1"),
        ({"realm_access": {"roles": ["a", "b"]}}, "realm_access.roles", ["a", "b"]),
        (
            {"resource_access": {"holdgate": {"roles": ["x"]}}},
            "resource_access.holdgate.roles",
            ["x"],
        ),
        ({"https://example.com/groups": ["g"]}, "https://example.com/groups", ["g"]),
        ({"realm_access": "flat"}, "realm_access.roles", None),
        ({}, "groups", None),
    ],
)
def test_claim_paths(claims, path, expected):
    assert claim(claims, path) == expected


@pytest.mark.parametrize(
    ("value", "groups"),
    [
        (["a", "b"], ("a", "b")),
        ("a b", ("a", "b")),
        ("a,b, c", ("a", "b", "c")),
        ("", ()),
        (None, ()),
    ],
)
def test_group_list_forms(value, groups):
    assert group_list(value) == groups


def test_group_list_refuses_other_shapes():
    with pytest.raises(AuthError):
        group_list([1, 2])


def identity_config(text: str):
    return parse_identity(parse_yaml(text, "id.yaml").root.child("identity"))


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        (
            "identity:\n  oidc:\n    - issuer: x\n      audience: a\n      jwks_uri: http://k\n"
            "      algorithms: [HS256]\n",
            "only asymmetric",
        ),
        (
            "identity:\n  oidc:\n    - issuer: x\n      audience: a\n      algorithms: [none]\n"
            "      jwks_uri: http://k\n",
            "only asymmetric",
        ),
        ("identity:\n  oidc:\n    - issuer: x\n      audience: a\n", "exactly one of jwks_uri"),
        ("identity:\n  api_keys:\n    - name: k\n      sha256: abc\n", "64 hex digits"),
        ("identity:\n  trusted_header:\n    from: [not-an-ip]\n    user: X-U\n", "CIDR"),
        ("identity:\n  api_kees: []\n", "did you mean 'api_keys'"),
        ("identity: {}\n", "at least one"),
    ],
)
def test_identity_config_errors(text, fragment):
    with pytest.raises(ConfigError, match=fragment):
        identity_config(text)


def test_api_keys_are_compared_by_hash():
    key, digest = generate_api_key()
    assert key.startswith("hg_") and digest == api_key_hash(key)
    config = identity_config(
        f"identity:\n  api_keys:\n    - name: bot\n      sha256: {digest}\n      groups: [ci]\n"
    )
    auth = Authenticator(config)
    ok = asyncio.run(auth.authenticate({"x-api-key": [key]}, "127.0.0.1"))
    assert (ok.identity.user, ok.identity.groups, ok.identity.method) == ("bot", ("ci",), "api_key")
    bearer = asyncio.run(auth.authenticate({"authorization": [f"Bearer {key}"]}, "127.0.0.1"))
    assert bearer.identity is not None
    bad = asyncio.run(auth.authenticate({"x-api-key": [key + "x"]}, "127.0.0.1"))
    assert bad.identity is None and bad.error == "unknown API key" and key not in bad.error
    twice = asyncio.run(auth.authenticate({"authorization": ["Bearer a", "Bearer b"]}, "1.2.3.4"))
    assert twice.error == "multiple credentials"


def test_trusted_header_only_from_listed_networks():
    config = identity_config(
        "identity:\n  trusted_header:\n    from: [10.0.0.0/8]\n    user: X-User\n"
        "    groups: X-Groups\n"
    )
    auth = Authenticator(config)
    headers = {"x-user": ["ann"], "x-groups": ["a, b"]}
    inside = asyncio.run(auth.authenticate(headers, "::ffff:10.1.2.3"))
    assert inside.identity.user == "ann" and inside.identity.groups == ("a", "b")
    outside = asyncio.run(auth.authenticate(headers, "192.168.1.1"))
    assert outside.identity is None and set(outside.spoofed_headers) == {"x-user", "x-groups"}


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


EXPIRES = int(time.time()) + 3600


def signed(key, **claims) -> str:
    base = {"iss": "https://idp.test", "aud": "holdgate", "sub": "ann", "exp": EXPIRES}
    return jwt.encode({**base, **claims}, key, algorithm="RS256", headers={"kid": "k1"})


@pytest.fixture
def issuer():
    """An RSA key, a JWKS fetch that counts its calls, and a verifier with fake clocks."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
    jwks = {"keys": [{**public, "kid": "k1"}]}
    fetched = []

    async def fetch(url: str) -> bytes:
        fetched.append(url)
        return json.dumps(jwks).encode()

    config = identity_config(
        "identity:\n  oidc:\n    - issuer: https://idp.test\n      audience: holdgate\n"
        "      jwks_uri: https://idp.test/jwks\n      algorithms: [RS256]\n"
    )
    monotonic, wall = Clock(1000.0), Clock(time.time())
    auth = Authenticator(config, fetch, clock=monotonic, wall_clock=wall)
    return key, auth, monotonic, wall, jwks


def check(auth, token: str):
    return asyncio.run(auth.authenticate({"authorization": [f"Bearer {token}"]}, "127.0.0.1"))


def test_a_verified_token_is_reused_but_expiry_still_applies(issuer, monkeypatch):
    key, auth, monotonic, wall, _ = issuer
    token = signed(key)
    verifications = []
    real = auth._verify_jwt

    async def counted(value):
        verifications.append(value)
        return await real(value)

    monkeypatch.setattr(auth, "_verify_jwt", counted)
    assert check(auth, token).identity.user == "ann"
    assert check(auth, token).identity.user == "ann"
    assert len(verifications) == 1
    wall.now = EXPIRES + 3600  # past exp and leeway: verified again (pyjwt decides)
    check(auth, token)
    assert len(verifications) == 2


def test_the_reuse_window_is_bounded_and_a_rotated_out_key_ends_it(issuer):
    key, auth, monotonic, _, jwks = issuer
    token = signed(key)
    assert check(auth, token).identity is not None
    entry = next(iter(auth._verified.values()))
    monotonic.now += VERIFIED_TTL + 1  # the window is over: verified again, a new entry
    assert check(auth, token).identity is not None
    assert next(iter(auth._verified.values())) is not entry
    auth._caches["https://idp.test"].keys.clear()  # the key was rotated out
    jwks["keys"] = []
    refused = check(auth, token)
    assert refused.identity is None and "key" in refused.error


# --- nothing from a request reaches a response header (issue 13, item 6) -----------------

INJECTED = "x\r\nSet-Cookie: pwned=1"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("k1", '"k1"'),
        (INJECTED, '"x\\r\\nSet-Cookie: pwned=1"'),
        ('a"b\\c', '"a\\"b\\\\c"'),
        ("\u2028\x00\x1b", '"\\u2028\\u0000\\u001b"'),
        ("\ud800", '"\\ud800"'),
        (7, '"7"'),
        (None, '"null"'),
        ("z" * 100, '"' + "z" * 64 + '"...'),
    ],
)
def test_shown_values_are_quoted_escaped_and_bounded(value, expected):
    assert shown(value) == expected
    assert all(0x20 <= ord(c) < 0x7F for c in shown(value))


def test_the_challenge_carries_a_fixed_reason_and_a_quoted_url():
    url = "http://gw.test/.well-known/oauth-protected-resource"
    assert challenge(url, "unknown signing key") == (
        f'Bearer resource_metadata="{url}", error="invalid_token", '
        'error_description="unknown signing key"'
    )
    forged = challenge(url, f"unknown signing key (kid {INJECTED})")
    assert forged.endswith('error_description="invalid credentials"')
    hostile = challenge('http://a"b\\c\r\nX: 1\u00e9/x', "no credentials")
    assert "%22" in hostile and "%5C" in hostile and "%0D%0A" in hostile and "%C3%A9" in hostile
    assert hostile.count('"') == 6


def test_every_auth_error_in_the_package_names_a_fixed_reason():
    """A new `raise AuthError(f"... {value}")` would put request text in a header again."""
    import ast
    from pathlib import Path

    import holdgate.identity

    package = Path(holdgate.identity.__file__).parent
    tree = ast.Module(
        body=[node for path in package.glob("*.py") for node in ast.parse(path.read_text()).body],
        type_ignores=[],
    )
    calls = [
        node
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Name)
        and node.func.id == "AuthError"
    ]
    assert len(calls) > 15
    for call in calls:
        first = call.args[0]
        assert isinstance(first, ast.Constant) and first.value in AUTH_REASONS, ast.unparse(call)


@pytest.mark.parametrize(
    "headers",
    [
        {"kid": INJECTED},
        {"kid": "\n" * 5000},
        {"kid": "k1", "alg": "RS256\r\nSet-Cookie: pwned=1"},
    ],
)
def test_a_hostile_token_header_gives_a_fixed_reason_and_a_bounded_error(issuer, headers):
    key, auth, *_ = issuer
    base = {"iss": "https://idp.test", "aud": "holdgate", "sub": "ann", "exp": EXPIRES}
    alg = headers.pop("alg", "RS256")
    token = jwt.encode(base, key, algorithm="RS256", headers=headers)
    if alg != "RS256":  # pyjwt signs only algorithms it knows: swap the header in by hand
        head = jwt.utils.base64url_encode(json.dumps({**headers, "alg": alg}).encode()).decode()
        token = head + token[token.index(".") :]
    refused = check(auth, token)
    assert refused.identity is None
    assert refused.reason in AUTH_REASONS
    assert "\r" not in refused.error and "\n" not in refused.error
    assert len(refused.error) < 120
    assert isinstance(AuthError(refused.reason), Exception)
