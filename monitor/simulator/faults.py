"""Injected failures on Box routes: what a client must survive, on demand and reproducibly.

A fault fires for a `count` of requests, or with a seeded probability `rate`, or both (each
request fires with `rate` until `count` have fired), or always when neither is given. Latency
faults add up; of the faults that change the answer, the first that fires wins.
"""

from __future__ import annotations

import asyncio
import itertools
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Literal

import orjson
from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

from monitor.simulator import wire

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

RATE_LIMIT_HELP_URL = (
    "https://developer.box.com/guides/api-calls/permissions-and-errors/rate-limits/"
)


class FaultKind(StrEnum):
    FORBIDDEN = "403"  # Doc Gen switched off for the enterprise, or no access
    NOT_FOUND = "404"  # Box says the job is not there (gone, or not visible to this user)
    RATE_LIMITED = "429"
    INTERNAL_ERROR = "500"
    BAD_GATEWAY = "502"
    UNAVAILABLE = "503"
    LATENCY = "latency"
    TRUNCATED = "truncated"  # 200 whose body is a valid JSON prefix, cut off
    MALFORMED = "malformed"  # 200 whose body is not JSON at all
    SCHEMA = "schema"  # 200 whose JSON breaks Box's schema (e.g. entries without `status`)
    DISCONNECT = "disconnect"  # the connection is closed without an answer


#: What `/_sim/stats` counts for a request whose connection was dropped (nginx's "closed
#: without response").
DROPPED_STATUS = 444


# Answers that replace the handler's: status, Box code, message.
_ERRORS: dict[FaultKind, tuple[int, str, str]] = {
    FaultKind.FORBIDDEN: (
        403,
        "access_denied_insufficient_permissions",
        "Access denied - insufficient permission",
    ),
    FaultKind.NOT_FOUND: (404, "not_found", "Not Found"),
    FaultKind.RATE_LIMITED: (
        429,
        "rate_limit_exceeded",
        "Request rate limit exceeded, please try again later",
    ),
    FaultKind.INTERNAL_ERROR: (500, "internal_server_error", "Internal Server Error"),
    FaultKind.BAD_GATEWAY: (502, "bad_gateway", "Bad Gateway"),
    FaultKind.UNAVAILABLE: (503, "unavailable", "Unavailable"),
}


class FaultSpec(BaseModel):
    """The body of POST /_sim/faults."""

    model_config = ConfigDict(extra="forbid")

    route: Literal[
        "token", "create_batch", "list_jobs", "get_job", "batch_jobs", "users_me", "*"
    ] = "*"
    kind: FaultKind
    rate: float | None = Field(default=None, ge=0, le=1)
    count: int | None = Field(default=None, ge=1)
    # Seconds in the retry-after header of an error answer (429 and 503 default to 1; 0 sends
    # none). Any size: a client must cap what it is told (3600, 1e9).
    retry_after_s: float | None = Field(default=None, ge=0)
    # The header's text verbatim, when a test needs one Box might send badly ("1e9", a date).
    retry_after: str | None = Field(default=None, min_length=1, max_length=200)
    # ClientError code and message instead of the kind's own (a 403 saying Doc Gen is off).
    code: str | None = Field(default=None, min_length=1)
    message: str | None = Field(default=None, min_length=1)
    latency_s: float = Field(default=0.2, ge=0, le=60)

    def retry_after_header(self) -> str | None:
        if self.retry_after is not None:
            return self.retry_after
        seconds = self.retry_after_s
        if seconds is None:
            seconds = 1 if self.kind in (FaultKind.RATE_LIMITED, FaultKind.UNAVAILABLE) else 0
        if not seconds:
            return None
        return str(int(seconds)) if float(seconds).is_integer() else str(seconds)


@dataclass(slots=True)
class Fault:
    id: str
    spec: FaultSpec
    remaining: int | None
    fired: int = 0

    def public(self) -> dict[str, Any]:
        return {
            "fault_id": self.id,
            **self.spec.model_dump(mode="json"),
            "remaining": self.remaining,
            "fired": self.fired,
        }


