"""The admin API, as upstream dewy serves it: ``GET /api/status``, ``/api/containers``, ``/metrics``.

It listens on 127.0.0.1:17539 (``--admin-port``; the next free port of ten if taken, as
upstream) in container mode, and in the other modes when ``--admin-port`` or ``--telemetry``
asks for it. ``/metrics`` exists only with ``--telemetry``. Off loopback (``--admin-address``)
every request needs ``Authorization: Bearer $DEWY_ADMIN_TOKEN`` (a systemd credential or the
environment file, never a flag), and dewy refuses to start without that token.

Served by :mod:`dewy.httpd` (one request per connection, bounded in size and time);
everything that reads a file (the state file, a scrape) is done in a thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import os
from collections.abc import Awaitable, Callable
from http import HTTPStatus
from typing import TYPE_CHECKING

from dewy import log
from dewy.errors import UsageError
from dewy.httpd import Limits, Request, Response, Server, json_response
from dewy.settings import Settings
from dewy.urls import is_loopback

if TYPE_CHECKING:
    from dewy.telemetry.metrics import Metrics

DEFAULT_PORT = 17539
PORT_ATTEMPTS = 10
TOKEN_VARIABLE = "DEWY_ADMIN_TOKEN"


class AdminApi:
    def __init__(self, settings: Settings, token: str | None) -> None:
        self.settings = settings
        self.token = token
        self.metrics: Metrics | None = None  # with --telemetry: GET /metrics
        self.port: int | None = None
        self._server: Server | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> AdminApi:
        """UsageError (exit 2) if the API would listen off loopback without a token."""
        token = os.environ.get(TOKEN_VARIABLE) or None
        if not is_loopback(settings.admin_address) and not token:
            raise UsageError(f"--admin-address {settings.admin_address} is not loopback: set {TOKEN_VARIABLE} "
                             "(a systemd credential or the environment file) so that requests need a Bearer token")
        return cls(settings, token)

    async def start(self) -> None:
        """Listen on the first free port from --admin-port; if none of ten is free, one error line and no API
        (the deploys go on)."""
        first = self.settings.admin_port or DEFAULT_PORT
        error: OSError | None = None
        for port in range(first, min(first + PORT_ATTEMPTS, 65536)):
            server = Server(self._answer, Limits())
            try:
                await server.start(self.settings.admin_address, port)
            except OSError as exc:
                error = exc
                continue
            self._server = server
            self.port = port
            log.info("admin-api", f"admin API on http://{self.settings.admin_address}:{port}"
                     + (" (/metrics too)" if self.metrics else ""), port=port)
            return
        log.error("admin-api-failed", f"no admin API: cannot listen on {self.settings.admin_address} ports "
                  f"{first}-{port}: {error.strerror if error else 'no port left'}; use --admin-port")

    async def close(self) -> None:
        if self._server:
            await self._server.close()

    async def _answer(self, request: Request) -> Response:
        if self.token and not hmac.compare_digest(request.headers.get("authorization", "").encode(),
                                                  f"Bearer {self.token}".encode()):
            return json_response(HTTPStatus.UNAUTHORIZED, {"error": f"send Authorization: Bearer ${TOKEN_VARIABLE}"})
        route = self._routes().get(request.path)
        if route is None:
            return json_response(HTTPStatus.NOT_FOUND, {"error": f"no such endpoint: {request.target[:100]}"})
        if request.method != "GET":
            return json_response(HTTPStatus.METHOD_NOT_ALLOWED, {"error": "only GET"})
        return await asyncio.to_thread(route)

    def _routes(self) -> dict[str, Callable[[], Response]]:
        routes = {"/api/status": self._status}
        if self.settings.mode == "container":
            routes["/api/containers"] = self._containers
        if self.metrics:
            routes["/metrics"] = self._metrics
        return routes

    def _status(self) -> Response:
        """What ``dewy status --json`` prints."""
        from dewy.status import status

        try:
            info = status(None, self.settings.dir)
        except UsageError as exc:  # nothing deployed yet
            return json_response(HTTPStatus.SERVICE_UNAVAILABLE, {"error": str(exc)})
        return json_response(HTTPStatus.OK, {**info, "instance": self.settings.app_name})

    def _containers(self) -> Response:
        from dewy.status import containers

        return json_response(HTTPStatus.OK, {"containers": containers(self.settings.dir)})

    def _metrics(self) -> Response:
        from prometheus_client import CONTENT_TYPE_LATEST

        return Response(HTTPStatus.OK, self.metrics.exposition(), CONTENT_TYPE_LATEST)


async def serving(settings: Settings, serve: Callable[[], Awaitable[int]]) -> int:
    """Run ``serve`` (the daemon) with the admin API, the metrics and their OTLP push beside it."""
    api = AdminApi.from_settings(settings)
    push = None
    if settings.telemetry:
        try:
            from dewy.telemetry.metrics import Metrics, attach

            if settings.otlp_endpoint:
                from dewy.telemetry.otlp import OtlpPush
        except ImportError as exc:
            extra = "otlp" if settings.otlp_endpoint else "telemetry"
            raise UsageError(f"--{'otlp-endpoint' if settings.otlp_endpoint else 'telemetry'} needs the {exc.name} "
                             f"Python library: pip install 'dewy[{extra}]'") from None
        api.metrics = Metrics(settings.mode, settings.app_name, settings.dir / ".dewy" / "state.json", settings.replicas)
        attach(api.metrics)
        if settings.otlp_endpoint:
            push = OtlpPush(api.metrics, settings.otlp_endpoint, settings.otlp_insecure)
    await api.start()
    pushing = asyncio.ensure_future(push.run()) if push else None
    try:
        return await serve()
    finally:
        if pushing:
            pushing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await pushing
            await push.push()  # what happened since the last push, as the SDK's shutdown does
            await push.close()
        await api.close()
