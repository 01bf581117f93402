"""One HTTP attempt against Box, shared by the client and the token grants.

`send` makes exactly one request with its own timeout, counts it in `api_requests{endpoint,code}`
and `api_request_duration{endpoint}`, and turns "no answer" into `BoxTimeout` or
`BoxConnectionError`. What the status means is for the caller to decide.

`clamp_retry_after` bounds what a `retry-after` may make anyone wait (`box.max_retry_after`):
Box may send 3600 or a date next year; the monitor never pauses longer than the operator chose.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any

import aiohttp
import structlog
from multidict import CIMultiDictProxy
from pydantic import ValidationError
from yarl import URL

from monitor.box.errors import BoxBadResponse, BoxConnectionError, BoxTimeout
from monitor.box.models import ClientError
from monitor.metrics import Metrics

__all__ = [
    "DEFAULT_MAX_RETRY_AFTER_S",
    "RawResponse",
    "clamp_retry_after",
    "client_error",
    "describe",
    "parse_retry_after",
    "send",
]

#: The longest `retry-after` honoured unless configured otherwise (`box.max_retry_after`).
DEFAULT_MAX_RETRY_AFTER_S = 120.0

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class RawResponse:
    status: int
    headers: CIMultiDictProxy[str]
    body: bytes


async def send(
    session: aiohttp.ClientSession,
    method: str,
    url: str | URL,
    *,
    endpoint: str,
    path: str,
    timeout_s: float,
    metrics: Metrics | None,
    headers: Mapping[str, str],
    params: Mapping[str, str] | None = None,
    data: Any = None,
) -> RawResponse:
    """One attempt. The whole exchange, body included, must finish within `timeout_s`.
    Redirects are not followed, so that a bearer token never travels to another host."""
    started = time.perf_counter()
    code = "error"
    try:
        async with session.request(
            method,
            url,
            headers=headers,
            params=params,
            data=data,
            timeout=aiohttp.ClientTimeout(total=timeout_s),
            allow_redirects=False,
        ) as resp:
            try:
                body = await resp.read()
            except aiohttp.ClientPayloadError as exc:
                raise BoxBadResponse(
                    method, path, endpoint, resp.status, f"incomplete body: {exc}"
                ) from exc
            code = str(resp.status)
            return RawResponse(resp.status, resp.headers, body)
    except TimeoutError as exc:
        raise BoxTimeout(method, path, endpoint, timeout_s) from exc
    except (aiohttp.ClientError, OSError) as exc:
        raise BoxConnectionError(method, path, endpoint, f"{type(exc).__name__}: {exc}") from exc
    finally:
        if metrics is not None:
            metrics.api_requests.labels(endpoint=endpoint, code=code).inc()
            metrics.api_request_duration.labels(endpoint=endpoint).observe(
                time.perf_counter() - started
            )


def parse_retry_after(headers: Mapping[str, str]) -> float | None:
    """`retry-after` in seconds (delta-seconds or an HTTP date), or `None` if absent or bad."""
    value = headers.get("retry-after")
    if value is None:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        seconds = when.timestamp() - time.time()
    if seconds != seconds or seconds == float("inf"):  # NaN or infinite
        return None
    return max(0.0, seconds)


def clamp_retry_after(
    seconds: float | None, max_s: float, *, endpoint: str | None, metrics: Metrics | None
) -> float | None:
    """`seconds`, or `max_s` if it is longer: then logged and counted in
    `retry_after_clamped`, so an operator sees that Box asked for more than was granted."""
    if seconds is None or seconds <= max_s:
        return seconds
    log.warning(
        "box_retry_after_clamped",
        endpoint=endpoint,
        retry_after_s=seconds,
        max_retry_after_s=max_s,
    )
    if metrics is not None:
        metrics.retry_after_clamped.inc()
    return max_s


def client_error(body: bytes) -> ClientError | None:
    """The `ClientError` in an error body, or `None` if the body is not one."""
    if not body:
        return None
    try:
        return ClientError.model_validate_json(body)
    except ValueError:
        return None


def describe(exc: ValidationError) -> str:
    """A short account of a validation failure that does not echo the offending input."""
    errors = exc.errors(include_url=False, include_context=False, include_input=False)
    if not errors:
        return "invalid body"
    first = errors[0]
    where = ".".join(str(p) for p in first["loc"]) or "body"
    more = f" (+{len(errors) - 1} more)" if len(errors) > 1 else ""
    return f"{where}: {first['msg']}{more}"
