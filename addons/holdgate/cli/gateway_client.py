"""Commands that act through a running gateway's admin API, as `kubectl` does.

A decision (an approval, a certification, a campaign) is only as good as the proof of who
made it: the CLI sends the person's own credential (`--token` or `$HOLDGATE_TOKEN`, a JWT
from the IdP or an API key from the config) to the admin listener, which authenticates it
exactly as it authenticates the approvals API, and the store records that identity. The
gateway is `--gateway URL` or `$HOLDGATE_GATEWAY`, else `approvals.public_url` of
`--config` when it names one, else the admin listener's default address.

A token is never sent over plain HTTP to anything but a loopback address, never shown in a
message, and never written anywhere by the CLI.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import click

from holdgate.cli.common import CheckFailed
from holdgate.configfile import is_loopback

DEFAULT_GATEWAY = "http://127.0.0.1:8181"  # the holdgate_admin option's default
TIMEOUT = 10.0


class GatewayRefused(CheckFailed):
    """The gateway answered with an error: its message, exit status 1."""


@dataclass(frozen=True)
class GatewayAnswer:
    status: int
    body: Any  # the decoded JSON body (None when there was none)


def gateway_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """`--gateway` and `--token` (also from the environment) for a command that acts
    through the admin API."""
    func = click.option(
        "--token",
        envvar="HOLDGATE_TOKEN",
        show_envvar=True,
        help="Your credential: a JWT from the IdP or an API key (never the gateway's).",
    )(func)
    return click.option(
        "--gateway",
        envvar="HOLDGATE_GATEWAY",
        show_envvar=True,
        help="The gateway's admin address, e.g. http://127.0.0.1:8181 (default: "
        f"approvals.public_url of --config, else {DEFAULT_GATEWAY}).",
    )(func)


def gateway_url(given: str | None, config_path: str | None = None) -> str:
    """The admin API's base URL: the option, the config's `approvals.public_url`, the
    default. A `--config` that cannot be read is an error: it was given to be used."""
    if given:
        return given.rstrip("/")
    if config_path:
        from holdgate.config.gateway_config import load_config
        from holdgate.configfile import ConfigError

        try:
            public = load_config(config_path, secrets=False).approvals.public_url
        except ConfigError as exc:
            raise CheckFailed(f"{exc}\n(or give the gateway with --gateway)") from None
        if public:
            return public.rstrip("/")
    return DEFAULT_GATEWAY


def checked_url(base: str) -> str:
    """`base` when a token may be sent to it: http(s) with a host, plain http only to a
    loopback address (anything else would put the credential on the wire in clear)."""
    parts = urlsplit(base)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise CheckFailed(
            f"--gateway {base!r} is not an http(s) URL; give the admin listener's address, "
            f"e.g. {DEFAULT_GATEWAY}"
        )
    if parts.scheme == "http" and not is_loopback(parts.hostname):
        raise CheckFailed(
            f"--gateway {base!r}: plain http to a non-loopback host would send your token in "
            "clear; put TLS in front of the admin listener and use https://, or reach it "
            "through a loopback tunnel"
        )
    return base


class GatewayClient:
    """Requests to one gateway's admin API with one person's credential."""

    def __init__(self, base: str, token: str | None) -> None:
        self.base = checked_url(base)
        self.token = token

    def request(self, method: str, path: str, body: Any = None) -> GatewayAnswer:
        """One request; a failure to reach the gateway or an unreadable answer is a
        message naming the gateway and what to check."""
        import httpx  # only the commands that talk to a gateway pay for it

        # The admin API records a decision made here as the `cli` channel's.
        headers = {"Accept": "application/json", "X-Holdgate-Channel": "cli"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        try:
            answer = httpx.request(
                method,
                self.base + path,
                headers=headers,
                json=body,
                timeout=TIMEOUT,
                follow_redirects=False,  # a redirect would carry the token elsewhere
            )
        except httpx.HTTPError as exc:
            raise CheckFailed(
                f"cannot reach the gateway at {self.base} ({type(exc).__name__}); is it "
                "running with its admin listener (holdgate_admin)? give --gateway or "
                "$HOLDGATE_GATEWAY"
            ) from None
        try:
            decoded = answer.json() if answer.content else None
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise CheckFailed(
                f"{self.base}{path} answered HTTP {answer.status_code} with a body that is "
                "not JSON: is --gateway the admin listener's address?"
            ) from None
        return GatewayAnswer(answer.status_code, decoded)

    def call(self, method: str, path: str, body: Any = None) -> Any:
        """The decoded body of a 2xx answer; any other answer is `GatewayRefused` with the
        gateway's own error and, for 401, how to authenticate."""
        answer = self.request(method, path, body)
        if 200 <= answer.status < 300:
            return answer.body
        error = answer.body.get("error") if isinstance(answer.body, dict) else None
        message = f"the gateway refused ({answer.status}): {error or 'no reason given'}"
        if answer.status == 401:
            message += (
                "; pass your own credential with --token or $HOLDGATE_TOKEN (a JWT from "
                "your IdP or an API key from the config)"
            )
        raise GatewayRefused(message)
