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
- A stage refusing an option at start (`OptionsError` in the configure that mitmproxy's
  script loader sends with every option: a config file that cannot be read, a replica
  name in use) is logged as one line, without the traceback mitmproxy's script
  loader would print, and the gateway does not start: no stage runs again and every request
  is refused. The error stops mitmproxy (its start-up check exits on an error logged). After
  start, an `OptionsError` goes back to mitmproxy, which keeps the option's old value.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable, Sequence
from typing import Any

# Importing these registers every hook mitmproxy 12 can call in `hooks.all_hooks`.
import mitmproxy.proxy.layers  # noqa: F401
import mitmproxy.proxy.layers.http  # noqa: F401
import mitmproxy.proxy.server_hooks  # noqa: F401
from mitmproxy import addonmanager, exceptions, hooks, http

from holdgate import compiled
from holdgate.addons.flowstate import json_response, refuse_internal
from holdgate.protocol.jsonrpc import INTERNAL_ERROR, error_object

logger = logging.getLogger("holdgate")

Hook = Callable[..., Any]

# The flow hooks whose exception would let mitmproxy forward a request, or a response,
# that was never checked.
GUARDED = frozenset({"requestheaders", "request", "responseheaders", "response"})
# Hooks the Pipeline answers itself (start-up is judged there), around the stages' chain.
OWN_HOOKS = frozenset({"load", "configure", "running"})


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
            if hook not in OWN_HOOKS:
                setattr(self, hook, run)
        self.started = False
        self.cannot_start: str | None = None
        self._every_option: set[str] = set()  # after load: how the start's configure looks

    def load(self, loader: addonmanager.Loader) -> None:
        run = self.hooks.get("load")
        if run is not None:
            run(loader)
        for stage in self.stages:
            loader.master.commands.collect_commands(stage)
        self._every_option = set(loader.master.options.keys())

    def configure(self, updated: set[str]) -> None:
        run = self.hooks.get("configure")
        if run is None or self.cannot_start is not None:
            return
        if self.started or not self._every_option or not updated >= self._every_option:
            run(updated)
            return
        # mitmproxy's script loader configures a script it just loaded with every option
        # at once: the gateway's start.
        try:
            run(updated)
        except exceptions.OptionsError as exc:
            self.stop_starting(str(exc))

    def running(self) -> Any:
        if self.cannot_start is not None:
            return None
        self.started = True
        logger.info("holdgate runs %s", compiled.status().describe())
        run = self.hooks.get("running")
        return run() if run is not None else None

    def stop_starting(self, reason: str) -> None:
        """The gateway cannot start: say why once, run no stage again (but `done`), and
        refuse every request until mitmproxy exits."""
        self.cannot_start = reason
        logger.error("holdgate cannot start: %s", reason)
        for hook in self.hooks:
            if hook not in OWN_HOOKS and hook != "done":
                setattr(self, hook, _ignore)
        setattr(self, "requestheaders", _refuse_not_started)  # noqa: B010 - a hook, by name


def _ignore(*_args: Any) -> None:
    """A hook of a gateway that did not start."""


def _refuse_not_started(flow: http.HTTPFlow) -> None:
    body = error_object(None, INTERNAL_ERROR, "the gateway did not start; not forwarded")
    flow.response = json_response(503, body)
