"""The status page's routes: `GET /` (the whole page), `GET /ui/live` (its live part, which
`static/live.js` swaps in every few seconds), `POST /ui/session` and `/ui/session/end` (sign in
and out for actions, with the API token), `POST /ui/dead-letters/retry`, `POST /ui/silences`
and `POST /ui/silences/expire` (actions), and
`/static/` (the page's own CSS and script: no CDN, no build step).

Reading: open to whoever reaches the listen address, or, with `http.ui_token`, to a request
with `Authorization: Bearer <token>` or HTTP basic auth whose password is the token (any user
name; a browser asks for it). Acting: a session started with `http.api_token` (an HttpOnly,
`SameSite=Strict` cookie) and the per-session CSRF token the page puts in each form, or the
API token itself as a bearer header (a script; no cookie, so nothing to forge). A cross-site
POST fails on all three counts: no cookie, no CSRF token, a foreign `Origin`.

Every value on the page is rendered by Jinja2 with autoescaping; texts from Box go through the
`untrusted` filter too (control, bidirectional and zero-width characters out, length bounded).
No inline script or style: the Content-Security-Policy allows only the page's own files."""

from __future__ import annotations

import asyncio
import base64
import binascii
import secrets
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlsplit

import jinja2
import structlog
from aiohttp import web
from pydantic import SecretStr

from monitor.config import parse_duration_s
from monitor.errors import InvalidInput, StoreError
from monitor.notify.silences import new_silence, parse_matchers
from monitor.safe_text import clean
from monitor.ui.view import StatusSources, gather, status_class
from monitor.views import match_text, silence_state

STATIC_DIR = Path(__file__).parent / "static"
SESSION_COOKIE = "docgen_monitor_session"
SESSION_TTL_S = 12 * 3600.0
MAX_SESSIONS = 1000  # the oldest goes first beyond this
BAD_TOKEN_DELAY_S = 1.0  # a wrong API token costs the guesser a second
#: How much of one text from Box the page shows (a 10 kB error text is cut, with a note).
MAX_TEXT_CHARS = 400
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}
#: Outcomes an action redirects to (`/?done=...`): fixed texts, never the caller's.
NOTICES = {
    "signed-in": "Signed in: actions are enabled for this browser session.",
    "signed-out": "Signed out.",
    "bad-token": "That is not the API token.",
    "retried": "Dead letters put back in the queue: they are delivered again now.",
    "nothing": "Nothing to retry: the dead letter was retried or dropped already.",
    "no-actions": "Actions are off: set http.api_token to enable them.",
    "silenced": "Silence added: matching events are recorded but not sent until it ends.",
    "silence-refused": "No silence added: give a match (KEY=VALUE, e.g. template_id=123), a "
    "duration (2h, 1h30m) and a comment.",
    "silence-expired": "Silence ended: matching events from now on are sent again.",
    "no-silence": "No such silence: it was expired or pruned already.",
}
#: Who the store records as a silence's author when the page added it.
PAGE_AUTHOR = "status page"
# Zero-width characters that hide text in a name; control and bidi characters go by `clean`.
_INVISIBLE = {c: None for c in (0x200B, 0x200C, 0x200D, 0x2060, 0xFEFF, 0x00AD)}

log = structlog.get_logger(__name__)

#: The answer while the state store cannot be read (the live script keeps the last good view
#: and says it cannot reach the monitor).
STORE_DOWN = (
    "<!doctype html><title>docgen-monitor</title><h1>docgen-monitor</h1>"
    "<p>The state store does not answer: the status page cannot be shown. "
    "<a href=\"/readyz\">/readyz</a> and the daemon's log say more.</p>"
)

SOURCES_KEY = web.AppKey("ui_sources", StatusSources)
UI_KEY = web.AppKey("ui", object)


def untrusted(text: object, limit: int = MAX_TEXT_CHARS) -> str:
    """A text from Box, fit to show: no control, bidirectional or zero-width characters,
    at most `limit` characters (and how many were left out). Escaping is the template's."""
    value = clean(str(text)).translate(_INVISIBLE)
    if len(value) <= limit:
        return value
    return f"{value[:limit]}… ({len(value) - limit:,} more characters)"


def ago(at: float | None, now: float) -> str:
    if at is None:
        return "never"
    return duration(max(0.0, now - at)) + " ago"


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "\u2013"
    if seconds < 1:
        return f"{seconds:.1f} s"
    s = int(seconds)
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60} s"
    if s < 86400:
        return f"{s // 3600} h {s % 3600 // 60} min"
    return f"{s // 86400} d {s % 86400 // 3600} h"


