"""EarlyAnswers wraps mitmproxy's request-headers step once, however often it is loaded."""

from mitmproxy.proxy.layers.http import HttpStream

from holdgate.addons.early_answers import WRAPPED_MARK, EarlyAnswers, install


def test_the_step_is_wrapped_once_however_often_the_gateway_loads() -> None:
    EarlyAnswers().load(object())
    wrapped = HttpStream.state_wait_for_request_headers
    install()
    EarlyAnswers().load(object())
    assert HttpStream.state_wait_for_request_headers is wrapped
    assert wrapped.__dict__.get(WRAPPED_MARK)
    inner = wrapped.__wrapped__  # type: ignore[attr-defined]
    assert not inner.__dict__.get(WRAPPED_MARK)
