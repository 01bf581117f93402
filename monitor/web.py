"""The daemon's HTTP server: /metrics (Prometheus text), /healthz (the process answers and can
still do its work: 503 with the reason when only a restart can help),
/readyz (the store answers and polling is fresh), with details as JSON, and the HTTP API:
`POST /api/v1/watch/batches/{batch_id}[?account=NAME]`, `GET/POST /api/v1/silences`,
`DELETE /api/v1/silences/{id}` and `GET /api/v1/events` (bearer token; absent when no token is
configured; `account` is needed only when several accounts are configured). A batch id is a Box
id, digits only (400 otherwise); a watch the monitor has no room for is 429; an account not
configured is 404, one this process does not poll (a standby) is 503. The status page (`GET /`
and `/ui/...`, `/static/...`) lives in `monitor/ui/`.
`POST /api/v1/box/webhook` takes Box's webhook notifications (absent unless an account has
`box.webhook.primary_key`): Box's signature is its only authentication, no bearer."""

from __future__ import annotations

import re
import secrets
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import orjson
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from pydantic import SecretStr

from monitor.box.webhooks import MAX_NOTIFICATION_BYTES, Verdict
from monitor.config import parse_duration_s
from monitor.errors import InvalidInput, ListenError, WatchRefused
from monitor.notify.silences import match_data, new_silence
from monitor.store.base import EventQuery, EventRecord, SilenceStore
from monitor.ui import StatusPage
from monitor.views import event_json, parse_since, silence_json

ReadyCheck = Callable[[], Awaitable[tuple[bool, dict[str, Any]]]]
#: None while the process is alive; else why a supervisor should restart it.
LiveCheck = Callable[[], str | None]

REGISTRY_KEY = web.AppKey("registry", CollectorRegistry)
READY_KEY = web.AppKey("ready", object)
LIVE_KEY = web.AppKey("live", object)
WATCH_KEY = web.AppKey("watch", object)
TOKEN_KEY = web.AppKey("api_token", SecretStr)
SILENCES_KEY = web.AppKey("silences", object)
EVENTS_KEY = web.AppKey("events", object)
#: The event history of one Box account's store (None: the first configured account's).
EventsFn = Callable[[EventQuery, str | None], Awaitable[list[EventRecord]]]
#: `GET /api/v1/events` pages: this many events unless `limit` asks for fewer (or more, to MAX).
EVENTS_PAGE, MAX_EVENTS_PAGE = 100, 1000
MAX_BODY_BYTES = 64 * 1024
#: Box ids are digit strings (64-bit numbers today); anything longer is not a batch id.
MAX_BATCH_ID_CHARS = 20
BATCH_ID = re.compile(rf"[0-9]{{1,{MAX_BATCH_ID_CHARS}}}")
WATCH_ROUTE = "/api/v1/watch/batches/{batch_id}"
# Matches any rest of the path, empty and `..%2F..` included, so each gets a 400, not a 404.
_WATCH_PATTERN = "/api/v1/watch/batches/{batch_id:.*}"
#: `watch(batch_id, account)` answers False when the monitor has no room for another watched
#: batch, and raises `WatchRefused` for an account it cannot act for.
WatchFn = Callable[[str, str | None], bool]
BOX_WEBHOOK_ROUTE = "/api/v1/box/webhook"
#: Verifies one Box notification (body, headers) and acts on it if it is Box's.
BoxWebhookFn = Callable[[bytes, Mapping[str, str]], Verdict]
BOX_WEBHOOK_KEY = web.AppKey("box_webhook", object)


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


