"""The approval inbox's pure parts (issue 27 item 4): who sees what, the CSRF token, the
same-origin check, the form, and a page where every value is inert."""

from __future__ import annotations

import html.parser
import json

import pytest

from helpers.approvals import approval_request
from holdgate.approvals import inbox
from holdgate.identity import Identity
from holdgate.store import iso

KEY = b"k" * 32
NOW = 1_800_000_000.0
DANA = inbox.Viewer("dana", ("dba",), {"via": "api_key", "key": "dana"})
BOB = inbox.Viewer("bob", ("engineering",), {"via": "api_key", "key": "bob"})
ALICE = inbox.Viewer("alice", ("support", "dba"), {"via": "api_key", "key": "alice"})
FORM = "application/x-www-form-urlencoded"


def row(approval_id: str = "a1", **columns):
    return {"state": "pending", **approval_request(approval_id, NOW, **columns)}


@pytest.mark.parametrize(
    ("identity", "how"),
    [
        (
            Identity("dana", ("dba",), "oidc", issuer="https://idp"),
            {"via": "jwt", "issuer": "https://idp"},
        ),
        (
            Identity("dana", ("dba",), "api_key", name="dana-key"),
            {"via": "api_key", "key": "dana-key"},
        ),
        (
            Identity("dana", ("dba",), "trusted_header"),
            {"via": "trusted_header", "header": "x-user"},
        ),
    ],
)
def test_the_viewer_says_how_they_authenticated(identity, how):
    viewer = inbox.viewer_of(identity, "x-user")
    assert (viewer.user, viewer.groups, dict(viewer.how)) == ("dana", ("dba",), how)


def test_a_token_holds_for_its_viewer_until_it_expires():
    token = inbox.csrf_token(KEY, DANA, NOW)
    assert inbox.csrf_problem(KEY, DANA, token, NOW + 60) is None
    late = inbox.csrf_problem(KEY, DANA, token, NOW + inbox.CSRF_SECONDS)
    assert late is not None and "reload the inbox" in late


@pytest.mark.parametrize(
    ("viewer", "key"),
    [
        (BOB, KEY),  # another person
        (
            inbox.Viewer("dana", ("dba",), {"via": "jwt", "issuer": "https://idp"}),
            KEY,
        ),  # dana by JWT
        (DANA, b"another key"),  # another gateway's key
    ],
)
def test_a_token_made_for_someone_else_does_not_hold(viewer, key):
    token = inbox.csrf_token(KEY, DANA, NOW)
    assert (
        inbox.csrf_problem(key, viewer, token, NOW) == "the form's CSRF token was not made for you"
    )


@pytest.mark.parametrize("token", [None, "", "abc", "123.", ".abc", "12x.ab"])
def test_a_missing_or_malformed_token_does_not_hold(token):
    assert inbox.csrf_problem(KEY, DANA, token, NOW) is not None


def test_a_token_with_its_expiry_moved_does_not_hold():
    expires, _, mac = inbox.csrf_token(KEY, DANA, NOW).partition(".")
    moved = f"{int(expires) + 86400}.{mac}"
    assert inbox.csrf_problem(KEY, DANA, moved, NOW) == "the form's CSRF token was not made for you"


@pytest.mark.parametrize(
    "headers",
    [
        {"sec-fetch-site": ["same-origin"], "origin": ["null"]},  # no-referrer: Origin is null
        {"origin": ["http://inbox.example:8181"], "host": ["inbox.example:8181"]},
        {"origin": ["https://gw.example"], "host": ["127.0.0.1:8181"]},  # approvals.public_url
    ],
)
def test_a_post_from_the_inbox_itself_passes(headers):
    assert inbox.cross_origin_problem(headers, "https://gw.example/") is None


@pytest.mark.parametrize(
    ("headers", "says"),
    [
        ({"sec-fetch-site": ["cross-site"], "origin": ["https://evil.example"]}, "another site"),
        ({"sec-fetch-site": ["same-site"]}, "another site"),
        ({"sec-fetch-site": ["evil\u202e<b>"]}, "(Sec-Fetch-Site: an unknown value)"),
        ({"origin": ["https://evil.example"], "host": ["127.0.0.1:8181"]}, "another origin"),
        ({"origin": ["null"], "host": ["127.0.0.1:8181"]}, "names no origin"),
        ({"host": ["127.0.0.1:8181"]}, "names no origin"),
        ({"sec-fetch-site": ["same-origin", "cross-site"]}, "names no origin"),
    ],
)
def test_a_post_from_elsewhere_or_nowhere_is_refused(headers, says):
    problem = inbox.cross_origin_problem(headers, None)
    assert problem is not None and says in problem


