"""Issue 27 item 5: the approvals webhook's formats (generic JSON, Slack incoming webhook),
its config (a Slack URL is a secret reference, never a literal) and its failures (logged
without the URL)."""

from __future__ import annotations

import json
import logging

import pytest

from helpers.approvals import APPROVALS_CONFIG, approval_request
from holdgate.approvals import webhook
from holdgate.config.gateway_config import load_config, parse_config_text
from holdgate.configfile import ConfigErrors

BASE = APPROVALS_CONFIG.format(url="http://127.0.0.1:9", timeout="20s", grant="0s")
HOSTILE = "<!channel> <https://evil.example|click> & more"


def row(**columns):
    return approval_request(
        "a1b2c3",
        1_800_000_000.0,
        args_masked=json.dumps({"query": "DELETE FROM t", "email": "[REDACTED:email]"}),
        **columns,
    )


def test_a_slack_message_says_who_what_until_when_and_links_the_inbox():
    message = webhook.slack_message(row(), "https://gw.example/")
    text = message["text"]
    assert "*Approval requested* by alice: run_sql on db" in text
    assert '"query": "DELETE FROM t"' in text and "[REDACTED:email]" in text
    assert "Expires: " + row()["expires"] in text
    assert "<https://gw.example/inbox#a1b2c3|Decide in the inbox>" in text
    assert message["blocks"][0]["text"] == {"type": "mrkdwn", "text": text}
    assert message["blocks"][1]["elements"][0]["url"] == "https://gw.example/inbox#a1b2c3"


def test_every_value_in_a_slack_message_is_inert():
    hostile = row(requester=HOSTILE, tool=HOSTILE, upstream=HOSTILE, rule=HOSTILE)
    hostile["args_masked"] = json.dumps({"q": HOSTILE})
    hostile["approvers"] = json.dumps([HOSTILE])
    text = webhook.slack_message(hostile, "https://gw.example")["text"]
    # the only control sequence left is the gateway's own link
    assert text.count("<") == 1 and text.count(">") == 1
    assert "&lt;!channel&gt; &lt;https://evil.example|click&gt; &amp; more" in text
    assert text.count("&lt;!channel&gt;") == 6


def test_a_client_cannot_forge_a_line_or_end_the_code_block():
    """A tool name with a newline would add a line of its own to the message ("Rule: …,
    approvers: anyone"), and backticks in the arguments would end their code block and
    show the rest as the gateway's words; both arrive escaped."""
    forged_tool = "run_sql\nRule: read-only reads (approvers: anyone)\u202e"
    breakout = "x```\n*Approved by security: safe to approve*\n```"
    hostile = row(tool=forged_tool)
    hostile["args_masked"] = json.dumps({"query": breakout})
    text = webhook.slack_message(hostile, "https://gw.example")["text"]
    lines = text.split("\n")
    assert [line.split(":")[0] for line in lines[:4]] == [
        "*Approval requested* by alice",
        "Rule",
        "Expires",
        "Arguments (masked)",
    ]
    assert "run_sql\\u000aRule: read-only reads (approvers: anyone)\\u202e on db" in lines[0]
    assert "\u202e" not in text
    assert text.count("```") == 2  # the gateway's own block, opened and closed once
    block = text.split("```")[1]
    assert json.loads(block) == {"query": breakout}  # still the same JSON


def test_the_json_notice_links_the_inbox_too():
    notice = webhook.approval_notice(row(), "http://127.0.0.1:8181")
    assert notice["inbox"] == "http://127.0.0.1:8181/inbox#a1b2c3"
    assert notice["link"] == "http://127.0.0.1:8181/approvals/a1b2c3"


def test_the_plain_string_form_still_works():
    config = parse_config_text(BASE + "approvals:\n  webhook: http://127.0.0.1:9999/hook\n")
    hook = config.approvals.webhook
    assert hook is not None
    assert (hook.url, hook.format, hook.referenced) == ("http://127.0.0.1:9999/hook", "json", False)


def test_a_slack_webhook_from_the_environment(tmp_path, monkeypatch):
    secret = "https://hooks.slack.com/services/T000/B000/XXXXsecretXXXX"
    monkeypatch.setenv("HOLDGATE_TEST_SLACK", secret)
    path = tmp_path / "gw.yaml"
    path.write_text(
        BASE + 'approvals:\n  webhook:\n    url: "${env:HOLDGATE_TEST_SLACK}"\n    format: slack\n'
    )
    config = load_config(path)
    hook = config.approvals.webhook
    assert hook is not None and (hook.url, hook.format) == (secret, "slack")
    assert secret in config.secrets  # never recorded
    assert secret not in config.redacted_text()
    rules_only = load_config(path, secrets=False)
    assert rules_only.approvals.webhook is not None
    assert secret not in rules_only.approvals.webhook.url


@pytest.mark.parametrize(
    ("webhook_yaml", "says"),
    [
        ("webhook: https://hooks.slack.com/services/T0/B0/abc", "is a secret"),
        ("webhook:\n    url: https://hooks.slack.com/services/T0/B0/abc", "is a secret"),
        ("webhook:\n    url: https://chat.example/hook\n    format: slack", "is a secret"),
        (
            "webhook:\n    url: https://x.example/h\n    format: teams",
            "expected one of json, slack",
        ),
        ("webhook:\n    format: slack", "url"),
        ("webhook:\n    url: https://x.example/h\n    colour: red", "colour"),
        ("webhook: http://hooks.internal.example/h", "https://"),
        ("webhook: ftp://127.0.0.1/h", "expected an https:// URL"),
        ("webhook: https://user:pw@x.example/h", "no user info"),
    ],
)
def test_a_careless_webhook_is_a_config_error(webhook_yaml, says):
    with pytest.raises(ConfigErrors) as info:
        parse_config_text(BASE + "approvals:\n  " + webhook_yaml + "\n", "gw.yaml")
    message = str(info.value)
    assert says in message and "gw.yaml:" in message and "approvals.webhook" in message
    if "is a secret" in says:
        assert "${env:HOLDGATE_SLACK_WEBHOOK}" in message  # the fix


def test_an_error_about_a_referenced_url_never_quotes_it(tmp_path, monkeypatch):
    monkeypatch.setenv("HOLDGATE_TEST_HOOK", "http://internal.example/s3cr3t-path")
    path = tmp_path / "gw.yaml"
    path.write_text(BASE + 'approvals:\n  webhook: "${env:HOLDGATE_TEST_HOOK}"\n')
    with pytest.raises(ConfigErrors) as info:
        load_config(path)
    assert "https://" in str(info.value) and "s3cr3t" not in str(info.value)


@pytest.mark.anyio
async def test_a_failure_is_logged_without_the_url(caplog, monkeypatch):
    monkeypatch.setattr(webhook, "WEBHOOK_ATTEMPTS", 2)
    monkeypatch.setattr(webhook.asyncio, "sleep", _no_sleep)
    url = "http://127.0.0.1:9/services/T0/B0/s3cr3t-path"
    with caplog.at_level(logging.WARNING, logger="holdgate"):
        await webhook.notify(url, {"text": "x"}, "a1b2c3")
        await webhook.notify("http://127.0.0.1:bad/s3cr3t-path", {"text": "x"}, "a1b2c3")
    logged = caplog.text
    assert "attempt 1 failed" in logged and "gave up on approval a1b2c3" in logged
    assert "s3cr3t" not in logged and "127.0.0.1" in logged


async def _no_sleep(seconds: float) -> None:
    return None


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"
