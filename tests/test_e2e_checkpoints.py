"""Signed checkpoints through a real gateway: mitmdump with a `checkpoints:` config writes a
witness; `holdgate verify --witness` passes, then fails once the store is tampered with; a
purge is explained; the signing key is in nothing the gateway wrote."""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path

import pytest

from helpers.clients import connect
from helpers.configs import ALICE, identity
from helpers.leaks import assert_nothing_leaked
from helpers.processes import holdgate_cli, start_demo, stop

pytestmark = pytest.mark.anyio

CONFIG = (
    "version: 1\n"
    + identity("alice")
    + """upstreams:
  - name: demo
    url: {url}
rules:
  - name: everything
    match: {{}}
    action: allow
checkpoints:
  key: "${{file:keys/audit-signing.pem}}"
  every: 0.2s
  witness: checkpoints.log
"""
)


def wait_for_lines(path: Path, n: int, timeout: float = 10.0) -> list[str]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        lines = path.read_text().splitlines() if path.exists() else []
        if len(lines) >= n:
            return lines
        time.sleep(0.05)
    raise AssertionError(f"{path} has fewer than {n} checkpoints")


@pytest.fixture
def gateway(tmp_path, gateway_factory):
    keys = tmp_path / "keys"
    keys.mkdir()
    made = holdgate_cli("keys", "signing", "new", "--out", str(keys / "audit-signing.pem"))
    assert made.returncode == 0, made.stderr
    demo = start_demo(tmp_path)
    gw = gateway_factory(CONFIG.format(url=demo.url), demo.url)
    yield gw
    stop(demo.proc)


async def calls(gw, n: int) -> None:
    async with connect(gw.url + "/mcp", ALICE, mode="legacy") as client:
        for i in range(n):
            await client.call_tool("get_customer", {"customer_id": 1 + i % 3})


async def test_the_gateway_signs_checkpoints_and_verify_catches_a_recomputed_chain(gateway):
    gw = gateway
    witness = gw.cwd / "checkpoints.log"
    public = str(gw.cwd / "keys" / "audit-signing.pem.pub")
    await calls(gw, 3)
    wait_for_lines(witness, 1)
    await calls(gw, 2)
    stop(gw.proc)  # the shutdown checkpoint signs the last rows
    verify = ["verify", "--db", str(gw.db), "--witness", str(witness), "--public-key", public]
    ok = holdgate_cli(*verify)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "signatures good and every head reproduced" in ok.stdout
    with sqlite3.connect(gw.db) as conn:
        head = conn.execute("SELECT seq FROM chain_head").fetchone()[0]
    assert f"the latest signs seq {head} at" in ok.stdout

    # rewrite an early row and recompute the whole chain with the hashing code
    from holdgate import store

    conn = sqlite3.connect(gw.db, isolation_level=None)
    edited = conn.execute("SELECT min(seq) FROM events").fetchone()[0]
    conn.execute("UPDATE events SET user = 'mallory' WHERE seq = ?", [edited])
    rows = []
    for table in store.CHAINED:
        cursor = conn.execute(f"SELECT * FROM {table}")
        names = [d[0] for d in cursor.description]
        rows += [(r[0], table, dict(zip(names, r, strict=True))) for r in cursor.fetchall()]
    prev = store.GENESIS
    for seq, table, row in sorted(rows, key=lambda item: item[0]):
        content = {k: v for k, v in row.items() if k not in ("prev_hash", "row_hash")}
        digest = store.chain_hash(prev, table, content)
        conn.execute(
            f"UPDATE {table} SET prev_hash = ?, row_hash = ? WHERE seq = ?", [prev, digest, seq]
        )
        prev = digest
    conn.execute("UPDATE chain_head SET row_hash = ?", [prev])
    conn.close()
    assert holdgate_cli("verify", "--db", str(gw.db)).returncode == 0  # the chain alone: fooled
    caught = holdgate_cli(*verify)
    assert caught.returncode == 1
    # The first checkpoint to sign the edited row (one signed before the first call, of the
    # startup's config row only, still holds: the rows it signed did not change).
    signed = [json.loads(line)["seq"] for line in witness.read_text().splitlines()]
    first = next(n for n, seq in enumerate(signed, 1) if seq >= edited)
    assert f"checkpoint #{first} ({witness} line {first})" in caught.stderr
    assert "were changed and the chain recomputed" in caught.stderr


async def test_a_purge_is_explained_and_the_key_never_leaks(gateway):
    gw = gateway
    witness = gw.cwd / "checkpoints.log"
    public = str(gw.cwd / "keys" / "audit-signing.pem.pub")
    await calls(gw, 2)
    before = len(wait_for_lines(witness, 1))
    purge = holdgate_cli("purge", "--db", str(gw.db), "--older-than", "0s", "--recordings",
                         str(gw.recordings))  # fmt: skip
    assert purge.returncode == 0, purge.stderr
    wait_for_lines(witness, before + 1)  # the running gateway signs the purge's head
    await calls(gw, 1)
    pem = (gw.cwd / "keys" / "audit-signing.pem").read_text()
    body = "".join(pem.strip().splitlines()[1:-1])
    assert_nothing_leaked(gw, body, body[:24])  # stops the gateway; the store, log and flows
    result = holdgate_cli(
        "verify", "--db", str(gw.db), "--witness", str(witness), "--public-key", public
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "purged: checkpoints #1.." in result.stdout and "as that record says" in result.stdout
    with sqlite3.connect(gw.db) as conn:
        stored = [c for (c,) in conn.execute("SELECT content FROM config_versions")]
    assert stored and all("${file:keys/audit-signing.pem}" in c for c in stored if c)
