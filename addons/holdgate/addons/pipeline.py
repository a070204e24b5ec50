"""The one addon mitmproxy sees: it runs Holdgate's addons, in order, as plain calls.

mitmproxy dispatches every event to every addon it knows: for each one it walks the
addon's children, looks the hook up by name, builds the hook's arguments and calls it
(`AddonManager.invoke_addon`). With a dozen addons that is a dozen lookups per event,
four events per request. The `Pipeline` looks each hook's implementations up once, at
construction, and calls them in order with the arguments mitmproxy built once.

The stages run one after another in `default_addons()` order, an awaitable result is
awaited before the next stage runs, and a hook is sync where every stage's implementation
is (mitmproxy calls `load` and `configure` without awaiting). Commands a stage declares
are registered at load, as mitmproxy would have. Two things differ from mitmproxy, on
purpose:

- A stage of a flow hook (`GUARDED`) that raises does not stop the event: the Pipeline
  refuses the flow (`flowstate.refuse_internal`: a 502 the client sees, and the audit row
  the Recorder writes for every refusal) and the later stages see a refused flow. mitmproxy
  would log the error and forward the flow unchecked; here no stage can forget to fail
  closed. (Stages keep their own `fail_closed` too: it also skips refused flows.)
- `done` runs in reverse order, so the services built first (the AuditStore) close after
  every stage that writes through them.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import Any

# Importing these registers every hook mitmproxy 12 can call in `hooks.all_hooks`.
import mitmproxy.proxy.layers  # noqa: F401
import mitmproxy.proxy.layers.http  # noqa: F401
import mitmproxy.proxy.server_hooks  # noqa: F401
from mitmproxy import addonmanager, hooks

from holdgate.addons.flowstate import refuse_internal

Hook = Callable[..., Any]

# The flow hooks whose exception would let mitmproxy forward a request, or a response,
# that was never checked.
GUARDED = frozenset({"requestheaders", "request", "responseheaders", "response"})


def hook_names() -> frozenset[str]:
    """Every event name mitmproxy may dispatch to an addon."""
    return frozenset(hooks.all_hooks) | {"load"}


def sync_chain(implementations: tuple[Hook, ...]) -> Hook:
    def run(*args: Any) -> None:
        for implementation in implementations:
            implementation(*args)

    return run


def async_chain(implementations: tuple[Hook, ...]) -> Hook:
    async def run(*args: Any) -> None:
        for implementation in implementations:
            result = implementation(*args)
            if result is not None and inspect.isawaitable(result):
                await result

    return run


def guarded_sync_chain(implementations: tuple[Hook, ...], names: tuple[str, ...]) -> Hook:
    def run(flow: Any, *args: Any) -> None:
        for implementation, where in zip(implementations, names, strict=True):
            try:
                implementation(flow, *args)
            except Exception as exc:  # noqa: BLE001 - a failing stage refuses, never forwards
                refuse_internal(flow, where, exc)

    return run


def guarded_async_chain(implementations: tuple[Hook, ...], names: tuple[str, ...]) -> Hook:
    async def run(flow: Any, *args: Any) -> None:
        for implementation, where in zip(implementations, names, strict=True):
            try:
                result = implementation(flow, *args)
                if result is not None and inspect.isawaitable(result):
                    await result
            except Exception as exc:  # noqa: BLE001 - a failing stage refuses, never forwards
                refuse_internal(flow, where, exc)

    return run


def chain(implementations: tuple[Hook, ...], names: tuple[str, ...] | None = None) -> Hook:
    """One callable running the implementations in order; async only if one of them is.
    With `names` (each one's `Stage.hook`), an exception refuses the flow (the first
    argument) and the rest still run."""
    is_async = any(inspect.iscoroutinefunction(impl) for impl in implementations)
    if names is not None:
        guarded = guarded_async_chain if is_async else guarded_sync_chain
        return guarded(implementations, names)
    return async_chain(implementations) if is_async else sync_chain(implementations)


class Pipeline:
    """Holdgate's addons behind one mitmproxy addon (see the module docstring)."""

    name = "holdgate"

    def __init__(self, stages: Sequence[object]) -> None:
        self.stages = tuple(stages)
        self.hooks: dict[str, Hook] = {}
        for hook in sorted(hook_names()):
            stages = [stage for stage in self.stages if callable(getattr(stage, hook, None))]
            if hook == "done":
                stages.reverse()
            if not stages:
                continue
            implementations = tuple(getattr(stage, hook) for stage in stages)
            names = tuple(f"{type(stage).__name__}.{hook}" for stage in stages)
            self.hooks[hook] = chain(implementations, names if hook in GUARDED else None)
        for hook, run in self.hooks.items():
            if hook != "load":
                setattr(self, hook, run)

    def load(self, loader: addonmanager.Loader) -> None:
        run = self.hooks.get("load")
        if run is not None:
            run(loader)
        for stage in self.stages:
            loader.master.commands.collect_commands(stage)
