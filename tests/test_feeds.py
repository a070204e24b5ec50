"""Audit feeds without a gateway: the `feeds:` config, the JSON records, the sinks against
real receivers on 127.0.0.1, the runner's cursor and lease on both backends, and
`holdgate export --follow` as a subprocess against a store being written."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from helpers.processes import HOLDGATE, free_port
from helpers.receivers import SyslogReceiver, WebhookReceiver
from holdgate import store
from holdgate.config.gateway_config import parse_config_text
from holdgate.configfile import ConfigErrors
from holdgate.feeds.feeds_config import FeedConfig
from holdgate.feeds.records import feed_line, feed_record
from holdgate.feeds.runner import BACKOFF_CAP, FeedRunner, next_backoff
from holdgate.feeds.sinks import SinkDown, SyslogSink, WebhookSink, sign

SECRET = "feed-secret-0123456789abcdef"
BASE = "version: 1\nupstreams:\n  - name: demo\n    url: http://127.0.0.1:1\n"


@pytest.fixture(autouse=True)
def feed_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOLDGATE_FEED_SECRET", SECRET)


@pytest.fixture
def db(where: str) -> Iterator[store.Store]:
    with store.open_store(where) as opened:
        yield opened


def event(n: int, **extra: Any) -> dict[str, Any]:
    return {
        "ts": store.iso(1_800_000_000.0 + n),
        "flow_id": f"f{n}",
        "session_id": "s1",
        "direction": "request",
        "user": "alice",
        "groups": json.dumps(["support", "ops"]),
        "upstream": "demo",
        "method": "tools/call",
        "target": "get_customer",
        "decision": "allow",
        "args_masked": json.dumps({"customer_id": n, "note": "é"}),
        "masked": json.dumps({"email": 1}),
        "extra": json.dumps({"refused": None}),
        "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        **extra,
    }


def append_events(opened: store.Store, count: int, start: int = 0) -> list[int]:
    return [opened.append("events", event(start + i)) for i in range(count)]


def webhook_feed(url: str, **extra: Any) -> FeedConfig:
    port = int(url.split(":")[2].split("/")[0])
    defaults: dict[str, Any] = {"batch": 3, "timeout": 1.0, "secret": SECRET}
    return FeedConfig("siem", "webhook", url, "127.0.0.1", port, "http", **{**defaults, **extra})


def wait_until(check: Any, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.05)


# --- the config ---


def test_feeds_parse_with_their_secret_resolved() -> None:
    config = parse_config_text(
        BASE
        + """feeds:
  - name: siem
    webhook: https://siem.example/holdgate
    secret: "${env:HOLDGATE_FEED_SECRET}"
    batch: 50
    timeout: 2s
  - name: local
    syslog: tcp://127.0.0.1:6514
  - name: dgram
    syslog: udp://[::1]:514
"""
    )
    siem, local, dgram = config.feeds
    assert (siem.kind, siem.host, siem.port, siem.batch, siem.timeout) == (
        "webhook",
        "siem.example",
        443,
        50,
        2.0,
    )
    assert siem.secret == SECRET and SECRET not in repr(siem)
    assert SECRET in config.secrets  # record masking scrubs it if traffic ever carries it
    assert (local.transport, local.host, local.port) == ("tcp", "127.0.0.1", 6514)
    assert (dgram.transport, dgram.host, dgram.shown_target) == ("udp", "::1", "udp://[::1]:514")


def test_every_feed_mistake_is_named_with_its_line_at_once() -> None:
    text = (
        BASE
        + """feeds:
  - name: plain
    webhook: http://siem.example/holdgate
    secret: "${env:HOLDGATE_FEED_SECRET}"
  - name: nosecret
    webhook: https://siem.example/x
  - name: written
    webhook: https://siem.example/x
    secret: hunter2-hunter2-hunter2
  - name: typo
    webhok: https://siem.example/x
  - name: badurl
    webhook: ftp://siem.example/x
    secret: "${env:HOLDGATE_FEED_SECRET}"
  - name: badsyslog
    syslog: 127.0.0.1:514
  - name: both
    syslog: udp://127.0.0.1:514
    webhook: https://siem.example/x
