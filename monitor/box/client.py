"""An asyncio client for Box's Doc Gen API (version 2025.0) on aiohttp.

Every call sends `box-version: 2025.0` and a bearer token, has its own timeout, and is retried
the way Box advises: a 429 waits `retry-after` (at most `max_retry_after_s`: a longer one is
cut down, logged and counted, here and in the shared budget); 5xx, connection failures,
timeouts and bodies that are not valid JSON or do not match the schema back off exponentially
with jitter; at most `max_attempts` attempts in all. A 401 renews the token once. Other 4xx
fail at once.

`POST /docgen_batches` is not idempotent: once Box may have received it, it is not repeated.
It is retried only when Box certainly did not act on it (429, a connection that never opened, or
a token that could not be obtained).

Each attempt is counted in `api_requests{endpoint,code}` and timed in
`api_request_duration{endpoint}`; each retry is logged (`box_request_retry`) and counted in
`api_retries{reason}`. The endpoint label is the route template, never a job or batch id.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncGenerator, Awaitable, Callable, Mapping, Sequence
from contextlib import aclosing
from types import TracebackType
from typing import Any, Self, TypeVar
from urllib.parse import quote

import aiohttp
import orjson
import structlog
from pydantic import TypeAdapter, ValidationError
from yarl import URL

from monitor import __version__
from monitor.box import _http
from monitor.box._http import DEFAULT_MAX_RETRY_AFTER_S
from monitor.box.auth import Auth
from monitor.box.budget import Priority, RequestBudget
from monitor.box.errors import (
    BoxBadResponse,
    BoxError,
    BoxNotFound,
    BoxRateLimited,
    BoxRequestError,
    BoxServerError,
    BoxTokenUnavailable,
    BoxUnauthorized,
)
from monitor.box.listing import ListingPage, parse_listing
from monitor.box.models import (
    DocGenBatch,
    DocGenJob,
    DocGenJobs,
    DocGenJobsFull,
    User,
    Webhook,
    Webhooks,
)
from monitor.box.webhooks import DOCGEN_TRIGGERS
from monitor.metrics import Metrics

__all__ = [
    "BOX_VERSION",
    "EP_BATCHES",
    "EP_BATCH_JOBS",
    "EP_JOB",
    "EP_JOBS",
    "EP_USER_ME",
    "MAX_PAGE_SIZE",
    "BoxClient",
]

BOX_VERSION = "2025.0"
MAX_PAGE_SIZE = 1000

# Route templates: the `endpoint` label of every metric and log line.
EP_JOBS = "/2.0/docgen_jobs"
EP_JOB = "/2.0/docgen_jobs/{job_id}"
EP_BATCH_JOBS = "/2.0/docgen_batch_jobs/{batch_id}"
EP_BATCHES = "/2.0/docgen_batches"
EP_USER_ME = "/2.0/users/me"
EP_WEBHOOKS = "/2.0/webhooks"
EP_WEBHOOK = "/2.0/webhooks/{webhook_id}"
# What `GET /users/me` is asked for: the enterprise is sent only when asked.
_USER_FIELDS = "id,type,name,login,enterprise"

_USER_AGENT = f"docgen-monitor/{__version__}"

T = TypeVar("T")
P = TypeVar("P", DocGenJobs, DocGenJobsFull, ListingPage)

Sleep = Callable[[float], Awaitable[None]]

# The batch reference is a pydantic dataclass (it is nested in every job), so it validates
# through an adapter.
_BATCH = TypeAdapter(DocGenBatch)


class BoxClient:
    """The Doc Gen endpoints the monitor uses. Use as `async with BoxClient(...) as box:`.

    Pass `session` to share one `aiohttp.ClientSession` per target service (the caller closes
    it); without one, the client creates its own and closes it on exit. `auth` is not closed,
    except by `replace_auth`. Token requests draw from `budget` too.
    `sleep` is what the client awaits between attempts (tests pass a recorder).
    """

    def __init__(
        self,
        base_url: str,
        auth: Auth,
        *,
        session: aiohttp.ClientSession | None = None,
        metrics: Metrics | None = None,
        timeout_s: float = 30.0,
        max_attempts: int = 5,
        backoff_base_s: float = 0.5,
        backoff_max_s: float = 30.0,
        max_retry_after_s: float = DEFAULT_MAX_RETRY_AFTER_S,
        page_size: int = MAX_PAGE_SIZE,
        sleep: Sleep = asyncio.sleep,
        rng: random.Random | None = None,
        budget: RequestBudget | None = None,
    ) -> None:
        if timeout_s <= 0:
            raise ValueError(f"timeout_s must be positive, got {timeout_s}")
        if max_attempts < 1:
            raise ValueError(f"max_attempts must be at least 1, got {max_attempts}")
        if backoff_base_s < 0 or backoff_max_s < 0 or max_retry_after_s < 0:
            raise ValueError("backoff_base_s, backoff_max_s and max_retry_after_s must be >= 0")
        self._base_url = base_url.rstrip("/")
        self._auth = auth
        self._session = session
        self._owns_session = session is None
        self._metrics = metrics
        self._timeout_s = timeout_s
        self._max_attempts = max_attempts
        self._backoff_base_s = backoff_base_s
        self._backoff_max_s = backoff_max_s
        self._max_retry_after_s = max_retry_after_s
        self._page_size = _clamp_page_size(page_size)
        self._sleep = sleep
        self._rng = rng if rng is not None else random.Random()
        self.budget = budget
        auth.bind_budget(budget)
        self._log = structlog.get_logger(__name__)

    @property
    def auth(self) -> Auth:
        return self._auth

    async def replace_auth(self, auth: Auth) -> None:
        """Use `auth` from the next attempt on (a reload brought new credentials) and close the
        old one; a call waiting on the old one's token request retries with the new one."""
        auth.bind_budget(self.budget)
        old, self._auth = self._auth, auth
        await old.aclose()

    async def __aenter__(self) -> Self:
        self._ensure_session()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the session if this client created it; idempotent."""
        if self._owns_session and self._session is not None:
            session, self._session = self._session, None
            await session.close()

    # -- the operations ----------------------------------------------------------------------

    async def iter_job_pages(
        self, page_size: int | None = None
    ) -> AsyncGenerator[DocGenJobsFull, None]:
        """Every job of the calling user, page by page (`GET /2.0/docgen_jobs`). A failure part
        way raises: the caller must treat what it has seen as a partial listing."""
        pages = self._pages(
            EP_JOBS,
            "/2.0/docgen_jobs",
            DocGenJobsFull.model_validate_json,
            page_size,
            self._log,
            Priority.SWEEP,
        )
        async with aclosing(pages):  # a caller that stops early closes the inner generator too
            async for page in pages:
                yield page

    async def iter_job_listing(
        self, page_size: int | None = None, *, priority: Priority = Priority.SWEEP
    ) -> AsyncGenerator[ListingPage, None]:
        """`iter_job_pages` validated against the sweep's projection (`JobListingPage`): only
        the fields a sweep reads, as plain dicts, at about a third of the cost. An entry that
        breaks the projection is set aside in `ListingPage.invalid`, not a failed page.
        Discovery reads the head at active `priority`."""
        pages = self._pages(
            EP_JOBS,
            "/2.0/docgen_jobs",
            parse_listing,
            page_size,
            self._log,
            priority,
        )
        async with aclosing(pages):
            async for page in pages:
                yield page

    async def list_batch_jobs(self, batch_id: str) -> list[DocGenJob]:
        """Every job of one batch, all pages (`GET /2.0/docgen_batch_jobs/{batch_id}`)."""
        path = f"/2.0/docgen_batch_jobs/{_segment(batch_id)}"
        log = self._log.bind(batch_id=batch_id)
        jobs: list[DocGenJob] = []
        pages = self._pages(
            EP_BATCH_JOBS, path, DocGenJobs.model_validate_json, None, log, Priority.ACTIVE
        )
        async for page in pages:
            jobs.extend(page.entries)
        return jobs

    async def get_job(self, job_id: str, *, priority: Priority = Priority.ACTIVE) -> DocGenJob:
        """One job (`GET /2.0/docgen_jobs/{job_id}`); `BoxNotFound` if Box does not know it."""
        path = f"/2.0/docgen_jobs/{_segment(job_id)}"
        log = self._log.bind(job_id=job_id)
        return await self._call(
            "GET", EP_JOB, path, DocGenJob.model_validate_json, log=log, priority=priority
        )

    async def get_current_user(self) -> User:
        """The user the token acts for, with its enterprise (`GET /2.0/users/me`). Not a Doc Gen
        route: it exists in Box's unversioned API, so it is sent without `box-version`."""
        return await self._call(
            "GET",
            EP_USER_ME,
            "/2.0/users/me",
            User.model_validate_json,
            params={"fields": _USER_FIELDS},
            log=self._log,
            versioned=False,
        )

    async def create_batch(
        self,
        template_file_id: str,
        destination_folder_id: str,
        output_type: str,
        documents: list[dict[str, Any]],
        *,
        template_file_version_id: str | None = None,
    ) -> DocGenBatch:
        """Start one batch (`POST /2.0/docgen_batches`): one job per item of `documents`, each
        `{"generated_file_name": str, "user_input": {...}}`. Box answers 202 (or 200) with the
        batch id only; list its jobs with `list_batch_jobs`."""
        body: dict[str, Any] = {
            "file": {"type": "file", "id": template_file_id},
            "input_source": "api",
            "destination_folder": {"type": "folder", "id": destination_folder_id},
            "output_type": output_type,
            "document_generation_data": documents,
        }
        if template_file_version_id is not None:
            body["file_version"] = {"type": "file_version", "id": template_file_version_id}
        return await self._call(
            "POST",
            EP_BATCHES,
            "/2.0/docgen_batches",
            _BATCH.validate_json,
            body=orjson.dumps(body),
            ok=(200, 202),
            idempotent=False,
            log=self._log.bind(template_file_id=template_file_id),
        )

    # -- webhooks (unversioned API: no box-version) ------------------------------------------

    async def create_webhook(
        self, file_id: str, address: str, triggers: Sequence[str] = DOCGEN_TRIGGERS
    ) -> Webhook:
        """`POST /2.0/webhooks` on a file (the Doc Gen triggers exist on files only)."""
        body = {"target": {"id": file_id, "type": "file"}, "address": address,
                "triggers": list(triggers)}
        return await self._call(
            "POST", EP_WEBHOOKS, EP_WEBHOOKS, Webhook.model_validate_json,
            body=orjson.dumps(body), ok=(200, 201), idempotent=False,
            log=self._log.bind(file_id=file_id), versioned=False,
        )

    async def list_webhooks(self) -> list[Webhook]:
        """Every webhook of the calling user and app (`GET /2.0/webhooks`, marker-paged)."""
        hooks: list[Webhook] = []
        marker: str | None = None
        for _ in range(10_000):  # a marker that never ends is Box's bug, not an endless loop
            params = {"limit": "200"} if marker is None else {"limit": "200", "marker": marker}
            page = await self._call(
                "GET", EP_WEBHOOKS, EP_WEBHOOKS, Webhooks.model_validate_json,
                params=params, log=self._log, versioned=False,
            )
            hooks.extend(page.entries)
            marker = page.next_marker
            if not marker:
                break
        return hooks

    async def get_webhook(self, webhook_id: str) -> Webhook:
        path = f"/2.0/webhooks/{_segment(webhook_id)}"
        return await self._call(
            "GET", EP_WEBHOOK, path, Webhook.model_validate_json, log=self._log, versioned=False
        )

    async def delete_webhook(self, webhook_id: str) -> None:
        path = f"/2.0/webhooks/{_segment(webhook_id)}"
        await self._call(
            "DELETE", EP_WEBHOOK, path, lambda _: None, ok=(204,), log=self._log, versioned=False
        )

    # -- paging ------------------------------------------------------------------------------

    async def _pages(
        self,
        endpoint: str,
        path: str,
        parse: Callable[[bytes], P],
        page_size: int | None,
        log: Any,
        priority: Priority,
    ) -> AsyncGenerator[P, None]:
        """Follow `next_marker` until it is `None` or empty."""
        limit = str(self._page_size if page_size is None else _clamp_page_size(page_size))
        marker: str | None = None
        seen: set[str] = set()
        while True:
            params = {"limit": limit} if marker is None else {"limit": limit, "marker": marker}
            page = await self._call(
                "GET",
                endpoint,
                path,
                parse,
                params=params,
                log=log,
                priority=priority,
            )
            yield page
            marker = page.get("next_marker") if isinstance(page, dict) else page.next_marker
            if not marker:
                return
            if marker in seen:
                raise BoxBadResponse("GET", path, endpoint, 200, "next_marker repeats a marker")
            seen.add(marker)

    # -- one request, with its retries ------------------------------------------------------

    def _ensure_session(self) -> aiohttp.ClientSession:
        if self._session is None:
            if not self._owns_session:
                raise RuntimeError("the session given to BoxClient has been released")
            self._session = aiohttp.ClientSession()
        return self._session

    async def _call(
        self,
        method: str,
        endpoint: str,
        path: str,
        parse: Callable[[bytes], T],
        *,
        params: Mapping[str, str] | None = None,
        body: bytes | None = None,
        ok: tuple[int, ...] = (200,),
        idempotent: bool = True,
        log: Any,
        priority: Priority = Priority.ACTIVE,
        versioned: bool = True,
    ) -> T:
        session = self._ensure_session()
        url = URL(self._base_url + path, encoded=True)
        refreshed = False
        attempt = 0
        while True:
            attempt += 1
            token: str | None = None
            try:
                token = await self._auth.token()
                if self.budget is not None:
                    await self.budget.acquire(priority)
                raw = await _http.send(
                    session,
                    method,
                    url,
                    endpoint=endpoint,
                    path=path,
                    timeout_s=self._timeout_s,
                    metrics=self._metrics,
                    headers=self._headers(token, json_body=body is not None, versioned=versioned),
                    params=params,
                    data=body,
                )
                return _parse(raw, method, path, endpoint, parse, ok)
            except BoxUnauthorized as exc:
                if refreshed or not self._auth.can_refresh or attempt >= self._max_attempts:
                    raise _final_unauthorized(
                        exc, refreshed, self._auth.can_refresh, attempt
                    ) from None
                refreshed = True
                await self._auth.invalidate(token or "")
                self._note_retry(log, endpoint, attempt, "unauthorized", 0.0, exc)
            except BoxError as exc:
                retry_after_s = self._retry_after(exc)
                if self.budget is not None and isinstance(exc, BoxRateLimited):
                    await self.budget.on_rate_limited(retry_after_s)  # shared by every task
                reason = exc.retry_reason
                safe = idempotent or token is None or _not_received(exc)
                if reason is None or not safe or attempt >= self._max_attempts:
                    exc.attempts = attempt
                    raise
                delay = self._delay(retry_after_s, attempt)
                self._note_retry(log, endpoint, attempt, reason, delay, exc)
                await self._sleep(delay)

    def _headers(self, token: str, *, json_body: bool, versioned: bool) -> dict[str, str]:
        headers = {
            "Authorization": f"Bearer {token}",
            "Accept": "application/json",
            "User-Agent": _USER_AGENT,
        }
        if versioned:
            headers["box-version"] = BOX_VERSION
        if json_body:
            headers["Content-Type"] = "application/json"
        return headers

    def _retry_after(self, exc: BoxError) -> float | None:
        """Box's `retry-after`, at most `max_retry_after_s`; a longer one is logged and counted
        once, by the caller that got the answer, not by those that share it."""
        if isinstance(exc, BoxTokenUnavailable):
            value = exc.retry_after_s
            return None if value is None else min(value, self._max_retry_after_s)
        return _http.clamp_retry_after(
            exc.retry_after_s, self._max_retry_after_s, endpoint=exc.endpoint, metrics=self._metrics
        )

    def _delay(self, retry_after_s: float | None, attempt: int) -> float:
        """Box's `retry-after` (already clamped) when it sent one; else exponential backoff
        with jitter."""
        if retry_after_s is not None:
            return retry_after_s
        backoff: float = self._backoff_base_s * 2.0 ** (attempt - 1) * self._rng.uniform(0.5, 1.5)
        return min(backoff, self._backoff_max_s)

    def _note_retry(
        self, log: Any, endpoint: str, attempt: int, reason: str, delay_s: float, exc: BoxError
    ) -> None:
        log.warning(
            "box_request_retry",
            endpoint=endpoint,
            attempt=attempt,
            max_attempts=self._max_attempts,
            reason=reason,
            delay_s=round(delay_s, 3),
            error=str(exc),
        )
        if self._metrics is not None:
            self._metrics.api_retries.labels(reason=reason).inc()


