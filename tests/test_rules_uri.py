"""Conditions an argument must not slip past: URI normal form, `*` stopping at `/`,
whole-value regexes, `path_under`, and conditions over several values (issue 13, item 10)."""

import json
import posixpath
from dataclasses import dataclass
from urllib.parse import unquote

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from holdgate.configfile import ConfigError, parse_yaml
from holdgate.policy.rules import Policy, parse_rules, path_verdict
from holdgate.protocol.jsonrpc import parse_body
from holdgate.protocol.uris import AmbiguousValue, normalise_uri


@dataclass(frozen=True)
class Caller:
    user: str = "erin"
    groups: tuple[str, ...] = ("eng",)
    method: str = "api_key"


ERIN = Caller()


def policy(text: str) -> Policy:
    return parse_rules(parse_yaml(text, "t.yaml").root.child("rules"))


def msg(method: str, **params):
    raw = {"jsonrpc": "2.0", "id": 1, "method": method, "params": params}
    return parse_body(json.dumps(raw).encode(), max_bytes=1 << 20).messages[0]


def read(uri: str):
    return msg("resources/read", uri=uri)


def call(tool: str, **args):
    return msg("tools/call", name=tool, arguments=args)


def decide(p: Policy, message) -> tuple[str, str]:
    decision = p.evaluate(ERIN, "fs", message)
    return decision.action, decision.rule


PUBLIC = policy("""
rules:
  - name: public files
    match: {resource: "file:///srv/public/*"}
    action: allow
""")

# A deny glob with a broad allow after it: the deny must not be slipped past either.
SECRET_DENIED = policy("""
rules:
  - name: no secrets
    match: {resource: "file:///srv/secret/**"}
    action: deny
  - name: reads
    match: {method: resources/read}
    action: allow
""")


@pytest.mark.parametrize(
    ("uri", "rule"),
    [
        # the reproductions, decided with `holdgate policy explain` as allowed
        ("file:///srv/public/../secret/keys.pem", "default-deny"),
        ("file:///srv/public/%2e%2e/secret/keys.pem", "ambiguous-uri"),
        ("file:///srv/public/./../../etc/passwd", "default-deny"),
        # and their relatives
        ("file:///srv/public/%2E%2E/secret/keys.pem", "ambiguous-uri"),
        ("file:///srv/public/.%2e/secret/keys.pem", "ambiguous-uri"),
        ("file:///srv/public/..%2fsecret%2fkeys.pem", "ambiguous-uri"),
        ("file:///srv/public/..%2Fsecret", "ambiguous-uri"),
        ("file:///srv/public/..\\secret\\keys.pem", "ambiguous-uri"),
        ("file:///srv/public/keys.pem%00.txt", "ambiguous-uri"),
        ("file:///srv/public/keys.pem\x00.txt", "ambiguous-uri"),
        ("file:///srv/public/%252e%252e/secret", "ambiguous-uri"),
        ("file:///srv/public//../secret/keys.pem", "ambiguous-uri"),
        ("file:///srv/public/x?/../../../etc/passwd", "ambiguous-uri"),
        ("file:///../../etc/passwd", "ambiguous-uri"),
        (" file:///etc/passwd", "ambiguous-uri"),
        ("file:///srv/public/sub/keys.pem", "default-deny"),  # `*` stops at `/`
        ("file:///srv/publicity/keys.pem", "default-deny"),
    ],
)
def test_resource_glob_is_not_slipped_past(uri, rule):
    assert decide(PUBLIC, read(uri)) == ("deny", rule)


@pytest.mark.parametrize(
    "uri",
    [
        "file:///srv/public/readme.txt",
        "file:///srv/public/./readme.txt",
        "file:///srv/public/sub/../readme.txt",
        "FILE:///srv/public/readme.txt",
        "file:///srv/public/%72eadme.txt",  # an encoded unreserved character
        "file:///srv/public/my%20notes.txt",
    ],
)
def test_resource_glob_allows_what_normalises_inside(uri):
    assert decide(PUBLIC, read(uri)) == ("allow", "public files")