@web.middleware
async def _api_auth(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Every `/api/` route needs the bearer token; bad input is a 400 listing the problems."""
    if (
        request.path.startswith("/api/")
        and request.path != BOX_WEBHOOK_ROUTE  # Box signs; it sends no bearer token
        and TOKEN_KEY in request.app
    ):
        expected = request.app[TOKEN_KEY].get_secret_value().encode()
        given = request.headers.get("Authorization", "").removeprefix("Bearer ").encode()
        if not secrets.compare_digest(given, expected):
            return web.json_response(
                {"error": "unauthorized"}, status=401, headers={"WWW-Authenticate": "Bearer"}
            )
        try:
            return await handler(request)
        except InvalidInput as exc:
            return web.json_response(
                {"error": "invalid input", "problems": exc.problems}, status=400
            )
    return await handler(request)


async def _watch(request: web.Request) -> web.Response:
    batch_id = request.match_info["batch_id"]
    if BATCH_ID.fullmatch(batch_id) is None:  # never echoed: it is the caller's text
        return web.json_response(
            {"error": f"invalid batch id: expected a Box id of 1 to {MAX_BATCH_ID_CHARS} digits"},
            status=400,
        )
    watch: WatchFn = request.app[WATCH_KEY]  # type: ignore[assignment]
    account = request.query.get("account")
    try:
        watched = watch(batch_id, account)
    except WatchRefused as exc:
        return web.json_response({"error": str(exc)}, status=exc.status)
    if not watched:
        return web.json_response(
            {"error": "too many watched batches (http.max_watched_batches)"}, status=429
        )
    body = {"batch_id": batch_id, "watched": True}
    if account is not None:
        body["account"] = account
    return web.json_response(body, status=202)


def _store(request: web.Request) -> SilenceStore:
    store: SilenceStore = request.app[SILENCES_KEY]  # type: ignore[assignment]
    return store


async def _json_body(request: web.Request) -> dict[str, Any]:
    raw = await request.content.read(MAX_BODY_BYTES + 1)
    if len(raw) > MAX_BODY_BYTES:
        raise InvalidInput([f"body: at most {MAX_BODY_BYTES} bytes"])
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise InvalidInput(["body: expected a JSON object"]) from None
    if not isinstance(body, dict):
        raise InvalidInput(["body: expected a JSON object"])
    return body


async def _list_silences(request: web.Request) -> web.Response:
    """Active and pending silences; `?all=true` expired ones too."""
    now = time.time()
    every = request.query.get("all", "").lower() in ("1", "true", "yes")
    silences = await _store(request).list_silences(ended_after=None if every else now)
    return web.json_response({"silences": [silence_json(s, now) for s in silences]})


async def _add_silence(request: web.Request) -> web.Response:
    """`{"match": {"template_id": "123"}, "duration": "2h", "comment": "...",
    "created_by": "..."}` -> 201 with the silence."""
    body = await _json_body(request)
    problems = [f"body.{key}: unknown key" for key in body
                if key not in ("match", "duration", "comment", "created_by")]
    if not isinstance(body.get("match"), dict):
        problems.append("body.match: expected an object like a route's match")
    for key in ("duration", "comment"):
        if not isinstance(body.get(key), str | int | float) or isinstance(body.get(key), bool):
            problems.append(f"body.{key}: required")
    if problems:
        raise InvalidInput(problems)
    try:
        duration_s = parse_duration_s(body["duration"])
    except ValueError as exc:
        raise InvalidInput([f"body.duration: {exc}"]) from None
    now = time.time()
    created = new_silence(
        match_data(body["match"]),
        duration_s=duration_s,
        comment=str(body["comment"]),
        created_by=str(body.get("created_by") or "api"),
        now=now,
    )
    await _store(request).add_silence(created)
    return web.json_response(silence_json(created, now), status=201)


async def _expire_silence(request: web.Request) -> web.Response:
    now = time.time()
    expired = await _store(request).expire_silence(request.match_info["silence_id"], now)
    if expired is None:
        return web.json_response({"error": "no such silence"}, status=404)
    return web.json_response(silence_json(expired, now))


async def _list_events(request: web.Request) -> web.Response:
    """Newest first, filtered like `events list` (`since`, `batch`, `job`, `type`, `status`),
    of one Box account (`account`, default the first configured); `next` is the URL of the
    following page, null on the last."""
    q = request.query
    problems = [f"query.{key}: unknown filter" for key in q if key not in
                ("since", "batch", "job", "type", "status", "limit", "before", "account")]
    limit, before, since = EVENTS_PAGE, None, None
    try:
        limit = min(int(q.get("limit", EVENTS_PAGE)), MAX_EVENTS_PAGE)
        before = int(q["before"]) if "before" in q else None
        if limit < 1:
            raise ValueError
    except ValueError:
        problems.append("query.limit, query.before: expected positive whole numbers")
    if "since" in q:
        try:
            since = parse_since(q["since"], time.time())
        except ValueError as exc:
            problems.append(f"query.{exc}")
    if problems:
        raise InvalidInput(problems)
    query = EventQuery(since=since, batch_id=q.get("batch"), job_id=q.get("job"),
                       type=q.get("type"), status=q.get("status"), before_seq=before,
                       limit=limit)
    events: EventsFn = request.app[EVENTS_KEY]  # type: ignore[assignment]
    records = await events(query, q.get("account"))
    following = None
    if len(records) == limit:
        following = str(request.rel_url.update_query(before=records[-1].seq))
    return web.json_response({"events": [event_json(r) for r in records], "next": following})
async def _box_webhook(request: web.Request) -> web.Response:
    """200 for a verified notification (and for a replay of one: Box stops retrying it, and it
    does nothing); 401 for a bad or stale signature, which does nothing but count."""
    if request.content_length is not None and request.content_length > MAX_NOTIFICATION_BYTES:
        return web.json_response({"error": "body too large"}, status=413)
    body = await request.content.read(MAX_NOTIFICATION_BYTES + 1)
    if len(body) > MAX_NOTIFICATION_BYTES:
        return web.json_response({"error": "body too large"}, status=413)
    ingest: BoxWebhookFn = request.app[BOX_WEBHOOK_KEY]  # type: ignore[assignment]
    verdict = ingest(body, request.headers)
    if verdict in (Verdict.BAD_SIGNATURE, Verdict.STALE):
        return web.json_response({"error": "signature refused"}, status=401)
    return web.json_response({"status": verdict.value})


def build_app(
    registry: CollectorRegistry,
    ready: ReadyCheck,
    *,
    watch: WatchFn | None = None,
    api_token: SecretStr | None = None,
    live: LiveCheck = lambda: None,
    ui: StatusPage | None = None,
    silences: SilenceStore | None = None,
    events: EventsFn | None = None,
    box_webhook: BoxWebhookFn | None = None,
) -> web.Application:
    app = web.Application(middlewares=[_api_auth])
    app[REGISTRY_KEY] = registry
    app[READY_KEY] = ready
    app[LIVE_KEY] = live
    app.router.add_get("/metrics", _metrics)
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/readyz", _readyz)
    if ui is not None:
        ui.add_routes(app)
    if box_webhook is not None:
        app[BOX_WEBHOOK_KEY] = box_webhook
        app.router.add_post(BOX_WEBHOOK_ROUTE, _box_webhook)
    if api_token is None or not api_token.get_secret_value():
        return app
    app[TOKEN_KEY] = api_token
    if watch is not None:
        app[WATCH_KEY] = watch
        app.router.add_post(_WATCH_PATTERN, _watch)
    if silences is not None:
        app[SILENCES_KEY] = silences
        app.router.add_get("/api/v1/silences", _list_silences)
        app.router.add_post("/api/v1/silences", _add_silence)
        app.router.add_delete("/api/v1/silences/{silence_id}", _expire_silence)
    if events is not None:
        app[EVENTS_KEY] = events
        app.router.add_get("/api/v1/events", _list_events)
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
