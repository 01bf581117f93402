"""The daemon's HTTP server: /metrics (Prometheus text), /healthz (the process answers),
/readyz (the store answers and polling is fresh), with details as JSON, and the HTTP API:
`POST /api/v1/watch/batches/{batch_id}` (bearer token; absent when no token is configured)."""

from __future__ import annotations

import secrets
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from pydantic import SecretStr

ReadyCheck = Callable[[], Awaitable[tuple[bool, dict[str, Any]]]]

REGISTRY_KEY = web.AppKey("registry", CollectorRegistry)
READY_KEY = web.AppKey("ready", object)
WATCH_KEY = web.AppKey("watch", object)
TOKEN_KEY = web.AppKey("api_token", SecretStr)
#: Box ids are digit strings; anything much longer than one is not a batch id.
MAX_BATCH_ID_CHARS = 64
WATCH_ROUTE = "/api/v1/watch/batches/{batch_id}"


async def _metrics(request: web.Request) -> web.Response:
    body = generate_latest(request.app[REGISTRY_KEY])
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def _healthz(_: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def _readyz(request: web.Request) -> web.Response:
    check: ReadyCheck = request.app[READY_KEY]  # type: ignore[assignment]
    ready, details = await check()
    return web.json_response(
        {"status": "ready" if ready else "not ready", **details}, status=200 if ready else 503
    )


async def _watch(request: web.Request) -> web.Response:
    expected = request.app[TOKEN_KEY].get_secret_value().encode()
    given = request.headers.get("Authorization", "").removeprefix("Bearer ").encode()
    if not secrets.compare_digest(given, expected):
        return web.json_response(
            {"error": "unauthorized"}, status=401, headers={"WWW-Authenticate": "Bearer"}
        )
    batch_id = request.match_info["batch_id"]
    if len(batch_id) > MAX_BATCH_ID_CHARS or not batch_id.isprintable():
        return web.json_response({"error": "invalid batch id"}, status=400)
    watch: Callable[[str], None] = request.app[WATCH_KEY]  # type: ignore[assignment]
    watch(batch_id)
    return web.json_response({"batch_id": batch_id, "watched": True}, status=202)


def build_app(
    registry: CollectorRegistry,
    ready: ReadyCheck,
    *,
    watch: Callable[[str], None] | None = None,
    api_token: SecretStr | None = None,
) -> web.Application:
    app = web.Application()
    app[REGISTRY_KEY] = registry
    app[READY_KEY] = ready
    app.router.add_get("/metrics", _metrics)
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/readyz", _readyz)
    if watch is not None and api_token is not None and api_token.get_secret_value():
        app[WATCH_KEY] = watch
        app[TOKEN_KEY] = api_token
        app.router.add_post(WATCH_ROUTE, _watch)
    return app


class WebServer:
    """An aiohttp site on host:port; port 0 picks a free one (see `port` after start)."""

    def __init__(self, app: web.Application, host: str, port: int) -> None:
        self._runner = web.AppRunner(app, access_log=None)
        self.host = host
        self.port = port

    async def start(self) -> None:
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        self.port = self._runner.addresses[0][1]  # the real port when 0 was asked for

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    async def close(self) -> None:
        await self._runner.cleanup()
