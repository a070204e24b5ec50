"""Every mistake of a config file in one pass (issue 15, item 4): each item of each section
is checked on its own, the errors come in file order, one per line, and an item that failed
is not blamed a second time by whatever refers to it."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from holdgate.cli.main import main
from holdgate.config.gateway_config import load_config, parse_config_text
from holdgate.configfile import ConfigError, ConfigErrors, parse_yaml
from holdgate.identity import parse_identity
from holdgate.masking.masker import parse_masking
from holdgate.policy.rules import parse_rules

GOOD_KEY = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"

# One mistake in each section, and references to items that failed (which must not be
# reported again): rule `reads` names upstream `crm` (bad url), profile `pii` names the
# custom detector `ticket` (bad regex).
SEVERAL = f"""\
version: 1
identity:
  api_keys:
    - name: bot
      sha256: abc
    - name: ok
      sha256: {GOOD_KEY}
upstreams:
  - name: crm
    url: ftp://nowhere
  - name: docs
    url: http://127.0.0.1:9000
    prefix: /docs
rules:
  - name: reads
    match: {{upstream: crm, tol: get_*}}
    action: allow
  - name: docs
    match: {{upstream: docs}}
    action: alow
  - name: crm reads
    match: {{upstream: crm}}
    action: allow
  - name: billing
    match: {{upstream: billing}}
    action: allow
detectors:
  - name: ticket
    regex: "TK-(["
masking:
  - name: pii
    detectors: [email, ticket]
  - name: more
    detectors: [email, phonee]
"""

EXPECTED = [
    "f.yaml:5:7: identity.api_keys[0].sha256: expected 64 hex digits; "
    "make one with `holdgate keys hash KEY`",
    "f.yaml:10:5: upstreams[0].url: expected an http:// or https:// URL with a host",
    "f.yaml:16:28: rules['reads'].match.tol: unknown key 'tol'; did you mean 'tool'?",
    "f.yaml:20:5: rules['docs'].action: expected one of allow, deny, approve; got 'alow'",
    "f.yaml:25:13: rules['billing'].match.upstream: no upstream named 'billing'; known: docs",
    "f.yaml:29:5: detectors[0].regex: invalid regular expression:",
    "f.yaml:34:24: masking['more'].detectors[1]: unknown detector 'phonee'; valid:",
]


def errors_of(text: str, file: str = "f.yaml") -> list[str]:
    with pytest.raises(ConfigErrors) as info:
        parse_config_text(text, file)
    return str(info.value).splitlines()


def test_every_mistake_of_every_section_in_file_order():
    lines = errors_of(SEVERAL)
    assert len(lines) == len(EXPECTED), lines
    for line, expected in zip(lines, EXPECTED, strict=True):
        assert line.startswith(expected), (line, expected)


def test_the_collected_errors_keep_their_positions_and_the_first_ones_fields():
    with pytest.raises(ConfigError) as info:  # existing `except ConfigError` callers still work
        parse_config_text(SEVERAL, "f.yaml")
    error = info.value
    assert isinstance(error, ConfigErrors)
    assert [(e.line, e.column) for e in error.errors] == [
        (5, 7),
        (10, 5),
        (16, 28),
        (20, 5),
        (25, 13),
        (29, 5),
        (34, 24),
    ]
    assert (error.line, error.column, error.key) == (5, 7, "identity.api_keys[0].sha256")
    assert error.report().startswith("7 errors:\nf.yaml:5:7: ")


def test_a_single_mistake_reads_exactly_as_before():
    text = "version: 1\nupstreams: [{name: d, url: 'http://127.0.0.1:1'}]\n"
    text += "rules:\n  - name: x\n    match: {tol: y}\n    action: allow\n"
    with pytest.raises(ConfigErrors) as info:
        parse_config_text(text, "bad.yaml")
    message = "bad.yaml:5:13: rules['x'].match.tol: unknown key 'tol'; did you mean 'tool'?"
    assert str(info.value) == message
    assert info.value.report() == message


def test_several_unknown_keys_of_one_mapping_and_a_missing_one_are_all_named():
    text = "version: 1\nupstreams: [{name: d}]\nrules:\n  - nam: x\n    match: {tol: y, metod: z}\n"
    text += "    action: allow\n"
    assert errors_of(text) == [
        "f.yaml:4:5: rules[0].nam: unknown key 'nam'; did you mean 'name'?",
        "f.yaml:4:5: rules[0]: missing required key 'name'",
        "f.yaml:5:13: rules[0].match.tol: unknown key 'tol'; did you mean 'tool'?",
        "f.yaml:5:21: rules[0].match.metod: unknown key 'metod'; did you mean 'method'?",
    ]
    text = (
        "version: 1\nupstreams: [{name: d}]\nrules:\n  - name: x\n    match: {tol: y, metod: z}\n"
    )
    text += "    action: allow\n"
    assert errors_of(text) == [
        "f.yaml:5:13: rules['x'].match.tol: unknown key 'tol'; did you mean 'tool'?",
        "f.yaml:5:21: rules['x'].match.metod: unknown key 'metod'; did you mean 'method'?",
    ]


def test_top_level_mistakes_do_not_stop_the_sections():
    text = "version: 2\nrulez: []\nupstreams: [{name: d, url: nope}]\n"
    assert errors_of(text) == [
        "f.yaml:1:1: version: only `version: 1` is supported",
        "f.yaml:2:1: rulez: unknown key 'rulez'; did you mean 'rules'?",
        "f.yaml:3:23: upstreams[0].url: expected an http:// or https:// URL with a host",
    ]


def test_a_yaml_syntax_error_is_one_error():
    assert errors_of("version: 1\nrules: [\n  - a: b\n") == [
        "f.yaml:3:3: not valid YAML: expected the node content, but found '-'"
    ]


def test_no_follow_on_errors_from_items_that_failed(monkeypatch):
    monkeypatch.delenv("HG_TEST_MISSING", raising=False)
    text = """\