def test_a_decision_form_is_read():
    form = inbox.parse_decision_form(FORM, b"csrf=t&decision=approve&reason=checked+with+ops")
    assert form == inbox.DecisionForm("approved", "checked with ops", "t")
    assert (
        inbox.parse_decision_form(FORM + "; charset=utf-8", b"decision=deny&reason=").reason is None
    )


@pytest.mark.parametrize(
    ("content_type", "body", "says"),
    [
        ("application/json", b'{"decision": "approve"}', "form post"),
        (None, b"decision=approve", "form post"),
        (FORM, b"decision=maybe", "approve or deny"),
        (FORM, b"csrf=t", "approve or deny"),
        (FORM, b"decision=approve&decision=deny", "once"),
        (FORM, b"decision=approve&approver=dana", "other than"),
        (FORM, b"decision=approve&reason=" + b"x" * 1001, "longer than"),
        (FORM, b"decision=approve&reason=\xff", "UTF-8"),
        (FORM, b"&".join(b"f%d=1" % i for i in range(20)), "form"),
    ],
)
def test_anything_else_is_a_form_error(content_type, body, says):
    with pytest.raises(inbox.FormError, match=says):
        inbox.parse_decision_form(content_type, body)


def test_an_approver_decides_what_their_groups_may_and_never_their_own():
    rows = [
        row("a1"),  # alice asks, dba decides
        row("a2", requester="dana"),  # dana's own request
        row("a3", approvers='["security"]'),  # another group's
        row("a4", expires=iso(NOW - 1)),  # too late
        {**row("a5"), "state": "approved"},  # settled
        row("a6", expires=iso(NOW + 10)),  # soonest to expire: first
    ]
    assert [r["approval_id"] for r in inbox.to_decide(rows, DANA, NOW)] == ["a6", "a1"]
    assert inbox.to_decide(rows, BOB, NOW) == []
    # alice is a dba, but never decides what she asked for
    assert [r["approval_id"] for r in inbox.to_decide(rows, ALICE, NOW)] == ["a2"]
    assert [r["approval_id"] for r in inbox.own_requests(rows, ALICE)] == [
        "a6",
        "a5",
        "a4",
        "a3",
        "a1",
    ]


class _Collector(html.parser.HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)

    def handle_data(self, data):
        self.text.append(data)


def test_every_value_on_the_page_is_inert():
    hostile = "<script>alert(1)</script><img src=x onerror=alert(2)>\"'&"
    rows = [
        row(
            "a1",
            requester=hostile,
            tool=hostile,
            upstream=hostile,
            rule=hostile,
            args_masked=json.dumps({"query": hostile}),
            changes=json.dumps([f"$.{hostile} changed"]),
            approvers=json.dumps(["dba", hostile]),
        )
    ]
    page = inbox.inbox_page(inbox.to_decide(rows, DANA, NOW), [], DANA, "t", notice=hostile)
    parsed = _Collector()
    parsed.feed(page)
    assert "script" not in parsed.tags and "img" not in parsed.tags
    text = "".join(parsed.text)
    assert text.count(hostile) >= 6  # shown as text: requester, rule, notice, groups...
    assert '"query": "<script>alert(1)</script>' in text  # the arguments, as text


def test_no_value_can_reorder_or_hide_what_the_approver_reads():
    """A right-to-left override shows `DROP TABLE users` as what looks like something else,
    a zero-width joiner or a line separator hides between letters: each is shown as its
    escape, in names and in the arguments alike."""
    reorder = "SELECT 1 -- \u202esresu ELBAT PORD\u200d\u2028"
    rows = [row("a1", tool=reorder, args_masked=json.dumps({"query": reorder}))]
    page = inbox.inbox_page(inbox.to_decide(rows, DANA, NOW), [], DANA, "t")
    assert not any(char in page for char in "\u202e\u200d\u2028")
    assert page.count("SELECT 1 -- \\u202esresu ELBAT PORD\\u200d\\u2028") == 2


def test_the_page_style_matches_the_policys_hash():
    import base64
    import hashlib
    import re

    page = inbox.inbox_page([], [], DANA, "t")
    style = re.search(r"<style>(.*?)</style>", page, re.S)
    assert style is not None
    digest = base64.b64encode(hashlib.sha256(style.group(1).encode()).digest()).decode()
    policy = dict(inbox.PAGE_HEADERS)["Content-Security-Policy"]
    assert f"'sha256-{digest}'" in policy
    assert "script-src" not in policy and "default-src 'none'" in policy