def _parse(
    raw: _http.RawResponse,
    method: str,
    path: str,
    endpoint: str,
    parse: Callable[[bytes], T],
    ok: tuple[int, ...],
) -> T:
    status = raw.status
    if status in ok:
        try:
            return parse(raw.body)
        except ValidationError as exc:
            raise BoxBadResponse(method, path, endpoint, status, _http.describe(exc)) from None
    if status < 400:
        raise BoxBadResponse(method, path, endpoint, status, "unexpected status")
    error = _http.client_error(raw.body)
    if status == 401:
        raise BoxUnauthorized(method, path, endpoint, status, error)
    if status == 404:
        raise BoxNotFound(method, path, endpoint, status, error)
    if status == 429:
        retry_after = _http.parse_retry_after(raw.headers)
        raise BoxRateLimited(method, path, endpoint, status, error, retry_after_s=retry_after)
    if status >= 500:
        retry_after = _http.parse_retry_after(raw.headers)
        raise BoxServerError(method, path, endpoint, status, error, retry_after_s=retry_after)
    raise BoxRequestError(method, path, endpoint, status, error)


def _final_unauthorized(
    exc: BoxUnauthorized, refreshed: bool, can_refresh: bool, attempt: int
) -> BoxUnauthorized:
    if not can_refresh:
        note = "this token cannot be renewed"
    elif refreshed:
        note = "a renewed token was refused too"
    else:
        note = "no attempt left to renew the token"
    final = BoxUnauthorized(exc.method, exc.path, exc.endpoint, exc.status, exc.error, note=note)
    final.attempts = attempt
    return final


def _not_received(exc: BoxError) -> bool:
    """True when Box certainly did not act on the request: it refused it for rate (429), or the
    connection never opened."""
    return isinstance(exc, BoxRateLimited) or isinstance(
        exc.__cause__, aiohttp.ClientConnectorError
    )


def _clamp_page_size(page_size: int) -> int:
    if page_size < 1:
        raise ValueError(f"page_size must be at least 1, got {page_size}")
    return min(page_size, MAX_PAGE_SIZE)


def _segment(value: str) -> str:
    """An id as one path segment: percent-encoded, never `.` or `..` or empty."""
    if value in ("", ".", ".."):
        raise ValueError(f"not a valid Box id: {value!r}")
    return quote(value, safe="")
