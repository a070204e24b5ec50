"""The approval inbox from outside: plain HTTP requests to it (never following a redirect),
the CSRF token read off its page, and a loopback auth proxy in front of the admin listener
that adds the trusted user headers, as oauth2-proxy does, so a browser can sign in."""

from __future__ import annotations

import http.client
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlencode

from helpers.processes import free_port


@dataclass(frozen=True)
class Answer:
    status: int
    headers: dict[str, str]  # lowercased names
    body: str


def request(
    admin: str, method: str, path: str, headers: dict[str, str], body: bytes | None = None
) -> Answer:
    """One request to HOST:PORT, its redirect not followed."""
    host, _, port = admin.rpartition(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=15)
    try:
        conn.request(method, path, body=body, headers=headers)
        response = conn.getresponse()
        text = response.read().decode("utf-8", "replace")
        found = {name.lower(): value for name, value in response.getheaders()}
        return Answer(response.status, found, text)
    finally:
        conn.close()


def page(admin: str, headers: dict[str, str]) -> Answer:
    return request(admin, "GET", "/inbox", headers)


def csrf_of(text: str) -> str:
    """The CSRF token of the page's first form."""
    found = re.search(r'name="csrf" value="([^"]+)"', text)
    if found is None:
        raise AssertionError(f"no form on the page:\n{text[:2000]}")
    return found.group(1)


def post(
    admin: str,
    approval_id: str,
    headers: dict[str, str],
    fields: dict[str, str],
    same_origin: bool = True,
) -> Answer:
    """A decision form posted as a browser on the inbox's own page would post it."""
    sent = {"Content-Type": "application/x-www-form-urlencoded", **headers}
    if same_origin:
        sent.update({"Sec-Fetch-Site": "same-origin", "Origin": "null"})
    return request(admin, "POST", f"/inbox/{approval_id}", sent, urlencode(fields).encode())


def serve(port: int, handler: type[BaseHTTPRequestHandler]) -> ThreadingHTTPServer:
    """A loopback server of `handler` on `port`, serving on a daemon thread."""
    server = ThreadingHTTPServer(("127.0.0.1", port), handler)
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    return server


def stop_serving(server: ThreadingHTTPServer | None) -> None:
    if server is not None:
        server.shutdown()
        server.server_close()


@dataclass
class AuthProxy:
    """A loopback reverse proxy to the admin listener that signs every request in as
    `user` (with `groups`) through the trusted headers; it forwards what the browser sent."""

    admin: str
    user: str
    groups: str
    user_header: str = "X-Admin-User"
    groups_header: str = "X-Admin-Groups"
    port: int = field(default_factory=free_port)
    posts: list[tuple[str, dict[str, str]]] = field(default_factory=list)
    own_pages: dict[str, str] = field(default_factory=dict)  # path: HTML the proxy serves
    _server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> AuthProxy:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def _forward(self) -> None:
                if self.command == "GET" and self.path in proxy.own_pages:
                    own = proxy.own_pages[self.path].encode()
                    self.send_response(200)
                    self.send_header("Content-Type", "text/html; charset=utf-8")
                    self.send_header("Content-Length", str(len(own)))
                    self.end_headers()
                    self.wfile.write(own)
                    return
                length = int(self.headers.get("Content-Length", 0) or 0)
                body = self.rfile.read(length) if length else None
                headers = {
                    name: value
                    for name, value in self.headers.items()
                    if name.lower() not in ("host", "connection", "content-length")
                    and name.lower() not in (proxy.user_header.lower(), proxy.groups_header.lower())
                }
                headers[proxy.user_header] = proxy.user
                headers[proxy.groups_header] = proxy.groups
                headers["Host"] = f"127.0.0.1:{proxy.port}"  # as oauth2-proxy passes it on
                if self.command == "POST":
                    proxy.posts.append((self.path, dict(self.headers.items())))
                answer = request(proxy.admin, self.command, self.path, headers, body)
                data = answer.body.encode("utf-8")
                self.send_response(answer.status)
                for name, value in answer.headers.items():
                    if name not in ("content-length", "transfer-encoding", "connection", "date"):
                        self.send_header(name, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = _forward  # noqa: N815 (http.server's names)

            def log_message(self, format: str, *args: object) -> None:  # noqa: A002
                return

        self._server = serve(self.port, Handler)
        return self

    def stop(self) -> None:
        stop_serving(self._server)
        self._server = None


@dataclass
class StaticSite:
    """A loopback site of another origin serving one HTML page (an attacker's page)."""

    html: str
    port: int = field(default_factory=free_port)
    _server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    def start(self) -> StaticSite:
        site = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                data = site.html.encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/html; charset=utf-8")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: object) -> None:  # noqa: A002
                return

        self._server = serve(self.port, Handler)
        return self

    def stop(self) -> None:
        stop_serving(self._server)
        self._server = None
