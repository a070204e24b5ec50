"""EarlyAnswers and http_seams wrap mitmproxy's request-headers step once each, however
often the gateway loads.

`http_seams` wraps it for the Host the client wrote; whichever goes first, the chain of
wrappers holds each one once."""

from collections.abc import Callable
from typing import Any

from mitmproxy.proxy.layers.http import HttpStream

from holdgate.addons import http_seams
from holdgate.addons.early_answers import EarlyAnswers, install


def chain(step: Callable[..., Any]) -> list[str]:
    """The qualified names of `step` and every function it wraps, outermost first."""
    names = []
    current: Any = step
    for _ in range(16):  # bounded: a handful of wrappers at most
        names.append(current.__code__.co_qualname)
        current = getattr(current, "__wrapped__", None)
        if current is None:
            break
    return names


def test_the_step_is_wrapped_once_however_often_the_gateway_loads() -> None:
    EarlyAnswers().load(object())
    http_seams.install()
    install()
    EarlyAnswers().load(object())
    http_seams.install()
    names = chain(HttpStream.state_wait_for_request_headers)
    assert sum("answer_before_body" in name for name in names) == 1, names
    assert sum("_keeping_client_host" in name for name in names) == 1, names
    assert names[-1] == "HttpStream.state_wait_for_request_headers"
