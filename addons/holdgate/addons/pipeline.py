"""The one addon mitmproxy sees: it runs Holdgate's addons, in order, as plain calls.

mitmproxy dispatches every event to every addon it knows: for each one it walks the
addon's children, looks the hook up by name, builds the hook's arguments and calls it
(`AddonManager.invoke_addon`). With a dozen addons that is a dozen lookups per event,
four events per request. The `Pipeline` looks each hook's implementations up once, at
construction, and calls them in order with the arguments mitmproxy built once.

Semantics are mitmproxy's own: the stages run one after another in `default_addons()`
order, an awaitable result is awaited before the next stage runs, and a hook is sync
where every stage's implementation is (mitmproxy calls `load` and `configure` without
awaiting). Each stage keeps its own `fail_closed` wrapper. Commands a stage declares
are registered at load, as mitmproxy would have.
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

Hook = Callable[..., Any]


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


def chain(implementations: tuple[Hook, ...]) -> Hook:
    """One callable running the implementations in order; async only if one of them is."""
    if any(inspect.iscoroutinefunction(impl) for impl in implementations):
        return async_chain(implementations)
    return sync_chain(implementations)


class Pipeline:
    """Holdgate's addons behind one mitmproxy addon (see the module docstring)."""

    name = "holdgate"

    def __init__(self, stages: Sequence[object]) -> None:
        self.stages = tuple(stages)
        self.hooks: dict[str, Hook] = {}
        for hook in sorted(hook_names()):
            implementations = tuple(
                getattr(stage, hook)
                for stage in self.stages
                if callable(getattr(stage, hook, None))
            )
            if implementations:
                self.hooks[hook] = chain(implementations)
        for hook, run in self.hooks.items():
            if hook != "load":
                setattr(self, hook, run)

    def load(self, loader: addonmanager.Loader) -> None:
        run = self.hooks.get("load")
        if run is not None:
            run(loader)
        for stage in self.stages:
            loader.master.commands.collect_commands(stage)