@pytest.mark.parametrize(
    ("uri", "rule"),
    [
        ("file:///srv/secret/keys.pem", "no secrets"),
        ("file:///srv/public/../secret/keys.pem", "no secrets"),
        ("file:///srv/./secret/keys.pem", "no secrets"),
        ("file:///srv/%73ecret/keys.pem", "no secrets"),
        ("file:///srv/public/%2e%2e/secret/keys.pem", "ambiguous-uri"),
        ("file:///srv//secret/keys.pem", "ambiguous-uri"),
    ],
)
def test_deny_glob_is_not_slipped_past(uri, rule):
    assert decide(SECRET_DENIED, read(uri)) == ("deny", rule)


def test_double_star_crosses_slashes_and_single_star_does_not():
    p = policy("""
rules:
  - name: one level
    match: {resource: "repo://docs/*"}
    action: allow
  - name: any depth
    match: {resource: "repo://src/**"}
    action: allow
""")
    assert decide(p, read("repo://docs/a.md")) == ("allow", "one level")
    assert decide(p, read("repo://docs/a/b.md"))[0] == "deny"
    assert decide(p, read("repo://src/a/b/c.py")) == ("allow", "any depth")


def test_tool_and_method_globs_keep_matching_across_slashes():
    p = policy("""
rules:
  - name: notifications
    match: {method: "notifications/*"}
    action: allow
  - name: any method
    match: {method: "*", users: [erin]}
    action: deny
""")
    assert decide(p, msg("notifications/initialized")) == ("allow", "notifications")
    assert decide(p, msg("tools/list")) == ("deny", "any method")


def test_explain_names_the_normalised_uri_and_the_ambiguous_one():
    decision, trace = PUBLIC.explain(ERIN, "fs", read("file:///srv/public/../secret/k"))
    assert trace[0][1][0].detail == (
        "resource 'file:///srv/public/../secret/k' (normalised 'file:///srv/secret/k')"
    )
    decision, trace = PUBLIC.explain(ERIN, "fs", read("file:///srv/public/%2e%2e/k"))
    assert (decision.rule, trace) == ("ambiguous-uri", [])
    assert "an encoded dot segment" in decision.reason


def test_listing_hides_ambiguous_resources():
    assert SECRET_DENIED.may_use(ERIN, "fs", "resources/read", "file:///srv/public/x")
    assert not SECRET_DENIED.may_use(ERIN, "fs", "resources/read", "file:///srv/%2e%2e/x")


SEGMENT = st.sampled_from(
    ["srv", "public", "secret", ".", "..", "%2e", "%2e%2e", ".%2E", "a%2fb", "%41", "", "x y"]
)


@given(st.lists(SEGMENT, max_size=8))
def test_normal_form_is_idempotent_and_never_escapes_what_a_filesystem_resolves(segments):
    uri = "file:///srv/public/" + "/".join(segments)
    try:
        normal = normalise_uri(uri)
    except AmbiguousValue:
        return
    assert normalise_uri(normal) == normal
    assert "/./" not in normal and "/../" not in normal
    # what a server that percent-decodes and lets the OS resolve dot segments would open
    opened = posixpath.normpath(unquote(uri.removeprefix("file://")))
    inside = decide(PUBLIC, read(uri))[0] == "allow"
    if inside:
        assert opened == "/srv/public" or posixpath.dirname(opened) == "/srv/public"


@pytest.mark.parametrize(
    ("value", "action"),
    [
        ("web", "allow"),
        ("api", "allow"),
        ("web\n", "deny"),  # Python's `$` matches before a trailing newline; fullmatch does not
        ("api\n", "deny"),
        ("xweb", "deny"),
        ("web2", "deny"),
        ("", "deny"),
        (["web"], "deny"),
    ],
)
def test_regex_matches_the_whole_value(value, action):
    p = policy("""
rules:
  - name: front ends
    match: {tool: deploy, args: {"$.service": {regex: "^(web|api)$"}}}
    action: allow
""")
    assert decide(p, call("deploy", service=value))[0] == action


