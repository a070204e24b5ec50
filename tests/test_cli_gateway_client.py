"""The CLI's admin-API client: where it sends a token, and how it reports answers."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from holdgate.cli.common import CheckFailed
from holdgate.cli.gateway_client import (
    DEFAULT_GATEWAY,
    GatewayClient,
    GatewayRefused,
    checked_url,
    gateway_url,
)

TOKEN = "tok-3f9c1e-never-shown"


class Recorded(BaseHTTPRequestHandler):
    seen: list[tuple[str, str, str | None, bytes]] = []

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length)
        Recorded.seen.append((self.command, self.path, self.headers.get("Authorization"), body))
        status, payload = {
            "/ok": (200, b'{"state": "approved"}'),
            "/denied": (403, b'{"error": "alice is not an approver of this call"}'),
            "/who": (401, b'{"error": "unauthenticated"}'),
            "/html": (200, b"<html>not json</html>"),
            "/moved": (302, b""),
        }.get(self.path, (404, b'{"error": "no such route"}'))
        self.send_response(status)
        if self.path == "/moved":
            self.send_header("Location", "http://127.0.0.1:9/elsewhere")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    do_GET = do_POST = _answer

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def admin() -> Iterator[str]:
    Recorded.seen = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), Recorded)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_the_token_goes_as_a_bearer_and_the_body_as_json(admin: str) -> None:
    client = GatewayClient(admin, TOKEN)
    assert client.call("POST", "/ok", {"reason": "ticket 7"}) == {"state": "approved"}
    method, path, authorization, body = Recorded.seen[-1]
    assert (method, path, authorization) == ("POST", "/ok", f"Bearer {TOKEN}")
    assert json.loads(body) == {"reason": "ticket 7"}


def test_without_a_token_no_authorization_is_sent(admin: str) -> None:
    GatewayClient(admin, None).call("GET", "/ok")
    assert Recorded.seen[-1][2] is None


@pytest.mark.parametrize(
    ("path", "words"),
    [
        ("/denied", "refused (403): alice is not an approver"),
        ("/who", "--token or $HOLDGATE_TOKEN"),
        ("/html", "not JSON"),
        ("/moved", "refused (302)"),
    ],
)
def test_errors_say_what_and_never_show_the_token(admin: str, path: str, words: str) -> None:
    with pytest.raises(CheckFailed) as raised:
        GatewayClient(admin, TOKEN).call("GET", path)
    assert words in raised.value.message
    assert TOKEN not in raised.value.message
    assert len(Recorded.seen) == 1  # a redirect is not followed (it would carry the token)


def test_a_refusal_is_its_own_type(admin: str) -> None:
    with pytest.raises(GatewayRefused):
        GatewayClient(admin, TOKEN).call("GET", "/denied")


def test_a_gateway_that_is_down_is_named() -> None:
    with pytest.raises(CheckFailed) as raised:
        GatewayClient("http://127.0.0.1:9", TOKEN).call("GET", "/ok")
    assert "cannot reach the gateway at http://127.0.0.1:9" in raised.value.message
    assert TOKEN not in raised.value.message


@pytest.mark.parametrize(
    "url", ["http://gateway.example:8181", "http://10.0.0.5:8181", "ftp://127.0.0.1", "gw:8181"]
)
def test_a_token_never_goes_in_clear_beyond_loopback(url: str) -> None:
    with pytest.raises(CheckFailed):
        checked_url(url)


@pytest.mark.parametrize(
    "url", ["http://127.0.0.1:8181", "http://[::1]:8181", "https://gateway.example"]
)
def test_loopback_and_https_are_accepted(url: str) -> None:
    assert checked_url(url) == url


def test_the_default_gateway_comes_from_the_config(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(
        "version: 1\nupstreams: [{name: u, url: 'http://127.0.0.1:1'}]\n"
        "approvals: {public_url: 'https://approvals.example/'}\n"
        "rules: []\n"
    )
    assert gateway_url(None, str(config)) == "https://approvals.example"
    assert gateway_url("http://127.0.0.1:1/", str(config)) == "http://127.0.0.1:1"
    with pytest.raises(CheckFailed) as raised:
        gateway_url(None, str(tmp_path / "missing.yaml"))
    assert "missing.yaml" in raised.value.message and "--gateway" in raised.value.message
    assert gateway_url(None, None) == DEFAULT_GATEWAY
