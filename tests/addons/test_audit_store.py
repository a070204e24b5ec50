"""The AuditStore: the one owner of the store. Whoever reads it at start does so when it
opens (a subscription), not because of where it stands in `default_addons()`."""

from __future__ import annotations

import pytest
from mitmproxy import exceptions
from mitmproxy.test import taddons

from helpers.configs import identity
from helpers.flows import UPSTREAM_URL, write_config
from holdgate import store
from holdgate.addons import default_addons
from holdgate.addons.audit_store import AuditStore
from holdgate.addons.config_loader import ConfigLoader
from holdgate.addons.pipeline import Pipeline
from holdgate.addons.replicas import Replicas
from holdgate.addons.tool_pinning import ToolPinning

CONFIG = (
    "version: 1\n"
    + identity("alice")
    + f"""upstreams:
  - name: crm
    url: {UPSTREAM_URL}
rules: []
"""
)


def services_last(kinds: tuple[type, ...]) -> list[object]:
    """The gateway's own addons of `kinds`, with the AuditStore placed after them."""
    addons = default_addons()
    chosen = [a for a in addons if isinstance(a, (ConfigLoader, *kinds))]
    return [*chosen, *(a for a in addons if isinstance(a, AuditStore))]


def test_the_stages_that_read_the_store_at_start_get_it_whatever_their_order(tmp_path):
    stages = services_last((Replicas, ToolPinning))
    pipeline = Pipeline(stages)
    with taddons.context(pipeline) as tctx:
        tctx.options.update(
            holdgate_config=write_config(tmp_path, CONFIG),
            holdgate_store=str(tmp_path / "audit.sqlite3"),
            holdgate_replica="a",
        )
        (replicas,) = [s for s in stages if isinstance(s, Replicas)]
        (audit,) = [s for s in stages if isinstance(s, AuditStore)]
        assert replicas.replica == "a"
        assert [row["replica"] for row in audit.store().replicas()] == ["a"]
        audit.close()  # the store closes: the replica marks itself gone first
    with store.open_store(tmp_path / "audit.sqlite3") as db:
        assert db.replicas()[0]["gone"]


def test_the_audit_writer_is_a_process_unless_a_thread_is_chosen(tmp_path):
    addons = default_addons()
    (audit,) = [a for a in addons if isinstance(a, AuditStore)]
    with taddons.context(Pipeline(addons)) as tctx:
        tctx.options.update(
            holdgate_config=write_config(tmp_path, CONFIG),
            holdgate_store=str(tmp_path / "audit.sqlite3"),
            holdgate_recordings="",
            holdgate_admin="",
        )
        assert isinstance(audit.writer, store.AuditWriter) and audit.writer.healthy
        tctx.options.update(holdgate_audit_writer="process")  # the store is opened again
        assert isinstance(audit.writer, store.ProcessAuditWriter) and audit.writer.healthy
        with pytest.raises(exceptions.OptionsError, match="holdgate_audit_writer"):
            tctx.options.update(holdgate_audit_writer="fork")
        audit.close()
