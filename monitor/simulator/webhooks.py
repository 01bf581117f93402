"""Box's V2 webhooks, simulated: the registrations (`/2.0/webhooks`), and signed Doc Gen
notifications sent to each registered address when a job of a watched template file starts,
succeeds or fails, with Box's headers and its retries.

Box publishes no Doc Gen payload. The one sent here is our own design, documented in
docs/simulator-control-api.md: Box's V2 envelope (`type`, `id`, `created_at`, `trigger`,
`webhook`, `created_by`, `source`) with `source` the template file and `additional_info` holding
what Box's Doc Gen guide lists (template version, output type, generated file, failure reason).
It carries no job or batch id, as Box promises none.

Written from Box's documentation only (invariant 9): it shares no code with the monitor's own
signature check, so each checks the other."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import heapq
import hmac
import random
import uuid
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import orjson
import structlog
from aiohttp import ClientError, ClientSession, ClientTimeout, web

from monitor.simulator.jobs import (
    COMPLETED,
    COMPLETED_WITH_ERROR,
    FAILED,
    SUBMITTED,
    Batch,
    JobTable,
)
from monitor.simulator.wire import created_at_text

log = structlog.get_logger(__name__)

STARTED_TRIGGER = "DOCGEN_DOCUMENT_GENERATION_STARTED"
SUCCEEDED_TRIGGER = "DOCGEN_DOCUMENT_GENERATION_SUCCEEDED"
FAILED_TRIGGER = "DOCGEN_DOCUMENT_GENERATION_FAILED"
DOCGEN_TRIGGERS = frozenset({STARTED_TRIGGER, SUCCEEDED_TRIGGER, FAILED_TRIGGER})
_TRIGGER_FOR = {
    SUBMITTED: STARTED_TRIGGER,
    COMPLETED: SUCCEEDED_TRIGGER,
    COMPLETED_WITH_ERROR: SUCCEEDED_TRIGGER,
    FAILED: FAILED_TRIGGER,
}
FAULT_KINDS = ("drop", "late", "duplicate", "bad_signature")
#: Box: no 2xx within 30 s is a failed delivery; up to 10 retries, the first after 5 minutes,
#: then exponential back-off (https://box.dev/en/guides/webhooks/handle/retries/).
TIMEOUT_S = 30.0
MAX_RETRIES = 10
RETRY_FIRST_S = 300.0
#: Delivery attempts kept for `GET /_sim/webhooks/deliveries`.
MAX_LOGGED = 20_000
#: How often the sender looks for pins and for a clock moved forward, at the longest.
IDLE_TICK_S = 0.1
USER_AGENT = "Box-WH-Client/0.1"


@dataclass(slots=True)
class Webhook:
    id: str
    target_id: str
    target_type: str
    address: str
    triggers: tuple[str, ...]
    created_by_id: str
    created_at_s: float


@dataclass(slots=True)
class Fault:
    """One way to let a notification down: `rate` of them, `count` times (None: until cleared);
    `late` sends after `delay_s`."""

    id: str
    kind: str
    rate: float = 1.0
    count: int | None = None
    delay_s: float = 5.0
    fired: int = 0

    def public(self) -> dict[str, Any]:
        return {"fault_id": self.id, "kind": self.kind, "rate": self.rate, "count": self.count,
                "delay_s": self.delay_s, "fired": self.fired}


@dataclass(slots=True)
class Settings:
    primary_key: str
    secondary_key: str
    retry_first_s: float = RETRY_FIRST_S
    timeout_s: float = TIMEOUT_S
    max_retries: int = MAX_RETRIES


@dataclass(slots=True)
class _Change:
    """A job status change a notification is sent for."""

    at_s: float
    job_id: int
    batch: Batch
    to_status: str


@dataclass(slots=True)
class _Heap:
    items: list[tuple[float, int, int, str]] = field(default_factory=list)  # at, seq, row, to
    seq: int = 0

    def push(self, at_s: float, row: int, to_status: str) -> None:
        self.seq += 1
        heapq.heappush(self.items, (at_s, self.seq, row, to_status))


class Webhooks:
    """Registrations, the changes still to announce, faults, and the log of deliveries."""

    def __init__(self, jobs: JobTable, settings: Settings, rng: random.Random) -> None:
        self.jobs = jobs
        self.settings = settings
        self.rng = rng
        self.hooks: dict[str, Webhook] = {}
        self.faults: dict[str, Fault] = {}
        self.deliveries: deque[dict[str, Any]] = deque(maxlen=MAX_LOGGED)
        self._heap = _Heap()
        self._pins_seen = 0
        self._next_id = 4_000_000_000

    # -- registrations ----------------------------------------------------------------------

    def create(self, target_id: str, target_type: str, address: str, triggers: list[str],
               created_by_id: str, now_s: float) -> Webhook | None:
        """A new webhook, or None when this user has one on the item already (Box: 409)."""
        for hook in self.hooks.values():
            if (hook.target_id, hook.target_type, hook.created_by_id) == (
                    target_id, target_type, created_by_id):
                return None
        self._next_id += 1 + self.rng.randrange(100)
        hook = Webhook(str(self._next_id), target_id, target_type, address, tuple(triggers),
                       created_by_id, now_s)
        self.hooks[hook.id] = hook
        return hook

    def watching(self, batch: Batch, trigger: str) -> list[Webhook]:
        return [h for h in self.hooks.values()
                if h.target_type == "file" and h.target_id == batch.template_file_id
                and trigger in h.triggers]

    # -- changes to announce ----------------------------------------------------------------

    def schedule(self, batch: Batch) -> None:
        """The natural changes of a new batch's jobs, to be announced when they happen."""
        for row in range(batch.first, batch.first + batch.count):
            view = self.jobs.view(row, batch.created_at_s)
            self._heap.push(view.submitted_at_s, row, SUBMITTED)
            self._heap.push(view.finished_at_s, row, view.outcome)

    def due(self, now_s: float) -> list[_Change]:
        """Changes that have happened by `now_s` and were not announced yet, oldest first: the
        timeline's (unless a pin or a deletion stopped the job first) and the pins'."""
        changes: list[_Change] = []
        items = self._heap.items
        while items and items[0][0] <= now_s:
            at_s, _, row, to_status = heapq.heappop(items)
            if self.jobs.follows_timeline(row, at_s):
                changes.append(_Change(at_s, self.jobs.id_of(row), self.jobs.batch_of(row),
                                       to_status))
        pins = self.jobs.pin_log
        for t in pins[self._pins_seen:]:
            batch = self.jobs.batch(t.batch_id)
            if batch is not None:
                changes.append(_Change(t.at_s, t.job_id, batch, t.to_status))
        self._pins_seen = len(pins)
        return sorted(changes, key=lambda c: c.at_s)

    def next_due_s(self) -> float | None:
        return self._heap.items[0][0] if self._heap.items else None

    # -- faults -----------------------------------------------------------------------------

    def add_fault(self, kind: str, rate: float, count: int | None, delay_s: float) -> Fault:
        fault = Fault(uuid.uuid4().hex[:12], kind, rate, count, delay_s)
        self.faults[fault.id] = fault
        return fault

    def draw(self) -> Fault | None:
        """The fault that hits the next notification, if any (the oldest that fires)."""
        for fault_id, fault in list(self.faults.items()):
            if self.rng.random() >= fault.rate:
                continue
            fault.fired += 1
            if fault.count is not None and fault.fired >= fault.count:
                del self.faults[fault_id]
            return fault
        return None

    # -- what is sent -----------------------------------------------------------------------

    def payload(self, hook: Webhook, change: _Change, trigger: str, created_at: str) -> bytes:
        batch = change.batch
        row = self.jobs.row_of(change.job_id)
        view = self.jobs.view(row, change.at_s) if row is not None else None
        info: dict[str, Any] = {
            "template_file_version": {"type": "file_version",
                                      "id": batch.template_file_version_id},
            "output_type": batch.output_type,
        }
        if trigger == SUCCEEDED_TRIGGER and view is not None and view.output_file_id:
            info["generated_file"] = {"type": "file", "id": view.output_file_id}
        if trigger == FAILED_TRIGGER and view is not None and view.failures is not None:
            info["failure_reason"] = "; ".join(view.failures.errors)
        body = {
            "type": "webhook_event",
            "id": str(uuid.UUID(int=self.rng.getrandbits(128))),
            "created_at": created_at,
            "trigger": trigger,
            "webhook": {"id": hook.id, "type": "webhook"},
            "created_by": {"type": "user", "id": batch.created_by_id},
            "source": {"type": "file", "id": batch.template_file_id,
                       "name": f"template-{batch.template_file_id}.docx"},
            "additional_info": info,
        }
        return orjson.dumps(body)

    def headers(self, body: bytes, timestamp: str, *, forged: bool) -> dict[str, str]:
        primary, secondary = self.settings.primary_key, self.settings.secondary_key
        if forged:
            primary, secondary = f"not-{primary}", f"not-{secondary}"
        return {
            "Content-Type": "application/json; charset=utf-8",
            "User-Agent": USER_AGENT,
            "BOX-DELIVERY-ID": str(uuid.UUID(int=self.rng.getrandbits(128))),
            "BOX-DELIVERY-TIMESTAMP": timestamp,
            "BOX-SIGNATURE-PRIMARY": sign(primary, body, timestamp),
            "BOX-SIGNATURE-SECONDARY": sign(secondary, body, timestamp),
            "BOX-SIGNATURE-VERSION": "1",
            "BOX-SIGNATURE-ALGORITHM": "HmacSHA256",
        }


