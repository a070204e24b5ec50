"""ConfigLoader in process: the config loads once, reloads on change, keeps the last good
one, and every version is on record; bad options stop the gateway with a message."""

import os

import pytest
from mitmproxy.exceptions import OptionsError

from helpers.configs import ALICE, identity
from helpers.flows import UPSTREAM_URL, call, find, finish, gateway, mcp_flow, send, store_rows
from holdgate.addons.authentication import Authentication
from holdgate.addons.config_loader import ConfigLoader
from holdgate.addons.enforcement import PolicyEnforcer
from holdgate.addons.recorder import Recorder
from holdgate.addons.router import Router

pytestmark = pytest.mark.anyio

CONFIG = (
    "version: 1\n"
    + identity("alice")
    + f"""upstreams:
  - name: crm
    url: {UPSTREAM_URL}
rules:
  - name: reads
    match: {{tool: [{{tools}}]}}
    action: allow
"""
)
CHAIN = (Router, Authentication, PolicyEnforcer, Recorder)


def config(tools: str) -> str:
    return CONFIG.replace("{tools}", tools)


async def allowed(tctx, tool: str) -> bool:
    return (await send(tctx, mcp_flow(call(tool), ALICE))).response is None


def versions(folder) -> list[str]:
    return [r["outcome"] for r in store_rows(folder, "select outcome from config_versions")]


def rewrite(path, text: str) -> None:
    """A new version of the file, with a new modification time for the watcher."""
    with open(path, "w") as fh:
        fh.write(text)
    stat = os.stat(path)
    os.utime(path, (stat.st_atime, stat.st_mtime + 5))


async def test_a_good_reload_takes_over_and_a_bad_one_keeps_the_last_good(tmp_path):
    with gateway(tmp_path, config("search"), *CHAIN) as tctx:
        path = tctx.options.holdgate_config
        loader = find(tctx, ConfigLoader)
        assert not await allowed(tctx, "get_customer")
        rewrite(path, config("get_customer"))
        await loader.reload_if_changed()
        assert await allowed(tctx, "get_customer")
        rewrite(path, config("get_customer") + "  - name: broken\n    match: {tol: x}\n")
        await loader.reload_if_changed()
        assert await allowed(tctx, "get_customer")  # still the last good one
        finish(tctx)
    assert versions(tmp_path) == ["loaded", "reloaded", "rejected"]


async def test_an_unchanged_file_is_not_reloaded(tmp_path):
    with gateway(tmp_path, config("search"), *CHAIN) as tctx:
        await find(tctx, ConfigLoader).reload_if_changed()
        finish(tctx)
    assert versions(tmp_path) == ["loaded"]


def test_a_bad_config_stops_the_gateway_naming_file_line_and_key(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "version: 1\nupstreams: [{name: d, url: 'http://127.0.0.1:1'}]\n"
        "rules:\n  - name: x\n    match: {tol: y}\n    action: allow\n"
    )
    with gateway(tmp_path, config("search"), Router) as tctx:
        loader = find(tctx, ConfigLoader)
        with pytest.raises(OptionsError, match=r"bad.yaml:5:13: .*did you mean 'tool'\?"):
            tctx.configure(loader, holdgate_config=str(bad))


@pytest.mark.parametrize("value", ["12q", "0", "-1k"])
def test_a_max_body_that_is_no_size_is_refused(tmp_path, value):
    with gateway(tmp_path, config("search"), Router) as tctx:
        with pytest.raises(OptionsError, match="holdgate_max_body: .* is not a size"):
            tctx.configure(find(tctx, ConfigLoader), holdgate_max_body=value)


def test_max_body_tightens_mitmproxys_own_limit(tmp_path):
    with gateway(tmp_path, config("search"), Router) as tctx:
        tctx.options.add_option("body_size_limit", str | None, None, "mitmproxy's own limit")
        tctx.configure(find(tctx, ConfigLoader), holdgate_max_body="1k")
        assert tctx.options.body_size_limit == "1024"  # bodies are cut while read


OPEN_ENDED = """version: 1
upstreams:
  - name: anywhere
    inject: {headers: {Authorization: "Bearer secret"}}
rules: []
"""


def test_credentials_for_an_open_ended_upstream_stop_a_regular_proxy(tmp_path):
    (tmp_path / "open.yaml").write_text(OPEN_ENDED)
    with gateway(tmp_path, config("search"), Router) as tctx:
        loader = find(tctx, ConfigLoader)
        with pytest.raises(OptionsError, match="injects credentials but has no `url` or `host`"):
            tctx.configure(loader, holdgate_config=str(tmp_path / "open.yaml"))


def test_the_same_upstream_is_fine_in_reverse_mode(tmp_path):
    (tmp_path / "open.yaml").write_text(OPEN_ENDED)
    with gateway(tmp_path, config("search"), Router) as tctx:
        tctx.options.update(mode=[f"reverse:{UPSTREAM_URL}"])
        loader = find(tctx, ConfigLoader)
        tctx.configure(loader, holdgate_config=str(tmp_path / "open.yaml"))
        assert [u.name for u in loader.current.upstreams] == ["anywhere"]
