"""The Pipeline: mitmproxy sees one addon, the stages run in order as mitmproxy ran them."""

from __future__ import annotations

import asyncio
import inspect
import logging

import pytest
from mitmproxy.exceptions import OptionsError
from mitmproxy.test import taddons, tflow

from holdgate.addons import default_addons, gateway_addons
from holdgate.addons.flowstate import state
from holdgate.addons.pipeline import OWN_HOOKS, Pipeline, hook_names

pytestmark = pytest.mark.anyio


class Stage:
    def __init__(self, name: str, calls: list[str]) -> None:
        self.name, self.calls = name, calls

    def request(self, flow: object) -> None:
        self.calls.append(f"{self.name}.request")

    def configure(self, updated: set[str]) -> None:
        self.calls.append(f"{self.name}.configure")


class AsyncStage(Stage):
    async def request(self, flow: object) -> None:
        self.calls.append(f"{self.name}.request:start")
        await _yield()
        self.calls.append(f"{self.name}.request:end")


async def _yield() -> None:
    await asyncio.sleep(0)


async def test_stages_run_in_order_and_each_awaitable_is_awaited_before_the_next() -> None:
    calls: list[str] = []
    pipeline = Pipeline([Stage("a", calls), AsyncStage("b", calls), Stage("c", calls)])
    result = pipeline.request(object())  # type: ignore[attr-defined]
    assert inspect.isawaitable(result)
    await result
    assert calls == ["a.request", "b.request:start", "b.request:end", "c.request"]


def test_a_hook_no_stage_makes_async_stays_sync() -> None:
    """mitmproxy calls `configure` and `load` without awaiting: they must stay plain calls."""
    calls: list[str] = []
    pipeline = Pipeline([Stage("a", calls), AsyncStage("b", calls)])
    assert pipeline.configure({"x"}) is None  # type: ignore[attr-defined]
    assert calls == ["a.configure", "b.configure"]


def test_a_hook_no_stage_implements_is_absent() -> None:
    pipeline = Pipeline([Stage("a", [])])
    assert not hasattr(pipeline, "response") and not hasattr(pipeline, "error")


def test_a_stage_that_raises_refuses_the_flow_and_the_later_stages_still_run() -> None:
    """mitmproxy would log the error and forward the flow unchecked; the Pipeline refuses
    it, whether or not the stage carries its own `fail_closed`."""
    calls: list[str] = []

    class Broken(Stage):
        def request(self, flow: object) -> None:
            raise RuntimeError("boom")

    pipeline = Pipeline([Stage("a", calls), Broken("b", calls), Stage("c", calls)])
    flow = tflow.tflow()
    pipeline.request(flow)  # type: ignore[attr-defined]
    assert calls == ["a.request", "c.request"]
    assert flow.response is not None and flow.response.status_code == 502
    assert "internal error in the gateway (Broken.request)" in flow.response.text
    assert state(flow).refused is not None and state(flow).refused.kind == "internal-error"


async def test_an_async_stage_that_raises_refuses_the_flow() -> None:
    class Broken(Stage):
        async def request(self, flow: object) -> None:
            await _yield()
            raise RuntimeError("boom")

    flow = tflow.tflow()
    await Pipeline([Broken("b", [])]).request(flow)  # type: ignore[attr-defined]
    assert flow.response is not None and flow.response.status_code == 502


def test_done_runs_in_reverse_so_the_services_close_last() -> None:
    calls: list[str] = []

    class Closing(Stage):
        def done(self) -> None:
            self.calls.append(f"{self.name}.done")

    Pipeline([Closing("service", calls), Closing("stage", calls)]).done()  # type: ignore[attr-defined]
    assert calls == ["stage.done", "service.done"]


def test_every_hook_of_every_gateway_addon_is_in_the_pipeline() -> None:
    """No stage hook may be left out: a `request` hook missing would forward unchecked."""
    stages = default_addons()
    (pipeline,) = gateway_addons()
    assert isinstance(pipeline, Pipeline)
    implemented = {
        name for stage in stages for name in hook_names() if callable(getattr(stage, name, None))
    }
    assert {"requestheaders", "request", "responseheaders", "response", "error"} <= implemented
    assert implemented - OWN_HOOKS <= set(vars(pipeline))
    assert all(callable(getattr(Pipeline, name)) for name in OWN_HOOKS)
    assert set(pipeline.hooks) == implemented


def test_the_stages_commands_are_registered() -> None:
    (pipeline,) = gateway_addons()
    with taddons.context(pipeline) as tctx:
        assert "holdgate.explain" in tctx.master.commands.commands
        assert "holdgate_config" in tctx.options  # the stages' options, added at load


class Refusing(Stage):
    def configure(self, updated: set[str]) -> None:
        self.calls.append(f"{self.name}.configure")
        raise OptionsError("holdgate_config: nowhere.yaml: cannot read the file; check the path")

    def running(self) -> None:
        self.calls.append(f"{self.name}.running")


def test_an_option_refused_at_start_is_one_line_and_every_request_is_refused(caplog) -> None:
    calls: list[str] = []
    pipeline = Pipeline([Refusing("a", calls), Stage("b", calls)])
    with taddons.context(pipeline) as tctx:
        every = set(tctx.options.keys())
        pipeline.configure(every)  # as mitmproxy's script loader does once it loaded us
        assert pipeline.cannot_start is not None
        (line,) = [r for r in caplog.records if r.levelno >= logging.ERROR]
        assert line.getMessage() == (
            "holdgate cannot start: holdgate_config: nowhere.yaml: cannot read the file; "
            "check the path"
        )
        assert line.exc_info is None  # no traceback
        assert pipeline.running() is None
        flow = tflow.tflow()
        pipeline.requestheaders(flow)  # type: ignore[attr-defined]
        pipeline.request(flow)  # type: ignore[attr-defined]
        assert flow.response is not None and flow.response.status_code == 503
        assert calls == ["a.configure"]  # no stage ran again: not b, not running, not request


def test_after_start_a_refused_option_goes_back_to_mitmproxy() -> None:
    calls: list[str] = []
    pipeline = Pipeline([Refusing("a", calls)])
    with taddons.context(pipeline) as tctx:
        with pytest.raises(OptionsError):
            pipeline.configure({"holdgate_config"})  # an option change: mitmproxy rolls back
        pipeline.started = True
        with pytest.raises(OptionsError):
            pipeline.configure(set(tctx.options.keys()))
        assert pipeline.cannot_start is None
