"""The Checkpointer addon and its witnesses: a file, syslog over UDP, a webhook; a witness that
is down is logged, counted and caught up on, never failing anything."""

from __future__ import annotations

import json
import logging
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from holdgate import store
from holdgate.addons.checkpointer import Checkpointer
from holdgate.config.checkpoints_config import CheckpointsConfig, Witness
from holdgate.store.checkpoints import key_id, parse_checkpoint, read_witness, verify_witness

KEY = Ed25519PrivateKey.generate()


def settings(witness: Witness, key: Ed25519PrivateKey = KEY) -> CheckpointsConfig:
    return CheckpointsConfig(witness, every=0.05, key=key, key_id=key_id(key.public_key()))


def checkpointer(path: Path, witness: Witness) -> Checkpointer:
    loader = SimpleNamespace(current=SimpleNamespace(checkpoints=settings(witness)))
    addon = Checkpointer(loader)  # type: ignore[arg-type]
    addon.use_store(str(path))
    return addon


@pytest.fixture
def db(tmp_path: Path) -> Iterator[store.SqliteStore]:
    with store.SqliteStore(tmp_path / "audit.sqlite3") as opened:
        yield opened


def test_a_file_witness_gets_one_line_per_moved_head(tmp_path: Path, db: store.SqliteStore) -> None:
    witness = tmp_path / "checkpoints.log"
    addon = checkpointer(Path(db.path), Witness("file", str(witness)))
    addon.tick()
    assert not witness.exists()  # an empty store: nothing to sign
    db.append("events", {"user": "a"})
    addon.tick()
    addon.tick()  # unmoved: nothing new
    db.append("events", {"user": "b"})
    addon.shut_down()  # at shutdown, the head moved: signed
    lines = read_witness(witness)
    assert [w.checkpoint.seq for w in lines if w.checkpoint] == [1, 2]
    assert verify_witness(db, lines, [KEY.public_key()]).ok
    assert addon.written == 2 and addon.failures == 0


def test_a_rotated_key_in_a_reloaded_config_starts_a_new_run(
    tmp_path: Path, db: store.SqliteStore
) -> None:
    witness = Witness("file", str(tmp_path / "checkpoints.log"))
    addon = checkpointer(Path(db.path), witness)
    db.append("events", {"user": "a"})
    addon.tick()
    new_key = Ed25519PrivateKey.generate()
    addon.loader.current.checkpoints = settings(witness, new_key)  # type: ignore[attr-defined]
    addon.tick()  # the head did not move, but the new key signs it: a new run starts
    addon.shut_down()
    lines = read_witness(witness.target)
    assert [(w.checkpoint.seq, w.checkpoint.key) for w in lines if w.checkpoint] == [
        (1, key_id(KEY.public_key())),
        (1, key_id(new_key.public_key())),
    ]
    report = verify_witness(db, lines, [KEY.public_key(), new_key.public_key()])
    assert report.ok and len(report.runs) == 2


def test_the_syslog_witness_sends_rfc5424_over_udp(tmp_path: Path, db: store.SqliteStore) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as server:
        server.bind(("127.0.0.1", 0))
        server.settimeout(5)
        port = server.getsockname()[1]
        addon = checkpointer(
            Path(db.path), Witness("syslog", f"127.0.0.1:{port}", "127.0.0.1", port)
        )
        db.append("events", {"user": "a"})
        addon.tick()
        message = server.recv(65536).decode()
        addon.shut_down()
    header, _, body = message.partition(" - ")
    assert header.startswith("<110>1 ") and header.endswith(
        " holdgate " + header.split()[4] + " checkpoint"
    )
    assert parse_checkpoint(body).seq == 1
    assert parse_checkpoint(message).seq == 1  # a collector's line is read as it is


class Hook:
    """A webhook that fails its first `failures` requests."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.received: list[dict[str, Any]] = []
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                if hook.failures > 0:
                    hook.failures -= 1
                    self.send_response(503)
                else:
                    hook.received.append(json.loads(body))
                    self.send_response(204)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/checkpoints"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_the_webhook_retries_with_backoff(tmp_path: Path, db: store.SqliteStore) -> None:
    hook = Hook(failures=2)
    try:
        addon = checkpointer(Path(db.path), Witness("webhook", hook.url))
        db.append("events", {"user": "a"})
        addon.tick()  # 503, 503, then taken: within one delivery
        assert [c["seq"] for c in hook.received] == [1] and addon.failures == 0
        addon.shut_down()
    finally:
        hook.close()


def test_a_witness_that_is_down_is_logged_counted_and_caught_up(
    tmp_path: Path, db: store.SqliteStore, caplog: pytest.LogCaptureFixture
) -> None:
    hook = Hook(failures=6)  # two deliveries of three attempts each fail
    try:
        addon = checkpointer(Path(db.path), Witness("webhook", hook.url))
        with caplog.at_level(logging.ERROR, "holdgate"):
            db.append("events", {"user": "a"})
            addon.tick()
            db.append("events", {"user": "b"})
            addon.tick()
        assert addon.failures == 2 and [c.seq for c in addon.unsent] == [1, 2]
        errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
        assert len(errors) == 1 and "checkpoint witness failed (" in errors[0]
        addon.tick()  # back: the unsent ones go first, in order
        assert [c["seq"] for c in hook.received] == [1, 2] and not addon.unsent
        addon.shut_down()
    finally:
        hook.close()


def test_an_unwritable_file_witness_fails_nothing(tmp_path: Path, db: store.SqliteStore) -> None:
    addon = checkpointer(Path(db.path), Witness("file", str(tmp_path / "no-such-dir" / "cp.log")))
    db.append("events", {"user": "a"})
    addon.tick()
    assert addon.failures == 1 and len(addon.unsent) == 1
    (tmp_path / "no-such-dir").mkdir()
    addon.tick()
    assert addon.written == 1 and not addon.unsent
    addon.shut_down()


def test_the_thread_checkpoints_every_interval(tmp_path: Path, db: store.SqliteStore) -> None:
    witness = tmp_path / "checkpoints.log"
    addon = checkpointer(Path(db.path), Witness("file", str(witness)))
    addon.running()
    try:
        db.append("events", {"user": "a"})
        deadline = threading.Event()
        for _ in range(100):
            if witness.exists() and witness.read_text():
                break
            deadline.wait(0.05)
        assert read_witness(witness)[0].checkpoint.seq == 1  # type: ignore[union-attr]
    finally:
        addon.shut_down()