def utc(at: float | None) -> str:
    if at is None:
        return ""
    return datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("monitor.ui", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["untrusted"] = untrusted
    env.filters["duration"] = duration
    env.filters["utc"] = utc
    env.globals["ago"] = ago
    env.globals["status_class"] = status_class
    env.globals["silence_state"] = silence_state
    env.globals["match_text"] = match_text
    return env


@dataclass
class _Session:
    csrf: str
    expires_at: float  # monotonic


class StatusPage:
    """The page's settings and its sign-in sessions (in memory: a restart signs everyone out)."""

    def __init__(
        self,
        sources: StatusSources,
        *,
        ui_token: SecretStr | None = None,
        api_token: SecretStr | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.sources = sources
        self.ui_token = _secret(ui_token)
        self.api_token = _secret(api_token)
        self.monotonic = monotonic
        self.env = _environment()
        self._sessions: OrderedDict[str, _Session] = OrderedDict()

    def add_routes(self, app: web.Application) -> None:
        app[SOURCES_KEY] = self.sources
        app.router.add_get("/", self._wrap(self._page))
        app.router.add_get("/ui/live", self._wrap(self._live))
        app.router.add_post("/ui/session", self._wrap(self._sign_in))
        app.router.add_post("/ui/session/end", self._wrap(self._sign_out))
        app.router.add_post("/ui/dead-letters/retry", self._wrap(self._retry))
        app.router.add_post("/ui/silences", self._wrap(self._add_silence))
        app.router.add_post("/ui/silences/expire", self._wrap(self._expire_silence))
        app.router.add_get("/static/{name}", self._wrap(self._static))

    # -- access -----------------------------------------------------------------------------

    def _wrap(
        self, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        """Every route: the read check first, the security headers on every answer."""

        async def wrapped(request: web.Request) -> web.StreamResponse:
            if not self._may_read(request):
                response: web.StreamResponse = web.Response(
                    status=401,
                    text="401: this page needs http.ui_token (basic auth password or bearer)",
                    headers={"WWW-Authenticate": 'Basic realm="docgen-monitor", charset="UTF-8"'},
                )
            else:
                response = await handler(request)
            for name, value in SECURITY_HEADERS.items():
                response.headers.setdefault(name, value)
            return response

        return wrapped

    def _may_read(self, request: web.Request) -> bool:
        if self.ui_token is None:
            return True
        header = request.headers.get("Authorization", "")
        scheme, _, value = header.partition(" ")
        given = b""
        if scheme.lower() == "bearer":
            given = value.strip().encode()
        elif scheme.lower() == "basic":
            try:
                decoded = base64.b64decode(value.strip(), validate=True)
            except (binascii.Error, ValueError):
                return False
            given = decoded.partition(b":")[2]
        return secrets.compare_digest(given, self.ui_token)

    def _bearer_acts(self, request: web.Request) -> bool:
        """A script acting with `Authorization: Bearer <api token>` (when no ui_token takes
        that header for reading)."""
        if self.api_token is None or self.ui_token is not None:
            return False
        scheme, _, value = request.headers.get("Authorization", "").partition(" ")
        return scheme.lower() == "bearer" and secrets.compare_digest(
            value.strip().encode(), self.api_token
        )

    def _session(self, request: web.Request) -> _Session | None:
        sid = request.cookies.get(SESSION_COOKIE)
        session = self._sessions.get(sid) if sid else None
        if session is None or session.expires_at <= self.monotonic():
            return None
        return session

    @staticmethod
    def _same_origin(request: web.Request) -> bool:
        """A browser names the page that sent a POST (`Origin`); it must be this one. A
        browser always sends it on a POST (`null` when hidden: refused); a script may not."""
        origin = request.headers.get("Origin")
        if origin is None or origin == "null":
            return origin is None
        return urlsplit(origin).netloc == request.host

    # -- pages ------------------------------------------------------------------------------

    async def _render(self, template: str, request: web.Request) -> str:
        view = await gather(self.sources)
        session = self._session(request)
        notice = NOTICES.get(request.query.get("done", ""))
        return self.env.get_template(template).render(
            view=view,
            csrf=session.csrf if session is not None else None,
            actions=self.api_token is not None,
            notice=notice,
        )

    async def _page(self, request: web.Request) -> web.Response:
        return await self._answer("page.html.j2", request)

    async def _live(self, request: web.Request) -> web.Response:
        return await self._answer("live.html.j2", request)

    async def _answer(self, template: str, request: web.Request) -> web.Response:
        try:
            body = await self._render(template, request)
        except StoreError as exc:
            # The store's message may name hosts and paths: the log has it, the page does not.
            log.error("status_page_store_failed", error=str(exc))
            return web.Response(
                status=503, text=STORE_DOWN, content_type="text/html", charset="utf-8"
            )
        return web.Response(text=body, content_type="text/html", charset="utf-8")

    async def _static(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        path = STATIC_DIR / name
        if "/" in name or name.startswith(".") or not path.is_file():
            raise web.HTTPNotFound()
        response = web.FileResponse(path)
        response.headers["Cache-Control"] = "no-cache"
        return response

    # -- actions ----------------------------------------------------------------------------

    async def _sign_in(self, request: web.Request) -> web.StreamResponse:
        if self.api_token is None:
            return _back("no-actions")
        if not self._same_origin(request):
            raise web.HTTPForbidden(text="cross-site request refused")
        form = await request.post()
        given = str(form.get("api_token", "")).encode()
        if not secrets.compare_digest(given, self.api_token):
            await asyncio.sleep(BAD_TOKEN_DELAY_S)
            return _back("bad-token")
        sid = secrets.token_urlsafe(32)
        self._sessions[sid] = _Session(secrets.token_urlsafe(32), self.monotonic() + SESSION_TTL_S)
        while len(self._sessions) > MAX_SESSIONS:
            self._sessions.popitem(last=False)
        response = _back("signed-in")
        response.set_cookie(
            SESSION_COOKIE, sid, httponly=True, samesite="Strict", path="/",
            max_age=int(SESSION_TTL_S), secure=request.secure,
        )
        return response

    async def _sign_out(self, request: web.Request) -> web.StreamResponse:
        session_error = await self._action_refused(request)
        if session_error is not None:
            return session_error
        sid = request.cookies.get(SESSION_COOKIE)
        if sid is not None:
            self._sessions.pop(sid, None)
        response = _back("signed-out")
        response.del_cookie(SESSION_COOKIE, path="/")
        return response

    async def _action_refused(self, request: web.Request) -> web.StreamResponse | None:
        """None when the request may act: the API token as a bearer header, or a session of
        this browser with its CSRF token, from this page."""
        if self.api_token is None:
            return _back("no-actions")
        if self._bearer_acts(request):
            return None
        if not self._same_origin(request):
            raise web.HTTPForbidden(text="cross-site request refused")
        session = self._session(request)
        form = await request.post()
        given = str(form.get("csrf", "")).encode()
        if session is None or not secrets.compare_digest(given, session.csrf.encode()):
            raise web.HTTPForbidden(text="sign in with the API token first (or the page is old)")
        return None

    async def _retry(self, request: web.Request) -> web.StreamResponse:
        refused = await self._action_refused(request)
        if refused is not None:
            return refused
        form = await request.post()
        notifier = str(form.get("notifier", ""))
        event_id = str(form.get("event_id", "")) or None
        account = self.sources.account(str(form.get("account", "")) or None)
        if not notifier:
            raise web.HTTPBadRequest(text="notifier is required")
        if account is None:  # the caller's text is not echoed
            raise web.HTTPBadRequest(text="name a configured account (account=)")
        retried = await account.retry_dead(notifier, event_id)
        if self._bearer_acts(request):
            return web.json_response({"retried": retried})
        return _back("retried" if retried else "nothing")

    async def _add_silence(self, request: web.Request) -> web.StreamResponse:
        refused = await self._action_refused(request)
        if refused is not None:
            return refused
        if self.sources.add_silence is None:
            return _back("no-actions")
        form = await request.post()
        try:
            silence = new_silence(
                parse_matchers(str(form.get("match", "")).split()),
                duration_s=parse_duration_s(str(form.get("duration", ""))),
                comment=str(form.get("comment", "")),
                created_by=PAGE_AUTHOR,
                now=self.sources.clock(),
            )
        except (InvalidInput, ValueError):
            return _back("silence-refused")
        await self.sources.add_silence(silence)
        return _back("silenced")

    async def _expire_silence(self, request: web.Request) -> web.StreamResponse:
        refused = await self._action_refused(request)
        if refused is not None:
            return refused
        if self.sources.expire_silence is None:
            return _back("no-actions")
        form = await request.post()
        expired = await self.sources.expire_silence(str(form.get("silence_id", "")))
        return _back("silence-expired" if expired is not None else "no-silence")


def _back(done: str) -> web.Response:
    """After a form: back to the page (303: the reload is a GET), with a fixed notice."""
    return web.Response(status=303, headers={"Location": f"/?done={done}#notice"})


def _secret(value: SecretStr | None) -> bytes | None:
    if value is None or not value.get_secret_value():
        return None
    return value.get_secret_value().encode()
