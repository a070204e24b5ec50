"""A mitmproxy script for tests only: makes one function the gateway calls raise.

    mitmdump -s addons/gateway.py -s tests/fault_injection.py  (HOLDGATE_FAULT=module:attr)

It proves the fail-closed mechanism from outside: whatever hook the fault lands in,
the flow must be refused and nothing may reach the upstream.
"""

import os
import sys


class InjectedFault(RuntimeError):
    """Raised in place of the patched function."""


def _boom(*args, **kwargs):
    raise InjectedFault("injected fault")


class FaultInjection:
    def running(self):
        target = os.environ.get("HOLDGATE_FAULT", "")
        module_name, _, attr = target.partition(":")
        owner = sys.modules[module_name]
        for part in attr.split(".")[:-1]:
            owner = getattr(owner, part)
        name = attr.split(".")[-1]
        if not hasattr(owner, name):
            raise AttributeError(f"{target} does not exist")
        setattr(owner, name, _boom)


addons = [FaultInjection()]