"""
    )
    with pytest.raises(ConfigErrors) as caught:
        parse_config_text(text, "gw.yaml")
    report = str(caught.value)
    expected = [
        ("gw.yaml:7:", "http:// sends the audit trail unencrypted"),
        ("gw.yaml:9:", "missing required key 'secret'"),
        ("gw.yaml:13:", "name the secret, do not write it here"),
        ("gw.yaml:15:", "unknown key 'webhok'; did you mean 'webhook'?"),
        ("gw.yaml:17:", "expected an https:// URL"),
        ("gw.yaml:20:", "expected tcp://HOST:PORT or udp://HOST:PORT"),
        ("gw.yaml:21:", "exactly one of"),
    ]
    for where, what in expected:
        assert any(where in line and what in line for line in report.splitlines()), (where, what)
    assert "hunter2" not in report


def test_a_secret_that_is_not_set_stops_the_config() -> None:
    os.environ.pop("HOLDGATE_FEED_SECRET")
    with pytest.raises(ConfigErrors, match="environment variable HOLDGATE_FEED_SECRET is not set"):
        parse_config_text(
            BASE
            + "feeds:\n  - name: a\n    webhook: https://x.example/\n"
            + '    secret: "${env:HOLDGATE_FEED_SECRET}"\n'
        )


def test_http_to_loopback_is_accepted_for_tests() -> None:
    config = parse_config_text(
        BASE
        + "feeds:\n  - name: a\n    webhook: http://localhost:9/x\n"
        + '    secret: "${env:HOLDGATE_FEED_SECRET}"\n'
    )
    assert config.feeds[0].transport == "http"


# --- records ---


def test_json_columns_become_real_json_and_flat_keeps_the_strings(db: store.Store) -> None:
    seq = db.append("events", event(1))
    row = db.feed_rows(0, 10)[0]
    record = json.loads(feed_line(row))
    assert record["table"] == "events" and record["seq"] == seq
    assert record["groups"] == ["support", "ops"]
    assert record["args_masked"] == {"customer_id": 1, "note": "é"}
    assert record["masked"] == {"email": 1} and record["extra"] == {"refused": None}
    assert record["traceparent"].startswith("00-0af7")
    assert record["row_hash"] == db.row_hashes([seq])[seq]
    flat = feed_record(row, flat=True)
    assert flat["groups"] == '["support", "ops"]'


def test_a_column_that_is_not_json_stays_text() -> None:
    assert feed_record({"seq": 1, "groups": "support"})["groups"] == "support"


# --- sinks against real receivers ---


def test_the_webhook_body_is_signed_and_names_its_seqs() -> None:
    receiver = WebhookReceiver(SECRET).start()
    try:
        WebhookSink(webhook_feed(receiver.url)).send([{"seq": 4}, {"seq": 9}])
    finally:
        receiver.stop()
    (delivery,) = receiver.deliveries
    assert [r["seq"] for r in delivery.records] == [4, 9]
    assert delivery.headers["X-Holdgate-Seq-First"] == "4"
    assert delivery.headers["X-Holdgate-Seq-Last"] == "9"
    assert delivery.headers["X-Holdgate-Feed"] == "siem"
    body = b'{"table":"events","seq":4}\n{"table":"events","seq":9}\n'
    assert delivery.headers["X-Holdgate-Signature"] == sign(SECRET, body)


@pytest.mark.parametrize("mode", ["fail", "hang"])
def test_a_receiver_that_fails_or_hangs_is_down(mode: Any) -> None:
    receiver = WebhookReceiver(SECRET, mode=mode).start()
    try:
        with pytest.raises(SinkDown) as caught:
            WebhookSink(webhook_feed(receiver.url, timeout=0.5)).send([{"seq": 1}])
    finally:
        receiver.stop()
    assert ("HTTP 500" if mode == "fail" else "timed out") in str(caught.value)
    assert SECRET not in str(caught.value)


def test_a_receiver_that_is_not_there_is_down() -> None:
    with pytest.raises(SinkDown, match="http://127.0.0.1:.*/x"):
        WebhookSink(webhook_feed(f"http://127.0.0.1:{free_port()}/x")).send([{"seq": 1}])


@pytest.mark.parametrize("transport", ["tcp", "udp"])
def test_syslog_gets_rfc5424_messages(transport: Any) -> None:
    receiver = SyslogReceiver(transport).start()
    feed = FeedConfig(
        "log", "syslog", receiver.target, "127.0.0.1", receiver.port, transport, timeout=2.0
    )
    sink = SyslogSink(feed)
    try:
        rows = [dict(event(n), seq=n + 1) for n in range(3)]
        sink.send(rows)
        receiver.wait_for({1, 2, 3}, timeout=10)
    finally:
        sink.close()
        receiver.stop()
    first = receiver.messages[0]
    assert (first["pri"], first["version"], first["app"], first["msgid"]) == (
        "110",
        "1",
        "holdgate",
        "audit",
    )
    assert first["timestamp"] == rows[0]["ts"] and first["hostname"] not in ("", "-")
    assert first["record"]["groups"] == ["support", "ops"]
    assert receiver.seqs == [1, 2, 3]


def test_syslog_tcp_that_is_not_there_is_down() -> None:
    port = free_port()
    feed = FeedConfig("log", "syslog", f"tcp://127.0.0.1:{port}", "127.0.0.1", port, "tcp")
    with pytest.raises(SinkDown, match="tcp://127.0.0.1"):
        SyslogSink(feed).send([{"seq": 1, "ts": "x"}])


# --- the runner: cursor, outage, lease ---


def test_backoff_doubles_up_to_its_cap() -> None:
    steps = [next_backoff(0.0)]
    for _ in range(10):
        steps.append(next_backoff(steps[-1]))
    assert steps[:4] == [0.5, 1.0, 2.0, 4.0] and steps[-1] == BACKOFF_CAP


def test_the_runner_delivers_every_row_once_across_an_outage(where: str) -> None:
    receiver = WebhookReceiver(SECRET).start()
    with store.open_store(where) as writer:
        seqs = append_events(writer, 7)
        runner = FeedRunner(
            webhook_feed(receiver.url), lambda: store.open_store(where), "gw-a", poll=0.05
        )
        runner.start()
        try:
            receiver.wait_for(set(seqs))
            receiver.stop()  # outage: rows keep coming, and wait in the store
            seqs += append_events(writer, 5, start=100)
            wait_until(lambda: runner.failures >= 2)
            (cursor,) = writer.feed_cursors()
            assert cursor["seq"] == seqs[6] and "http://127.0.0.1" in cursor["last_error"]
            receiver.start()
            receiver.wait_for(set(seqs))
        finally:
            runner.stop()
            receiver.stop()
        assert receiver.seqs == seqs  # every row once, in order
        (cursor,) = writer.feed_cursors()
        assert cursor["seq"] == seqs[-1] and cursor["last_error"] is None
        assert SECRET not in json.dumps(writer.feed_cursors())


def test_a_restarted_runner_resumes_at_the_cursor(tmp_path: Path) -> None:
    path = str(tmp_path / "audit.sqlite3")
    receiver = WebhookReceiver(SECRET).start()
    try:
        with store.open_store(path) as writer:
            first = append_events(writer, 4)
            runner = FeedRunner(webhook_feed(receiver.url), lambda: store.open_store(path), "a")
            runner.start()
            receiver.wait_for(set(first))
            runner.stop()
            later = append_events(writer, 4, start=10)
            again = FeedRunner(webhook_feed(receiver.url), lambda: store.open_store(path), "b")
            again.start()
            receiver.wait_for(set(later))
            again.stop()
    finally:
        receiver.stop()
    assert receiver.seqs == first + later


def test_garbage_with_2xx_counts_as_taken(tmp_path: Path) -> None:
    path = str(tmp_path / "audit.sqlite3")
    receiver = WebhookReceiver(SECRET, mode="garbage").start()
    with store.open_store(path) as writer:
        seqs = append_events(writer, 2)
        runner = FeedRunner(webhook_feed(receiver.url), lambda: store.open_store(path), "a")
        runner.start()
        try:
            receiver.wait_for(set(seqs))
            wait_until(lambda: writer.feed_cursors()[0]["seq"] == seqs[-1])
        finally:
            runner.stop()
            receiver.stop()


def test_a_failing_receiver_never_moves_the_cursor(tmp_path: Path) -> None:
    path = str(tmp_path / "audit.sqlite3")
    receiver = WebhookReceiver(SECRET, mode="fail").start()
    with store.open_store(path) as writer:
        append_events(writer, 2)
        runner = FeedRunner(webhook_feed(receiver.url), lambda: store.open_store(path), "a")
        runner.start()
        try:
            wait_until(lambda: receiver.refused >= 2)
        finally:
            runner.stop()
            receiver.stop()
        (cursor,) = writer.feed_cursors()
        assert cursor["seq"] == 0 and "HTTP 500" in cursor["last_error"]
        assert receiver.deliveries == [] and receiver.bad_signatures == 0


def test_one_replica_sends_a_feed_and_another_takes_over(where: str) -> None:
    receiver = WebhookReceiver(SECRET).start()
    with store.open_store(where) as writer:
        seqs = append_events(writer, 5)
        a = FeedRunner(webhook_feed(receiver.url), lambda: store.open_store(where), "a", poll=0.05)
        b = FeedRunner(webhook_feed(receiver.url), lambda: store.open_store(where), "b", poll=0.05)
        a.start()
        receiver.wait_for(set(seqs))
        b.start()
        try:
            seqs += append_events(writer, 5, start=10)
            receiver.wait_for(set(seqs))
            assert writer.feed_cursors()[0]["holder"] == "a" and b.sent == 0
            a.stop()  # gives the lease up: b takes over at once
            seqs += append_events(writer, 5, start=20)
            receiver.wait_for(set(seqs))
        finally:
            a.stop()
            b.stop()
            receiver.stop()
        assert receiver.seqs == seqs and b.sent > 0


def test_a_lapsed_lease_is_taken_over(where: str) -> None:
    with store.open_store(where) as opened:
        assert opened.feed_claim("f", "a", lease=60) == 0
        assert opened.feed_claim("f", "b", lease=60) is None
        assert opened.feed_advance("f", "a", 7, lease=0.0)  # a's lease now ends at once
        assert opened.feed_claim("f", "b", lease=60) == 7
        assert not opened.feed_advance("f", "a", 9, lease=60)  # a lost it: no move
        assert opened.feed_cursors()[0]["seq"] == 7


def test_readers_after_the_cursor_never_miss_a_row_of_concurrent_writers(where: str) -> None:
    """seq is assigned under the one write lock and committed before the next is assigned,
    so reading `seq > last` as rows commit skips none (PostgreSQL: the advisory lock)."""
    done = threading.Event()

    def write(name: str) -> None:
        with store.open_store(where) as mine:
            for i in range(40):
                mine.append("events", event(i, user=name))

    writers = [threading.Thread(target=write, args=(f"u{n}",)) for n in range(4)]
    seen: list[int] = []
    with store.open_store(where) as reader:
        for thread in writers:
            thread.start()

        def read() -> None:
            while True:
                finished = done.is_set()
                rows = reader.feed_rows(seen[-1] if seen else 0, 7)
                seen.extend(int(r["seq"]) for r in rows)
                if finished and not rows:
                    return

        follower = threading.Thread(target=read)
        follower.start()
        for thread in writers:
            thread.join(60)
        done.set()
        follower.join(60)
        assert seen == [int(r["seq"]) for r in reader.events()]
    assert len(seen) == 160


# --- holdgate export --follow ---


def follow_process(where: str, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [HOLDGATE, "export", "--follow", "--poll", "0.05", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "HOLDGATE_STORE": where},
    )


def read_lines(proc: subprocess.Popen[str], count: int) -> list[dict[str, Any]]:
    assert proc.stdout is not None
    timer = threading.Timer(60, proc.kill)  # bounded: a stuck follower fails the test
    timer.start()
    try:
        return [json.loads(proc.stdout.readline()) for _ in range(count)]
    finally:
        timer.cancel()


def test_export_follow_resumes_after_the_last_seq_without_gap_or_repeat(where: str) -> None:
    stop_writing = threading.Event()
    with store.open_store(where) as writer:
        append_events(writer, 5)

        def keep_writing() -> None:
            with store.open_store(where) as mine:
                n = 100
                while not stop_writing.is_set() and n < 400:
                    mine.append("events", event(n))
                    n += 1
                    time.sleep(0.005)

        background = threading.Thread(target=keep_writing)
        background.start()
        try:
            first = follow_process(where)
            got = read_lines(first, 20)
            # communicate drains what the follower still prints: with the pipe full, its
            # write would block and it could never see the signal
            first.send_signal(signal.SIGTERM)
            _, err = first.communicate(timeout=30)
            assert first.returncode == 0, err
            resumed = follow_process(where, "--after", str(got[-1]["seq"]))
            got += read_lines(resumed, 20)
            resumed.send_signal(signal.SIGINT)
            resumed.communicate(timeout=30)
            assert resumed.returncode == 0
        finally:
            stop_writing.set()
            background.join(30)
        seqs = [r["seq"] for r in got]
        everything = [r["seq"] for r in writer.events()]
        assert seqs == everything[: len(seqs)]  # in order, none repeated, none skipped
        assert got[0]["groups"] == ["support", "ops"]


def test_export_follow_from_now_prints_only_new_rows(tmp_path: Path) -> None:
    path = str(tmp_path / "audit.sqlite3")
    got_one = threading.Event()
    with store.open_store(path) as writer:
        old = append_events(writer, 3)
        proc = follow_process(path, "--after", "now")

        def keep_writing() -> None:  # until the follower, started at some point, prints one
            with store.open_store(path) as mine:
                for n in range(600):
                    if got_one.wait(0.1):
                        return
                    mine.append("events", event(50 + n))

        background = threading.Thread(target=keep_writing)
        background.start()
        try:
            (line,) = read_lines(proc, 1)
        finally:
            got_one.set()
            background.join(30)
            proc.terminate()
            proc.wait(30)
        assert line["seq"] > old[-1]


def test_export_follow_refuses_options_it_does_not_take(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from holdgate.cli.main import main

    result = CliRunner().invoke(
        main, ["export", "--db", str(tmp_path / "x"), "--follow", "--format", "csv"]
    )
    assert result.exit_code == 2 and "--follow prints JSON lines" in result.output
    result = CliRunner().invoke(main, ["export", "--db", str(tmp_path / "x"), "--after", "abc"])
    assert result.exit_code == 2 and "is not a seq" in result.output


def test_a_row_too_large_for_a_datagram_is_sent_as_a_stub() -> None:
    receiver = SyslogReceiver("udp").start()
    feed = FeedConfig("log", "syslog", receiver.target, "127.0.0.1", receiver.port, "udp")
    huge = dict(event(1, args_masked=json.dumps({"blob": "x" * 70_000})), seq=5, row_hash="ab")
    try:
        SyslogSink(feed).send([huge, dict(event(2), seq=6)])
        receiver.wait_for({5, 6}, timeout=10)
    finally:
        receiver.stop()
    stub, whole = receiver.messages
    assert stub["record"] == {
        "table": "events",
        "seq": 5,
        "ts": huge["ts"],
        "row_hash": "ab",
        "truncated": True,
    }
    assert whole["record"]["groups"] == ["support", "ops"]


# --- the addon's feeds follow the config; holdgate feeds ---


def test_the_addon_runs_exactly_the_configured_feeds(tmp_path: Path) -> None:
    from holdgate.addons.feeds import Feeds

    path = str(tmp_path / "audit.sqlite3")
    first, second = WebhookReceiver(SECRET).start(), WebhookReceiver(SECRET).start()
    addon = Feeds(loader=None)  # type: ignore[arg-type]  # sync() is given the feeds
    addon.store_path, addon.holder = path, "gw/1"
    try:
        with store.open_store(path) as writer:
            seqs = append_events(writer, 3)
            addon.sync((webhook_feed(first.url),))
            running = addon.runners["siem"]
            first.wait_for(set(seqs))
            addon.sync((webhook_feed(first.url),))  # unchanged: the same runner goes on
            assert addon.runners["siem"] is running
            addon.sync((webhook_feed(second.url),))  # changed: restarted, from the cursor
            assert addon.runners["siem"] is not running and not running.alive
            seqs += append_events(writer, 2, start=10)
            second.wait_for(set(seqs[3:]))
            addon.sync(())  # removed: stopped, its cursor kept
            assert addon.runners == {}
            assert writer.feed_cursors()[0]["seq"] == seqs[-1]
    finally:
        addon.shut_down()
        first.stop()
        second.stop()
    assert first.seqs == seqs[:3] and second.seqs == seqs[3:]


def test_holdgate_feeds_shows_cursor_lag_holder_and_error(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from holdgate.cli.main import main

    path = str(tmp_path / "audit.sqlite3")
    with store.open_store(path) as opened:
        empty = CliRunner().invoke(main, ["feeds", "--db", path], catch_exceptions=False)
        assert "no feed has run against this store" in empty.output
        seqs = append_events(opened, 4)
        opened.feed_claim("siem", "gw-a/1", lease=60)
        opened.feed_advance("siem", "gw-a/1", seqs[1], lease=60)
        opened.feed_error("siem", "gw-a/1", "http://127.0.0.1:9/x: HTTP 500")
    result = CliRunner().invoke(main, ["feeds", "--db", path], catch_exceptions=False)
    assert result.exit_code == 0
    line = result.output.strip()
    assert line.startswith(f"siem  seq {seqs[1]}  head {seqs[3]}  lag 2 events  held by gw-a/1")
    assert line.endswith("last error: http://127.0.0.1:9/x: HTTP 500")


def test_holdgate_feeds_head_and_lag_count_the_same_rows(where: str) -> None:
    """A feed sends events only: with other chained rows after the last event, a feed that
    has taken every event is at the head with lag 0 (the chain's head is further on)."""
    from click.testing import CliRunner

    from holdgate.cli.main import main

    with store.open_store(where) as opened:
        seqs = append_events(opened, 3)
        opened.append(
            "config_versions",
            {
                "ts": "2026-12-07T00:00:00Z",
                "config_hash": "c0ffee",
                "source": "x.yaml",
                "outcome": "reloaded",
                "detail": "",
                "content": "",
                "role": "active",
            },
        )
        opened.feed_claim("siem", "gw-a/1", lease=60)
        opened.feed_advance("siem", "gw-a/1", seqs[-1], lease=60)
        assert opened.chain_head()[0] > seqs[-1]
        assert opened.feed_head() == seqs[-1]
    result = CliRunner().invoke(main, ["feeds", "--db", where], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert f"seq {seqs[-1]}  head {seqs[-1]}  lag 0 events" in result.output


def test_a_rules_only_load_reads_no_feed_secret(tmp_path: Path) -> None:
    from holdgate.config.gateway_config import load_config

    os.environ.pop("HOLDGATE_FEED_SECRET")
    path = tmp_path / "gw.yaml"
    path.write_text(
        BASE
        + "feeds:\n  - name: a\n    webhook: https://x.example/\n"
        + '    secret: "${env:HOLDGATE_FEED_SECRET}"\n'
    )
    config = load_config(path, secrets=False)
    assert config.feeds[0].secret is None and config.secrets == ()


def test_a_runner_takes_over_from_a_holder_that_died(tmp_path: Path) -> None:
    path = str(tmp_path / "audit.sqlite3")
    receiver = WebhookReceiver(SECRET).start()
    with store.open_store(path) as opened:
        seqs = append_events(opened, 3)
        assert opened.feed_claim("siem", "crashed/1", lease=1.0) == 0  # and never renewed
        runner = FeedRunner(
            webhook_feed(receiver.url), lambda: store.open_store(path), "b", poll=0.05
        )
        runner.start()
        try:
            receiver.wait_for(set(seqs))
        finally:
            runner.stop()
            receiver.stop()
        assert receiver.seqs == seqs
        assert opened.feed_cursors()[0]["holder"] == "b"