@dataclass(frozen=True, slots=True)
class Draw:
    """What to do to one request: wait `latency_s`, then apply `fault` (if any)."""

    latency_s: float
    fault: Fault | None


class FaultRegistry:
    def __init__(self, rng: random.Random) -> None:
        self._rng = rng
        self._faults: list[Fault] = []
        self._ids = itertools.count(1)

    def add(self, spec: FaultSpec) -> Fault:
        fault = Fault(id=str(next(self._ids)), spec=spec, remaining=spec.count)
        self._faults.append(fault)
        return fault

    def remove(self, fault_id: str) -> bool:
        before = len(self._faults)
        self._faults = [f for f in self._faults if f.id != fault_id]
        return len(self._faults) != before

    def clear(self) -> None:
        self._faults.clear()

    def active(self) -> list[Fault]:
        return list(self._faults)

    def draw(self, route: str) -> Draw:
        latency_s = 0.0
        chosen: Fault | None = None
        for fault in self._faults:
            spec = fault.spec
            if spec.route not in ("*", route):
                continue
            is_latency = spec.kind is FaultKind.LATENCY
            if chosen is not None and not is_latency:
                continue
            if spec.rate is not None and self._rng.random() >= spec.rate:
                continue
            fault.fired += 1
            if fault.remaining is not None:
                fault.remaining -= 1
            if is_latency:
                latency_s += spec.latency_s
            else:
                chosen = fault
        self._faults = [f for f in self._faults if f.remaining is None or f.remaining > 0]
        return Draw(latency_s, chosen)


def _error_response(spec: FaultSpec) -> web.Response | None:
    """The answer that replaces the handler's, for faults that answer instead of it."""
    error = _ERRORS.get(spec.kind)
    if error is None:
        return None
    status, code, message = error
    retry_after = spec.retry_after_header()
    return wire.client_error(
        status,
        spec.code or code,
        spec.message or message,
        help_url=RATE_LIMIT_HELP_URL if spec.kind is FaultKind.RATE_LIMITED else wire.HELP_URL,
        headers={"retry-after": retry_after} if retry_after is not None else None,
    )


def _violate_schema(body: Any) -> Any:
    """The same JSON with one thing a Box client relies on taken away."""
    if not isinstance(body, dict):
        return {"unexpected": body}
    entries = body.get("entries")
    if isinstance(entries, list):
        if not entries:  # nothing to strip: break the envelope instead
            body["limit"] = str(body.get("limit"))
        for entry in entries:
            if isinstance(entry, dict):
                entry.pop("status", None)
        return body
    kind = body.get("type")
    required = {"docgen_job": "status", "docgen_batch": "id"}.get(str(kind), "access_token")
    if required in body:
        del body[required]
        return body
    # An error body has no required field: answer an array where an object belongs.
    return [body]


def _corrupt(kind: FaultKind, body: bytes) -> bytes:
    if kind is FaultKind.TRUNCATED:
        return body[: max(1, len(body) // 2)]
    if kind is FaultKind.MALFORMED:
        broken = body.replace(b'":', b'"=', 1)
        return broken if broken != body else body + b"}"
    return orjson.dumps(_violate_schema(orjson.loads(body)))


async def apply(draw: Draw, request: web.Request, handler: Handler) -> web.StreamResponse:
    """Run `handler` under the drawn faults."""
    if draw.latency_s:
        await asyncio.sleep(draw.latency_s)
    if draw.fault is None:
        return await handler(request)
    if draw.fault.spec.kind is FaultKind.DISCONNECT:
        if request.transport is not None:
            request.transport.close()
        return web.Response(status=DROPPED_STATUS)
    replaced = _error_response(draw.fault.spec)
    if replaced is not None:
        return replaced
    response = await handler(request)
    if not isinstance(response, web.Response) or not isinstance(response.body, bytes):
        return response
    headers = {
        k: v
        for k, v in response.headers.items()
        if k.lower() not in ("content-length", "content-type")
    }
    return web.Response(
        body=_corrupt(draw.fault.spec.kind, response.body),
        status=response.status,
        headers=headers,
        content_type="application/json",
    )