@pytest.mark.parametrize(
    ("query", "action"),
    [
        ("DROP TABLE x", "deny"),
        ("select 1;\n drop table x", "deny"),
        ("select dropped_at from t", "allow"),
        ("select 1", "allow"),
    ],
)
def test_search_finds_the_pattern_anywhere(query, action):
    p = policy("""
rules:
  - name: no drop
    match: {tool: run_sql, args: {"$.query": {search: "(?i)\\\\bdrop\\\\b"}}}
    action: deny
  - name: sql
    match: {tool: run_sql}
    action: allow
""")
    assert decide(p, call("run_sql", query=query))[0] == action


PATHS = """
rules:
  - name: no secrets
    match: {tool: read_file, args: {"$.path": {path_under: /srv/secret}}}
    action: deny
  - name: public files
    match: {tool: read_file, args: {"$.path": {path_under: /srv/public}}}
    action: allow
  - name: many files
    match: {tool: read_files, args: {"$.paths[*]": {path_under: /srv/public}}}
    action: allow
"""


@pytest.mark.parametrize(
    ("path", "rule"),
    [
        ("/srv/public/a.txt", "public files"),
        ("/srv/public", "public files"),
        ("/srv/public/", "public files"),
        ("/srv/public/./a.txt", "public files"),
        ("/srv//public/a.txt", "public files"),
        ("/srv/publicity/a.txt", "default-deny"),
        ("/srv/secret/keys.pem", "no secrets"),
        # cannot be decided: fires the deny rule, never passes the allow rule
        ("/srv/public/../secret/keys.pem", "no secrets"),
        ("/srv/public/%2e%2e/secret/keys.pem", "no secrets"),
        ("srv/public/a.txt", "no secrets"),
        ("../secret/keys.pem", "no secrets"),
        ("/srv/public/a.txt\x00", "no secrets"),
        ("/srv/public\\..\\secret", "no secrets"),
        ("~/keys.pem", "no secrets"),
        (42, "no secrets"),
        (["/srv/public/a.txt"], "no secrets"),
    ],
)
def test_path_under(path, rule):
    assert decide(policy(PATHS), call("read_file", path=path))[1] == rule


@pytest.mark.parametrize(
    ("paths", "action"),
    [
        (["/srv/public/a", "/srv/public/b/c"], "allow"),
        (["/srv/public/a", "/etc/passwd"], "deny"),
        (["/srv/public/a", "/srv/public/../secret"], "deny"),
        ([], "deny"),
    ],
)
def test_allow_condition_holds_for_every_value(paths, action):
    assert decide(policy(PATHS), call("read_files", paths=paths))[0] == action


@given(
    st.lists(st.sampled_from(["srv", "public", "secret", ".", "..", "", "%2e%2e", "a"]), max_size=8)
)
@example(["", "srv", "public"])  # `//srv/public`: found by hypothesis
def test_path_under_never_passes_a_path_the_os_resolves_outside(segments):
    value = "/" + "/".join(segments)
    if path_verdict(value, "/srv/public"):
        opened = posixpath.normpath(value)
        assert opened == "/srv/public" or opened.startswith("/srv/public/")


@pytest.mark.parametrize("path", ["//srv/public/a", "///srv/public", "//"])
def test_a_leading_double_slash_is_ambiguous(path):
    # POSIX leaves `//x` to the system; Windows opens `//host/share` on the network
    assert path_verdict(path, "/srv/public") is None


