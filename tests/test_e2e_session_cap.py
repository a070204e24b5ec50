"""Issue 25 item 6 through a real mitmdump: one caller cannot make a session and a flow file
per request by naming a new client each time.

Sessionless grouping keys on the client's self-reported `clientInfo`: 200 requests with 200
names made 200 `sessions` rows and 200 flow files. A caller (identity, upstream) has at most
`sessions.grouped_per_caller` (16) open grouped sessions; its further clients share one
overflow session, whose row says so and whose event rows name the client each one sent.
"""

from __future__ import annotations

import json

import pytest

from helpers.clients import raw_post
from helpers.configs import ALICE, BOB
from helpers.processes import stop
from helpers.recordings import read_every_file
from holdgate.config.gateway_config import parse_config_text
from holdgate.configfile import ConfigErrors
from test_e2e_sessionless import CALL_HEADERS, CONFIG, raw_call, rows

pytestmark = pytest.mark.anyio

NAMES = 40


async def test_forty_client_names_make_at_most_seventeen_sessions(demo, gateway_factory):
    gw = gateway_factory(CONFIG.format(url=demo.url), demo.url)
    url = gw.url + "/mcp"
    for n in range(NAMES):
        sent = raw_post(
            url,
            raw_call({"name": f"made-up-{n}", "version": "1"}),
            {
                **ALICE,
                **CALL_HEADERS,
            },
        )
        assert sent.status == 200, sent.body
    # another identity is not pushed into alice's overflow
    bobs = raw_post(url, raw_call({"name": "agent", "version": "1"}), {**BOB, **CALL_HEADERS})
    assert bobs.status == 200
    stop(gw.proc)  # flushes the store and the recordings

    sessions = rows(gw.db, "select * from v_sessions where user = 'alice' order by first_seen")
    assert len(sessions) == 17
    assert [s["kind"] for s in sessions] == ["grouped"] * 16 + ["overflow"]
    assert [s["client"] for s in sessions[:16]] == [f"made-up-{n}/1" for n in range(16)]
    overflow = sessions[16]
    assert overflow["client"] == "made-up-16/1"  # the client that opened it
    assert overflow["events"] == 3 * (NAMES - 16)  # request, response, outcome each
    session_rows = rows(gw.db, "select * from sessions where user = 'alice'")
    assert len(session_rows) == 17
    # every request row of the overflow session names the client it really sent
    requests = rows(
        gw.db,
        "select extra from events where direction = 'request' and session_id = "
        f"'{overflow['session_id']}' order by seq",
    )
    assert [json.loads(r["extra"])["client"] for r in requests] == [
        f"made-up-{n}/1" for n in range(16, NAMES)
    ]
    (bob,) = rows(gw.db, "select * from v_sessions where user = 'bob'")
    assert bob["kind"] == "grouped" and bob["client"] == "agent/1"

    files = read_every_file(gw.recordings)
    assert len(files) == 17 + 1  # alice's 16 + her overflow, and bob's
    assert sum(len(flows) for flows in files.values()) == NAMES + 1


async def test_the_cap_is_the_configured_one(demo, gateway_factory):
    config = CONFIG + "sessions:\n  grouped_per_caller: 2\n"
    gw = gateway_factory(config.format(url=demo.url), demo.url)
    for n in range(5):
        sent = raw_post(
            gw.url + "/mcp", raw_call({"name": f"c{n}", "version": "1"}), {**ALICE, **CALL_HEADERS}
        )
        assert sent.status == 200, sent.body
    stop(gw.proc)
    kinds = [s["kind"] for s in rows(gw.db, "select kind from v_sessions order by first_seen")]
    assert kinds == ["grouped", "grouped", "overflow"]
    assert len(read_every_file(gw.recordings)) == 3


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("0", "expected 1 to 10000"),
        ("100001", "expected 1 to 10000"),
        ("lots", "whole number"),
        ("2.5", "whole number"),
        ("true", "whole number"),
    ],
)
def test_a_bad_cap_is_refused_with_where_and_how(value, expected):
    text = CONFIG.format(url="http://127.0.0.1:9") + f"sessions:\n  grouped_per_caller: {value}\n"
    with pytest.raises(ConfigErrors) as info:
        parse_config_text(text, "gw.yaml")
    message = str(info.value)
    assert "gw.yaml:" in message and "sessions.grouped_per_caller" in message
    assert expected in message


def test_the_default_cap_is_sixteen():
    assert (
        parse_config_text(CONFIG.format(url="http://127.0.0.1:9")).sessions.grouped_per_caller == 16
    )
