"""Evidence from a running gateway: `holdgate backup` copies the store while mitmdump writes
to it (rows in `-wal` included) and the copy verifies with the live store's head; a plain
`cp` of the store file misses the `-wal` rows, and `verify` with the config's signed
checkpoints names the missing tail."""

from __future__ import annotations

import re
import shutil
import sqlite3
import threading
import time
from pathlib import Path

import pytest

from helpers.clients import raw_post
from helpers.configs import ALICE, identity
from helpers.processes import Gateway, holdgate_cli

CONFIG = (
    "version: 1\n"
    + identity("alice")
    + """upstreams:
  - name: echo
    url: {url}
rules:
  - name: everything
    match: {{}}
    action: allow
checkpoints:
  key: "${{file:keys/audit-signing.pem}}"
  every: 0.1s
  witness: checkpoints.log
"""
)
HEAD = re.compile(r"head #(\d+)")


@pytest.fixture
def gateway(tmp_path: Path, hostile, gateway_factory) -> Gateway:
    (tmp_path / "keys").mkdir()
    made = holdgate_cli("keys", "signing", "new", "--out", str(tmp_path / "keys/audit-signing.pem"))
    assert made.returncode == 0, made.stderr
    return gateway_factory(CONFIG.format(url=hostile.url), hostile.url)


class Traffic:
    """Calls through the gateway from a thread until stopped (bounded)."""

    def __init__(self, gw: Gateway) -> None:
        self.gw = gw
        self.stopped = threading.Event()
        self.answered = 0
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        for n in range(5000):
            if self.stopped.is_set():
                return
            call = {"jsonrpc": "2.0", "id": n, "method": "tools/call", "params": {"name": "t"}}
            assert raw_post(self.gw.url + "/mcp", call, ALICE).status == 200
            self.answered += 1

    def stop(self) -> None:
        self.stopped.set()
        self.thread.join(timeout=30)


def live_head(db: Path) -> tuple[int, str]:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        return conn.execute("SELECT seq, row_hash FROM chain_head").fetchone()


def row_hash(db: Path, seq: int) -> str:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        found = conn.execute("SELECT row_hash FROM events WHERE seq = ?", [seq]).fetchone()
    return found[0] if found else ""


def wait_for(predicate, what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def test_a_backup_taken_during_traffic_verifies_with_the_live_head(gateway, tmp_path):
    gw = gateway
    traffic = Traffic(gw)
    try:
        wait_for(lambda: traffic.answered >= 20, "traffic")
        wal = Path(f"{gw.db}-wal")
        assert wal.exists() and wal.stat().st_size > 0  # rows the main file does not hold yet
        out = tmp_path / "evidence" / "during.sqlite3"
        out.parent.mkdir()
        taken = holdgate_cli("backup", str(out), "--store", str(gw.db))
        assert taken.returncode == 0, taken.stdout + taken.stderr
        seq = int(HEAD.search(taken.stdout).group(1))
    finally:
        traffic.stop()
    assert traffic.answered >= 20
    verified = holdgate_cli("verify", "--store", str(out))
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert f"head #{seq}, hash chain intact" in verified.stdout
    copy_head = live_head(out)
    assert copy_head[0] == seq and row_hash(gw.db, seq) == copy_head[1]  # the live chain's

    # Traffic stopped, the gateway still running: a new copy has the live store's head.
    again = holdgate_cli("backup", str(out), "--store", str(gw.db))
    assert again.returncode == 1 and "exists; pass --force" in again.stderr
    forced = holdgate_cli("backup", str(out), "--store", str(gw.db), "--force")
    assert forced.returncode == 0, forced.stderr
    assert live_head(out) == live_head(gw.db)
    assert f"head #{live_head(gw.db)[0]} " in forced.stdout
    assert sorted(p.name for p in out.parent.iterdir()) == ["during.sqlite3"]


def test_a_cp_copy_misses_the_wal_rows_and_verify_with_checkpoints_names_them(gateway, tmp_path):
    gw = gateway
    witness = gw.cwd / "checkpoints.log"
    traffic = Traffic(gw)
    try:
        wait_for(lambda: traffic.answered >= 10, "traffic")
        # What SQLite's auto-checkpoint does once -wal grows past 1000 pages on a busy
        # gateway: the rows so far move to the main file; later ones stay in -wal.
        with sqlite3.connect(gw.db) as conn:
            conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
        wait_for(lambda: traffic.answered >= 30, "more traffic")
    finally:
        traffic.stop()
    wait_for(
        lambda: witness.exists() and f'"seq":{live_head(gw.db)[0]},' in witness.read_text(),
        "a checkpoint of the head",
    )
    copy = tmp_path / "copy.sqlite3"
    shutil.copyfile(gw.db, copy)  # what `cp holdgate.sqlite3 copy.sqlite3` does
    alone = holdgate_cli("verify", "--store", str(copy))
    assert alone.returncode == 0  # the chain alone cannot tell: it just ends earlier
    ends = int(HEAD.search(alone.stdout).group(1))
    assert 0 < ends < live_head(gw.db)[0]  # the rows moved to the main file, not the rest
    checked = holdgate_cli("verify", "--store", str(copy), "--config", str(gw.config))
    assert checked.returncode == 1, checked.stdout
    assert f"the store ends at seq {ends}, but line " in checked.stderr
    assert f"seq {ends + 1}..{live_head(gw.db)[0]} are missing" in checked.stderr
    assert "take copies with holdgate backup" in checked.stderr
    live = holdgate_cli("verify", "--store", str(gw.db), "--config", str(gw.config))
    assert live.returncode == 0, live.stderr
    assert "the store reaches the latest checkpoint" in live.stdout
