"""Secrets under JSON keys and realistic PII formats, through the real gateway (issue 25).

The hostile upstream's `/leaky` tool result holds the issue's `{"client_secret": …,
"token": …, "Password": …, "apiKey": …}` (as structured content, nested, and as JSON text)
and PII as people write it; nothing of it may reach the client, the store or the flow file.
"""

from __future__ import annotations

import json

from helpers.clients import raw_post
from helpers.configs import ALICE, identity
from helpers.leaks import assert_nothing_leaked
from helpers.upstreams import LEAKY_CLEAR, LEAKY_SECRETS

CONFIG = (
    "version: 1\n"
    + identity("alice")
    + """upstreams:
  - name: hostile
    url: {url}
rules:
  - name: support
    match: {{groups: [support]}}
    action: allow
masking:
  - name: pii
    detectors: [email, phone, credit_card, iban, us_ssn]
    phone_regions: [GB, FR]
    strategy: partial
  - name: secrets
    detectors: [generic_secret, google_api_key, gitlab_token]
    strategy: redact
"""
)
CALL = {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "dump"}}


def spellings(fragment: str) -> list[str]:
    """A fragment as it may be written: as is, and JSON-escaped (`é` as `\\u00e9`)."""
    return list(dict.fromkeys([fragment, json.dumps(fragment)[1:-1]]))


def test_secrets_under_keys_and_realistic_pii_never_leave_in_clear(hostile, gateway_factory):
    gw = gateway_factory(CONFIG.format(url=hostile.url), hostile.url)
    answer = raw_post(gw.url + "/leaky", CALL, ALICE)
    assert answer.status == 200, answer.body
    body = answer.body.decode()
    for fragment in LEAKY_CLEAR:
        for spelled in spellings(fragment):
            assert spelled not in body, fragment
    result = json.loads(body)["result"]
    got = result["structuredContent"]
    assert json.loads(result["content"][0]["text"]) == dict.fromkeys(
        LEAKY_SECRETS, "[REDACTED:generic_secret]"
    )
    assert got["nested"] == {
        "auth": {"Client-Secret": "[REDACTED:generic_secret]"},
        "pin_password": "[REDACTED:generic_secret]",
    }
    assert got["idn_email"] == "j***@example.com"  # never `josé.garcí***@example.com`
    assert got["url_email"] == got["entity_email"].replace("b", "a", 1) == "a***@example.com"
    assert got["uk_phone"] == "*** **** 0958"
    assert got["fr_phone"] == "** ** ** 67 89"
    assert got["dotted_card"] == "****.****.****.1111"
    assert got["iban"] == "de**-****-****-****-**30-00"
    assert got["ssn"] == "*****9999"
    assert got["header"] == "Authorization: Bearer [REDACTED:generic_secret]"
    assert got["google"] == "[REDACTED:google_api_key]"
    assert got["gitlab"] == "[REDACTED:gitlab_token]"
    assert_nothing_leaked(gw, *(s for f in LEAKY_CLEAR for s in spellings(f)))