version: 1
hash_key: ${env:HG_TEST_MISSING}
upstreams:
  - name: crm
    url: http://127.0.0.1:1
    inject: {headers: {Authorization: "Bearer ${env:HG_TEST_MISSING}"}}
rules:
  - name: crm
    match: {upstream: crm}
    action: allow
masking:
  - name: hashed
    detectors: [email]
    strategy: hash
"""
    # The upstream and the hash_key fail on their secret; the rule naming `crm` and the
    # profile hashing with the key are not blamed for it.
    assert errors_of(text) == [
        "f.yaml:2:1: hash_key: environment variable HG_TEST_MISSING is not set; "
        "export it before start",
        "f.yaml:6:24: upstreams[0].inject.headers.Authorization: environment variable "
        "HG_TEST_MISSING is not set; export it before start",
    ]


def test_an_unreadable_upstreams_list_blames_no_rule():
    text = "version: 1\nupstreams: {name: crm}\nrules:\n  - name: r\n    match: {upstream: crm}\n"
    text += "    action: allow\n"
    assert errors_of(text) == ["f.yaml:2:1: upstreams: expected a list, got a mapping"]


def test_identity_entries_are_checked_one_by_one_without_a_spurious_empty_section():
    text = (
        "identity:\n  api_keys:\n    - name: a\n      sha256: abc\n"
        "  trusted_header:\n    from: [not-an-ip]\n    user: X-U\n"
    )
    with pytest.raises(ConfigErrors) as info:
        parse_identity(parse_yaml(text, "id.yaml").root.child("identity"))
    assert [(e.line, e.key) for e in info.value.errors] == [
        (4, "identity.api_keys[0].sha256"),
        (6, "identity.trusted_header.from[0]"),
    ]  # and not "configure at least one of oidc, api_keys, trusted_header"


def test_section_parsers_alone_raise_all_their_mistakes():
    rules = "rules:\n  - name: a\n    action: alow\n    match: {}\n  - name: b\n    match: {}\n"
    rules += "    action: allow\n  - name: b\n    match: {}\n    action: deny\n"
    with pytest.raises(ConfigErrors) as info:
        parse_rules(parse_yaml(rules, "r.yaml").root.child("rules"))
    assert [e.message for e in info.value.errors] == [
        "expected one of allow, deny, approve; got 'alow'",
        "rule name 'b' is used twice; names must be unique",
    ]
    masking = "masking:\n  - name: a\n    detectors: [nope]\n  - name: b\n  - name: c\n"
    masking += "    detectors: [email]\n    strategy: hash\n"
    root = parse_yaml(masking, "m.yaml").root
    with pytest.raises(ConfigErrors) as info:
        parse_masking(root.child("masking"), root.child("detectors"))
    assert [e.line for e in info.value.errors] == [3, 4, 7]


def test_policy_check_prints_every_error_and_exits_1(tmp_path):
    bad = tmp_path / "several.yaml"
    bad.write_text(SEVERAL)
    result = CliRunner().invoke(main, ["policy", "check", str(bad)])
    assert result.exit_code == 1
    lines = result.output.splitlines()
    assert lines[0] == "Error: 7 errors:"
    assert len(lines) == 1 + len(EXPECTED)
    for line, expected in zip(lines[1:], EXPECTED, strict=True):
        assert line.startswith(expected.replace("f.yaml", str(bad))), (line, expected)


def test_load_config_raises_config_errors_for_an_unreadable_file(tmp_path):
    with pytest.raises(ConfigErrors, match="cannot read the file"):
        load_config(tmp_path / "absent.yaml")


def test_a_credential_in_an_upstream_url_is_refused():
    """It would be shown wherever the upstream is named (a 502 naming it, the record)."""
    text = "version: 1\nupstreams: [{name: d, url: 'https://svc:T0ken@mcp.internal/mcp'}]\n"
    (error,) = errors_of(text)
    assert error.startswith("f.yaml:2:23: upstreams[0].url: a user or password in the URL")
    assert "T0ken" not in error


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "version: 1\nupstreams:\n  - name: d\n    prefx: /d\n    url: ftp://x\n",
            [
                "f.yaml:4:5: upstreams[0].prefx: unknown key 'prefx'; did you mean 'prefix'?",
                "f.yaml:5:5: upstreams[0].url: expected an http:// or https:// URL with a host",
            ],
        ),
        (
            "version: 1\nupstreams: [{name: d}]\nidentity:\n  api_keys:\n"
            "    - {name: a, sha256: abc, group: [x]}\n",
            [
                "f.yaml:5:17: identity.api_keys[0].sha256: expected 64 hex digits; "
                "make one with `holdgate keys hash KEY`",
                "f.yaml:5:30: identity.api_keys[0].group: unknown key 'group'; "
                "did you mean 'groups'?",
            ],
        ),
        (
            "version: 1\nupstreams: [{name: d}]\nfeeds:\n"
            "  - {name: s, webhook: 'https://x.example/', secrt: x, batch: 0}\n",
            [
                "f.yaml:4:46: feeds[0].secrt: unknown key 'secrt'; did you mean 'secret'?",
                "f.yaml:4:56: feeds[0].batch: expected a number of rows from 1 to 10000, e.g. 100",
            ],
        ),
        (
            'version: 1\nupstreams: [{name: d}]\ndetectors:\n  - {name: t, regex: "TK-([", '
            "placeholdr: x}\n",
            [
                "f.yaml:4:15: detectors[0].regex: invalid regular expression: unterminated "
                "character set at position 4",
                "f.yaml:4:31: detectors[0].placeholdr: unknown key 'placeholdr'; valid keys: "
                "name, regex, validator",
            ],
        ),
    ],
    ids=["upstream", "api_key", "feed", "detector"],
)
def test_an_unknown_key_does_not_hide_a_bad_value_in_the_same_item(text, expected):
    """The key check stopped the item: `prefx:` hid the bad `url:` beside it."""
    assert errors_of(text) == expected