def sign(key: str, body: bytes, timestamp: str) -> str:
    """Box's documented signature: HMAC-SHA256 over the body then the delivery timestamp."""
    digest = hmac.new(key.encode(), body + timestamp.encode(), hashlib.sha256).digest()
    return base64.b64encode(digest).decode()


# -- the sender ---------------------------------------------------------------------------------


class Sender:
    """Announces due changes to every webhook watching their template, with Box's retries."""

    def __init__(self, state: Any) -> None:
        self.state = state
        self.hooks: Webhooks = state.webhooks
        self._session: ClientSession | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def run(self) -> None:
        self._session = ClientSession()
        try:
            while True:
                now_s = self.state.now()
                for change in self.hooks.due(now_s):
                    trigger = _TRIGGER_FOR.get(change.to_status)
                    if trigger is None:
                        continue
                    for hook in self.hooks.watching(change.batch, trigger):
                        self._spawn(self._notify(hook, change, trigger))
                next_s = self.hooks.next_due_s()
                wait_s = IDLE_TICK_S if next_s is None else min(IDLE_TICK_S, next_s - now_s)
                await asyncio.sleep(max(0.001, wait_s))
        finally:
            for task in list(self._tasks):
                task.cancel()
            for task in list(self._tasks):
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            await self._session.close()

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _notify(self, hook: Webhook, change: _Change, trigger: str) -> None:
        state = self.state
        fault = self.hooks.draw()
        created_at = _rfc3339(change.at_s, state.config.created_at_utc_offset_min)
        body = self.hooks.payload(hook, change, trigger, created_at)
        entry = {"webhook_id": hook.id, "trigger": trigger, "job_id": str(change.job_id),
                 "batch_id": str(change.batch.id), "template_file_id": hook.target_id,
                 "changed_at": change.at_s, "fault": fault.kind if fault else None}
        if fault is not None and fault.kind == "drop":
            self.hooks.deliveries.append({**entry, "attempt": 0, "status": None,
                                          "sent_at": None, "delivery_id": None})
            return
        if fault is not None and fault.kind == "late":
            await asyncio.sleep(fault.delay_s)
        forged = fault is not None and fault.kind == "bad_signature"
        settings = self.hooks.settings
        for attempt in range(1, settings.max_retries + 2):
            timestamp = _rfc3339(state.now(), state.config.created_at_utc_offset_min)
            headers = self.hooks.headers(body, timestamp, forged=forged)
            sends = 2 if fault is not None and fault.kind == "duplicate" and attempt == 1 else 1
            ok = False
            for _ in range(sends):  # a duplicate repeats the very same delivery
                ok = await self._send(hook, body, headers, {**entry, "attempt": attempt}) or ok
            if ok or attempt > settings.max_retries:
                return
            await asyncio.sleep(settings.retry_first_s * 2 ** (attempt - 1))

    async def _send(self, hook: Webhook, body: bytes, headers: dict[str, str],
                    entry: dict[str, Any]) -> bool:
        assert self._session is not None
        record = {**entry, "delivery_id": headers["BOX-DELIVERY-ID"], "sent_at": self.state.now()}
        try:
            async with self._session.post(
                hook.address, data=body, headers=headers,
                timeout=ClientTimeout(total=self.hooks.settings.timeout_s),
            ) as resp:
                await resp.read()
                record["status"] = resp.status
        except (ClientError, TimeoutError) as exc:
            record["status"] = None
            record["error"] = type(exc).__name__
        self.hooks.deliveries.append(record)
        status = record["status"]
        return isinstance(status, int) and 200 <= status < 300


def _rfc3339(at_s: float, utc_offset_min: int) -> str:
    return created_at_text(at_s, utc_offset_min)


async def sender_context(app: web.Application) -> AsyncIterator[None]:
    """aiohttp cleanup context: notifications are sent exactly as long as the app runs."""
    from monitor.simulator.state import STATE_KEY

    task = asyncio.create_task(Sender(app[STATE_KEY]).run(), name="docgen-simulator-webhooks")
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
