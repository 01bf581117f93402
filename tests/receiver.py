"""A real webhook receiver on loopback for tests: verifies every signature, records every
delivery, and can be told to fail (status, Retry-After) or to stall."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
import standardwebhooks
from aiohttp import web


@dataclass
class Delivery:
    event_id: str
    headers: dict[str, str]
    body: dict[str, Any]
    received_at: float  # when it was accepted (answered)
    arrived_at: float = 0.0  # when its request came in (before any stall)


@dataclass
class WebhookReceiver:
    secret: str | None = "s3cret"
    standard_secret: str | None = None  # a whsec_ secret: check Standard Webhooks instead
    deliveries: list[Delivery] = field(default_factory=list)
    bad_signatures: int = 0
    refused: int = 0  # requests answered with a failure status on purpose
    fail_status: int | None = None  # answer this instead of 200 while set
    fail_remaining: int = 0  # ...or only for this many requests
    fail_after: int | None = None  # ...or once this many deliveries were accepted
    retry_after: str | None = None
    stall_s: float = 0.0
    delay_s: Callable[[str], float] | None = None  # a stall per Idempotency-Key (reorders answers)
    fail_once: set[str] = field(default_factory=set)  # refuse these keys' first request (500)
    in_flight: int = 0
    max_in_flight: int = 0  # the most requests it held at once
    _runner: web.AppRunner | None = None
    url: str = ""
    _changed: asyncio.Event = field(default_factory=asyncio.Event)

    async def start(self, port: int = 0) -> WebhookReceiver:
        app = web.Application()
        app.router.add_post("/hook", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", port)
        await site.start()
        bound = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{bound}/hook"
        return self

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _handle(self, request: web.Request) -> web.Response:
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            return await self._answer(request, time.time())
        finally:
            self.in_flight -= 1

    async def _answer(self, request: web.Request, arrived_at: float) -> web.Response:
        raw = await request.read()
        key = request.headers.get("Idempotency-Key", "")
        if self.stall_s:
            await asyncio.sleep(self.stall_s)
        if self.delay_s is not None:
            await asyncio.sleep(self.delay_s(key))
        if key in self.fail_once:
            self.fail_once.discard(key)
            self.refused += 1
            self._changed.set()
            return web.Response(status=500, text="not this time")
        full = self.fail_after is not None and len(self.deliveries) >= self.fail_after
        if self.fail_remaining > 0 or self.fail_status is not None or full:
            self.fail_remaining = max(0, self.fail_remaining - 1)
            self.refused += 1
            self._changed.set()
            headers = {"Retry-After": self.retry_after} if self.retry_after else {}
            return web.Response(status=self.fail_status or 500, text="nope", headers=headers)
        if self.standard_secret is not None:
            # The Standard Webhooks reference library checks `signature: standard`.
            try:
                standardwebhooks.Webhook(self.standard_secret).verify(raw, dict(request.headers))
            except standardwebhooks.WebhookVerificationError:
                self.bad_signatures += 1
                return web.Response(status=401, text="bad signature")
        elif self.secret is not None:
            ts = request.headers["X-Docgen-Monitor-Timestamp"]
            expected = "v1=" + hmac.new(self.secret.encode(), f"{ts}.".encode() + raw,
                                        hashlib.sha256).hexdigest()
            if not hmac.compare_digest(expected, request.headers.get(
                    "X-Docgen-Monitor-Signature", "")):
                self.bad_signatures += 1
                return web.Response(status=401, text="bad signature")
        body = orjson.loads(raw)
        self.deliveries.append(Delivery(request.headers["Idempotency-Key"],
                                        dict(request.headers), body, time.time(), arrived_at))
        self._changed.set()
        return web.Response(status=204)

    def ids(self) -> set[str]:
        return {d.event_id for d in self.deliveries}

    def events(self) -> dict[str, dict[str, Any]]:
        """Unique events by id (a repeat delivery is the same event)."""
        return {d.event_id: d.body for d in self.deliveries}

    async def wait_for(self, predicate: Any, timeout_s: float = 30.0) -> None:
        """Wait until `predicate(self)` is true, or fail after `timeout_s`."""
        deadline = time.monotonic() + timeout_s
        while not predicate(self):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"receiver condition not met within {timeout_s}s "
                                     f"({len(self.deliveries)} deliveries)")
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), min(remaining, 0.5))
