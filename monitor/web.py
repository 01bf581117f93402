"""The daemon's HTTP server: /metrics (Prometheus text), /healthz (the process answers and can
still do its work: 503 with the reason when only a restart can help),
/readyz (the store answers and polling is fresh), with details as JSON, and the HTTP API:
`POST /api/v1/watch/batches/{batch_id}` (bearer token; absent when no token is configured).
A batch id is a Box id, digits only (400 otherwise); a watch the monitor has no room for is 429.
The status page (`GET /` and `/ui/...`, `/static/...`) lives in `monitor/ui/`."""

from __future__ import annotations

import re
import secrets
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from pydantic import SecretStr

from monitor.errors import ListenError
from monitor.ui import StatusPage

ReadyCheck = Callable[[], Awaitable[tuple[bool, dict[str, Any]]]]
#: None while the process is alive; else why a supervisor should restart it.
LiveCheck = Callable[[], str | None]

REGISTRY_KEY = web.AppKey("registry", CollectorRegistry)
READY_KEY = web.AppKey("ready", object)
LIVE_KEY = web.AppKey("live", object)
WATCH_KEY = web.AppKey("watch", object)
TOKEN_KEY = web.AppKey("api_token", SecretStr)
#: Box ids are digit strings (64-bit numbers today); anything longer is not a batch id.
MAX_BATCH_ID_CHARS = 20
BATCH_ID = re.compile(rf"[0-9]{{1,{MAX_BATCH_ID_CHARS}}}")
WATCH_ROUTE = "/api/v1/watch/batches/{batch_id}"
# Matches any rest of the path, empty and `..%2F..` included, so each gets a 400, not a 404.
_WATCH_PATTERN = "/api/v1/watch/batches/{batch_id:.*}"
#: `watch(batch_id)` answers False when the monitor has no room for another watched batch.
WatchFn = Callable[[str], bool]


async def _metrics(request: web.Request) -> web.Response:
    body = generate_latest(request.app[REGISTRY_KEY])
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def _healthz(request: web.Request) -> web.Response:
    check: LiveCheck = request.app[LIVE_KEY]  # type: ignore[assignment]
    problem = check()
    if problem is not None:
        return web.json_response({"status": "failing", "reason": problem}, status=503)
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
    if BATCH_ID.fullmatch(batch_id) is None:  # never echoed: it is the caller's text
        return web.json_response(
            {"error": f"invalid batch id: expected a Box id of 1 to {MAX_BATCH_ID_CHARS} digits"},
            status=400,
        )
    watch: WatchFn = request.app[WATCH_KEY]  # type: ignore[assignment]
    if not watch(batch_id):
        return web.json_response(
            {"error": "too many watched batches (http.max_watched_batches)"}, status=429
        )
    return web.json_response({"batch_id": batch_id, "watched": True}, status=202)


def build_app(
    registry: CollectorRegistry,
    ready: ReadyCheck,
    *,
    watch: WatchFn | None = None,
    api_token: SecretStr | None = None,
    live: LiveCheck = lambda: None,
    ui: StatusPage | None = None,
) -> web.Application:
    app = web.Application()
    app[REGISTRY_KEY] = registry
    app[READY_KEY] = ready
    app[LIVE_KEY] = live
    app.router.add_get("/metrics", _metrics)
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/readyz", _readyz)
    if watch is not None and api_token is not None and api_token.get_secret_value():
        app[WATCH_KEY] = watch
        app[TOKEN_KEY] = api_token
        app.router.add_post(_WATCH_PATTERN, _watch)
    if ui is not None:
        ui.add_routes(app)
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
        try:
            await site.start()
        except OSError as exc:  # in use, not an address of this host, a name that resolves not
            await self._runner.cleanup()
            raise ListenError(self.url.removeprefix("http://"), exc.strerror or str(exc)) from None
        self.port = self._runner.addresses[0][1]  # the real port when 0 was asked for

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    async def close(self) -> None:
        await self._runner.cleanup()