@pytest.mark.parametrize(
    ("text", "where", "fragment"),
    [
        (
            "rules:\n  - name: a\n    match: {resource: 'file:///srv/x/../*'}\n    action: allow\n",
            "t.yaml:3:13",
            "write 'file:///srv/\\*'",
        ),
        (
            "rules:\n  - name: a\n    match: {resource: ['x://a', 'FILE:///x/*']}\n"
            "    action: allow\n",
            "t.yaml:3:33",
            "write 'file:///x/\\*'",
        ),
        (
            "rules:\n  - name: a\n    match: {resource: 'file:///a%2fb/*'}\n    action: allow\n",
            "t.yaml:3:13",
            "can never match: it has an encoded slash",
        ),
        (
            "rules:\n  - name: a\n    match: {args: {'$.p': {path_under: srv}}}\n"
            "    action: allow\n",
            "t.yaml:3:28",
            "absolute path without '..'; 'srv' has a relative path",
        ),
        (
            "rules:\n  - name: a\n    match: {args: {'$.p': {path_under: /srv/../x}}}\n"
            "    action: allow\n",
            "t.yaml:3:28",
            "has a '..' segment",
        ),
        (
            "rules:\n  - name: a\n    match: {args: {'$.p': {path_under: /srv/x/}}}\n"
            "    action: allow\n",
            "t.yaml:3:28",
            "normal form: '/srv/x'",
        ),
        (
            "rules:\n  - name: a\n    match: {args: {'$.p': {regex: a, search: b}}}\n"
            "    action: allow\n",
            "t.yaml:3:20",
            "exactly one of equals, exists, in, path_under, regex, search",
        ),
        (
            "rules:\n  - name: ambiguous-uri\n    match: {}\n    action: allow\n",
            "t.yaml:2:5",
            "reserved",
        ),
    ],
)
def test_config_errors(text, where, fragment):
    with pytest.raises(ConfigError, match=fragment) as info:
        policy(text)
    assert str(info.value).startswith(where)


def warnings_of(action: str, condition: str) -> tuple[str, ...]:
    approvers = "    approvers: [dba]\n" if action == "approve" else ""
    text = (
        f"rules:\n  - name: r\n    match:\n      args:\n        '$.q': {condition}\n"
        f"    action: {action}\n{approvers}"
    )
    return policy(text).warnings


@pytest.mark.parametrize(
    ("action", "condition", "fragment"),
    [
        ("allow", "{search: '^(web|api)$'}", "search: finds the pattern anywhere"),
        ("allow", "{regex: '(?i)select .*'}", "starts or ends with a run of any characters"),
        ("allow", "{regex: '.+@example\\.com'}", "starts or ends with a run of any characters"),
        ("approve", "{regex: '(?i)\\b(drop|delete)\\b'}", "use search:"),
        ("deny", "{regex: '(?i)^(delete|drop)'}", "use search:"),
        ("deny", "{regex: '(?i)(delete|drop).*'}", "without (?s)"),
    ],
)
def test_risky_patterns_warn_with_file_line_and_key(action, condition, fragment):
    (warning,) = warnings_of(action, condition)
    assert warning.startswith("t.yaml:5:17: rules['r'].match.args.$.q.")
    assert ": warning: " in warning and fragment in warning


@pytest.mark.parametrize(
    ("action", "condition"),
    [
        ("allow", "{regex: '^(web|api)$'}"),
        ("allow", "{regex: '(?is)\\s*select\\b[^;]*'}"),
        ("allow", "{regex: '.\\.*x'}"),
        ("deny", "{search: '(?i)\\bdrop\\b'}"),
        ("deny", "{regex: '(?is).*\\bdrop\\b.*'}"),
        ("deny", "{regex: '^(prod|production)$'}"),
        ("allow", "{path_under: /srv}"),
    ],
)
def test_sound_patterns_do_not_warn(action, condition):
    assert warnings_of(action, condition) == ()


def test_long_uris_are_normalised_without_the_cache():
    long = "file:///srv/public/" + "a/" * 3000 + "../" * 3000 + "x"
    assert decide(PUBLIC, read(long)) == ("allow", "public files")
    assert decide(PUBLIC, read(long.replace("/x", "/%2e%2e/x")))[1] == "ambiguous-uri"
