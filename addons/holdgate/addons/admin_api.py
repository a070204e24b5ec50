"""AdminApi: the admin listener (`holdgate_admin`) and the route table the approvals API,
campaigns, approval status pages, `/metrics` and health and status register on (in
`default_addons()`).

Served by tornado, which mitmproxy already depends on and runs mitmweb on, on the proxy's
own event loop: HTTP/1.1 keep-alive, chunked request bodies and the request parsing are
tornado's; bodies and headers are capped. A route is a path and a `Handler` over the plain
`AdminRequest`/`AdminResponse` of `approvals.adminhttp`, so it knows nothing of tornado.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import tornado.httpserver
import tornado.web
from mitmproxy import ctx, exceptions

from holdgate.approvals.adminhttp import (
    MAX_BODY_BYTES,
    MAX_HEADER_BYTES,
    AdminCallers,
    AdminRequest,
    AdminResponse,
    Handler,
    parse_listen,
)

logger = logging.getLogger("holdgate")

# A client that sends nothing for this long loses its connection (no slow-loris hold).
IDLE_SECONDS = 60.0
BODY_SECONDS = 10.0
UNKNOWN_ROUTE = "see GET /approvals or GET /campaigns"


class AdminApi:
    """The admin listener: started once the events it is told to wait for are set (the
    approval holds closing a previous run's leftovers), stopped at shutdown."""

    def __init__(self) -> None:
        self.callers = AdminCallers()  # one per listener, so its JWKS caches are shared
        self.routes: dict[str, Handler] = {}  # exact path, or "/prefix/*" for a subtree
        self._after: list[asyncio.Event] = []
        self._server: tornado.httpserver.HTTPServer | None = None
        self._starting: asyncio.Task[None] | None = None

    def route(self, path: str, handler: Handler) -> None:
        """Serve `path` (or, as `/prefix/*`, the prefix and everything under it)."""
        if path in self.routes:
            raise ValueError(f"the admin route {path} is registered twice")
        self.routes[path] = handler

    def serve_after(self, ready: asyncio.Event) -> None:
        """Open the listener only once `ready` is set."""
        self._after.append(ready)

    def load(self, loader: Any) -> None:
        loader.add_option(
            "holdgate_admin",
            str,
            "127.0.0.1:8181",
            "Listen address (HOST:PORT) of Holdgate's admin listener: the approvals API, "
            "/metrics, /healthz, /readyz, /status; empty disables it.",
        )

    def configure(self, updated: set[str]) -> None:
        if "holdgate_admin" in updated:
            try:
                parse_listen(ctx.options.holdgate_admin)
            except ValueError as exc:
                raise exceptions.OptionsError(f"holdgate_admin: {exc}") from None

    def running(self) -> None:
        # Never await here: later addons' running hooks (TLS set-up) wait for ours.
        if self._starting is None:
            self._starting = asyncio.create_task(self._start())

    async def _start(self) -> None:
        for ready in self._after:
            await ready.wait()
        listen = parse_listen(ctx.options.holdgate_admin)
        if listen is None:
            return
        server = tornado.httpserver.HTTPServer(
            tornado.web.Application([(r"/.*", _Dispatch, {"api": self})]),
            max_body_size=MAX_BODY_BYTES,
            max_header_size=MAX_HEADER_BYTES,
            idle_connection_timeout=IDLE_SECONDS,
            body_timeout=BODY_SECONDS,
        )
        try:
            server.listen(listen[1], address=listen[0])
        except OSError as exc:
            logger.error(
                "holdgate: the approvals API cannot listen on %s (holdgate_admin): %s; "
                "choose a free address or set holdgate_admin to empty",
                ctx.options.holdgate_admin,
                exc,
            )
            return
        self._server = server
        logger.info("holdgate: approvals API on http://%s:%d/approvals", *listen)

    def done(self) -> None:
        if self._starting is not None:
            self._starting.cancel()
        if self._server is not None:
            self._server.stop()
            self._server = None

    def handler(self, path: str) -> Handler | None:
        """The route serving `path` (its query string ignored)."""
        path = path.partition("?")[0]
        found = self.routes.get(path)
        if found is not None:
            return found
        for prefix, handler in self.routes.items():
            base = prefix.removesuffix("/*")
            if prefix.endswith("/*") and (path == base or path.startswith(base + "/")):
                return handler
        return None

    async def handle(self, request: AdminRequest) -> AdminResponse:
        """One request through the route table; an unknown path is a 404."""
        handler = self.handler(request.path)
        if handler is None:
            return AdminResponse(404, {"error": UNKNOWN_ROUTE})
        return await handler(request)


class _Dispatch(tornado.web.RequestHandler):
    """Every path and method: tornado's request in, the route table's answer out."""

    SUPPORTED_METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")

    def initialize(self, api: AdminApi) -> None:
        self.api = api

    def set_default_headers(self) -> None:
        self.clear_header("Server")
        self.clear_header("Content-Type")

    async def _dispatch(self) -> None:
        headers: dict[str, list[str]] = {}
        for name, value in self.request.headers.get_all():
            headers.setdefault(name.lower(), []).append(value)
        request = AdminRequest(
            self.request.method or "GET",
            self.request.uri or "/",
            headers,
            self.request.body,
            self.request.remote_ip or "",
        )
        try:
            response = await self.api.handle(request)
        except Exception as exc:  # noqa: BLE001 - a broken route answers 500, never hangs
            logger.exception("holdgate: admin request %s %s failed", request.method, request.path)
            response = AdminResponse(500, {"error": f"internal error: {type(exc).__name__}"})
        self._answer(response)

    def _answer(self, response: AdminResponse) -> None:
        headers, body = response.content()
        self.set_status(response.status)
        for name, value in headers:
            self.set_header(name, value)
        self.finish(body)

    get = post = put = patch = delete = options = _dispatch

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        """Tornado's own refusals (a method no route takes) as JSON, like every answer."""
        self._answer(AdminResponse(status_code, {"error": self._reason}))
