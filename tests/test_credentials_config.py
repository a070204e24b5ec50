"""`credential_providers:` and `upstreams[].credentials:`: what loads, and every mistake with
its file, line and key."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from holdgate.config.gateway_config import load_config, parse_config_text
from holdgate.configfile import ConfigErrors

PROVIDER = """\
version: 1
credential_providers:
  - name: acme-sso
    token_url: {token_url}
    client_id: holdgate
{auth}    profile: {profile}
    timeout: {timeout}
upstreams:
  - name: hr
    url: https://hr.internal
{inject}    credentials:
{credentials}"""
SECRET = '    client_secret: "${env:HOLDGATE_TX_SECRET}"\n'
TARGET = "      exchange: acme-sso\n      audience: hr-mcp\n      scopes: [hr.read]\n"


def config(
    *,
    token_url: str = "https://sso.acme.example/oauth2/token",
    auth: str = SECRET,
    profile: str = "rfc8693",
    timeout: str = "3s",
    inject: str = "",
    credentials: str = TARGET,
) -> str:
    return PROVIDER.format(
        token_url=token_url,
        auth=auth,
        profile=profile,
        timeout=timeout,
        inject=inject,
        credentials=credentials,
    )


@pytest.fixture(autouse=True)
def secret(monkeypatch):
    monkeypatch.setenv("HOLDGATE_TX_SECRET", "tx-secret-value-1234")


def test_a_provider_and_an_upstreams_credentials_load():
    loaded = parse_config_text(config(), "f.yaml")
    (hr,) = loaded.upstreams
    assert hr.credentials is not None
    provider = hr.credentials.provider
    assert (provider.name, provider.client_auth, provider.profile, provider.timeout) == (
        "acme-sso",
        "client_secret_basic",
        "rfc8693",
        3.0,
    )
    assert hr.credentials.audience == "hr-mcp"
    assert hr.credentials.scopes == ("hr.read",)
    assert hr.credentials.service_identities == "deny"
    # the client secret is one of the values kept out of every record and answer
    assert "tx-secret-value-1234" in loaded.secrets
    assert "tx-secret-value-1234" in hr.secrets
    assert "tx-secret-value-1234" not in repr(provider)


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        (
            {"credentials": "      exchange: acme\n      audience: hr-mcp\n"},
            "f.yaml:13:7: upstreams[0].credentials.exchange: no credential provider named "
            "'acme'; known: acme-sso",
        ),
        (
            {"token_url": "http://sso.acme.example/token"},
            "f.yaml:4:5: credential_providers[0].token_url: http:// would send callers' "
            "tokens and the client secret unencrypted; use https:// for sso.acme.example",
        ),
        (
            {"token_url": "https://user:pw@sso.acme.example/token"},
            "credential_providers[0].token_url: no user info in the URL",
        ),
        (
            {"auth": "    client_secret: hunter2-literal\n"},
            "f.yaml:6:5: credential_providers[0].client_secret: name the secret, do not "
            "write it here",
        ),
        (
            {"auth": ""},
            "f.yaml:3:5: credential_providers[0]: missing required key 'client_secret'",
        ),
        (
            {"auth": SECRET + "    client_auth: private_key_jwt\n"},
            "credential_providers[0].client_secret: `client_auth: private_key_jwt` signs an "
            "assertion instead of sending a secret",
        ),
        (
            {"auth": "    client_auth: private_key_jwt\n"},
            "missing required key 'private_key_file'",
        ),
        ({"profile": "saml"}, "credential_providers[0].profile: expected one of rfc8693, "),
        ({"timeout": "0s"}, "credential_providers[0].timeout: expected a duration from 1ms"),
        (
            {"credentials": "      exchange: acme-sso\n"},
            "upstreams[0].credentials: missing required key 'audience'",
        ),
        (
            {"credentials": TARGET + "      scopes: ['hr.read hr.write']\n"},
            "duplicate",
        ),
        (
            {"credentials": TARGET.replace("[hr.read]", "['hr.read hr.write']")},
            "upstreams[0].credentials.scopes[0]: 'hr.read hr.write' is not one scope",
        ),
        (
            {"credentials": TARGET + "      resource: hr-mcp#x\n"},
            "upstreams[0].credentials.resource: expected an absolute URI without a fragment",
        ),
        (
            {"credentials": TARGET + "      service_identities: static\n"},
            "upstreams[0].credentials.service_identities: `static` sends callers without an "
            "OIDC token the upstream's static credential, but the upstream has none",
        ),
        (
            {"credentials": TARGET + "      service_identities: allow\n"},
            "upstreams[0].credentials.service_identities: expected one of deny, static",
        ),
        (
            {"profile": "entra_obo", "credentials": "      exchange: acme-sso\n"},
            "the entra_obo profile needs `scopes`",
        ),
        (
            {"credentials": TARGET + "      audiense: x\n"},
            "unknown key 'audiense'; did you mean 'audience'?",
        ),
    ],
)
def test_each_mistake_says_where_and_how_to_fix_it(changes, expected):
    with pytest.raises(ConfigErrors) as raised:
        parse_config_text(config(**changes), "f.yaml")
    assert expected in str(raised.value)


def test_an_upstream_naming_a_provider_that_failed_is_not_blamed_twice():
    with pytest.raises(ConfigErrors) as raised:
        parse_config_text(config(token_url="ftp://sso"), "f.yaml")
    errors = raised.value.errors
    assert len(errors) == 1
    assert "token_url" in str(errors[0])


def test_static_for_service_identities_with_a_static_authorization_loads():
    inject = (
        '    inject:\n      headers:\n        Authorization: "Bearer ${env:HOLDGATE_TX_SECRET}"\n'
    )
    loaded = parse_config_text(
        config(inject=inject, credentials=TARGET + "      service_identities: static\n"),
        "f.yaml",
    )
    assert loaded.upstreams[0].credentials.service_identities == "static"


def test_http_token_url_to_loopback_is_accepted():
    loaded = parse_config_text(config(token_url="http://127.0.0.1:8080/token"), "f.yaml")
    assert loaded.credential_providers[0].token_url == "http://127.0.0.1:8080/token"


def _write_key(path: Path, key) -> None:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )


@pytest.mark.parametrize(
    ("key", "alg"),
    [
        (lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048), "RS256"),
        (lambda: ec.generate_private_key(ec.SECP256R1()), "ES256"),
    ],
)
def test_a_private_key_file_is_read_relative_to_the_config(tmp_path, key, alg):
    _write_key(tmp_path / "tx.pem", key())
    path = tmp_path / "holdgate.yaml"
    path.write_text(config(auth="    client_auth: private_key_jwt\n    private_key_file: tx.pem\n"))
    provider = load_config(path).credential_providers[0]
    assert provider.signing_alg == alg
    assert provider.private_key is not None and provider.client_secret is None


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (None, "cannot read the private key file"),
        (b"not a key", "is not an unencrypted PEM private key"),
        ("small-rsa", "expected an RSA key of 2048 bits or more, or an EC P-256 key"),
    ],
)
def test_a_bad_private_key_file_is_a_config_error(tmp_path, content, expected):
    if content == "small-rsa":
        _write_key(
            tmp_path / "tx.pem", rsa.generate_private_key(public_exponent=65537, key_size=1024)
        )
    elif content is not None:
        (tmp_path / "tx.pem").write_bytes(content)
    path = tmp_path / "holdgate.yaml"
    path.write_text(config(auth="    client_auth: private_key_jwt\n    private_key_file: tx.pem\n"))
    with pytest.raises(ConfigErrors) as raised:
        load_config(path)
    assert expected in str(raised.value)
    assert "credential_providers[0].private_key_file" in str(raised.value)


def test_a_rules_only_load_reads_no_secret(monkeypatch):
    monkeypatch.delenv("HOLDGATE_TX_SECRET")
    loaded = load_config_text_without_secrets(config())
    assert loaded.credential_providers[0].client_secret == "[secret not loaded]"


def load_config_text_without_secrets(text: str):
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "holdgate.yaml"
        path.write_text(text)
        return load_config(path, secrets=False)
