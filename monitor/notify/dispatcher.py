"""Outbox -> notifiers. One worker per notifier, so a slow or dead receiver delays nobody else and
never blocks polling. Delivery is at least once: a row is claimed with a lease, sent, then marked;
a crash between send and mark re-sends after the lease, and the receiver drops the repeat by
`Idempotency-Key`."""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Callable, Mapping, Sequence

import structlog

from monitor.config import DeliveryConfig
from monitor.metrics import Metrics
from monitor.model import Event
from monitor.notify.base import DeliveryResult, Notifier
from monitor.store.base import OutboxEntry, Store

log = structlog.get_logger(__name__)

MAX_RETRY_AFTER_S = 3600.0
IDLE_RECHECK_S = 5.0  # a missed wake-up costs at most this long
GROUP_CLAIM_LIMIT = 2000
MIN_HOLD_S = 1.0  # events held back come again no sooner: never a busy loop


def backoff_s(
    attempts: int,
    config: DeliveryConfig,
    retry_after_s: float | None,
    rng: Callable[[], float] = random.random,
) -> float:
    """Delay before the next try after `attempts` failures: exponential with +-20 % jitter,
    never shorter than what the receiver asked for."""
    delay = min(config.max_backoff, config.initial_backoff * 2.0 ** max(attempts - 1, 0))
    delay *= 0.8 + 0.4 * rng()
    if retry_after_s is not None:
        delay = max(delay, min(retry_after_s, MAX_RETRY_AFTER_S))
    return delay


class Dispatcher:
    def __init__(
        self,
        store: Store,
        notifiers: Mapping[str, Notifier],
        config: DeliveryConfig,
        metrics: Metrics,
        *,
        clock: Callable[[], float] = time.time,
        claim_limit: int = 20,
    ) -> None:
        self.store = store
        self.notifiers = dict(notifiers)
        self.config = config
        self.metrics = metrics
        self.clock = clock
        self.claim_limit = claim_limit
        for notifier in self.notifiers.values():
            notifier.attach(store)
        self._wake = {name: asyncio.Event() for name in self.notifiers}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._stopping = False

    def wake(self) -> None:
        """New rows were committed: look now instead of at the next recheck."""
        for event in self._wake.values():
            event.set()

    def start(self) -> None:
        for name, notifier in self.notifiers.items():
            self._tasks[name] = asyncio.create_task(self._worker(notifier), name=f"notify:{name}")

    async def stop(self, drain_timeout_s: float) -> None:
        """Stop claiming, let in-flight sends finish within the deadline, cancel the rest.
        Rows still claimed are sent again after their lease, on the next start."""
        self._stopping = True
        self.wake()
        tasks = list(self._tasks.values())
        if not tasks:
            return
        _, pending = await asyncio.wait(tasks, timeout=drain_timeout_s)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        if pending:
            log.warning(
                "delivery_drain_timed_out",
                notifiers=sorted(n for n, t in self._tasks.items() if t in pending),
            )

    def _max_attempts(self, notifier: Notifier) -> int:
        own = notifier.config.max_attempts
        return own if own is not None else self.config.max_attempts

    async def _worker(self, notifier: Notifier) -> None:
        wake = self._wake[notifier.name]
        # One worker per notifier owns its claims, so an expired lease cannot put a second
        # sender on a row; the lease only decides how soon a crashed process's rows come back.
        lease_s = notifier.timeout_s + 5
        grouped = notifier.config.group_by is not None
        if grouped:
            # Rows a crashed process still held would come back only after their lease, and
            # a group flushed without them would be split (a second digest mail).
            try:
                await self.store.release_claims(notifier.name, self.clock())
            except Exception:
                log.exception("release_claims_failed", notifier=notifier.name)
        # A group is judged on all its due rows at once: claim enough to see a whole batch.
        limit = max(self.claim_limit, GROUP_CLAIM_LIMIT) if grouped else self.claim_limit
        while not self._stopping:
            wake.clear()
            try:
                rows = await self.store.claim_due(notifier.name, self.clock(), limit, lease_s)
                if grouped:
                    await self._deliver_groups(notifier, rows)
                else:
                    for row in rows:
                        if self._stopping:
                            break  # the rest stay claimed and are retried after the lease
                        await self._deliver(notifier, [row])
                if rows:
                    continue
                next_due = await self.store.next_due_at(notifier.name)
            except Exception:
                log.exception("delivery_loop_failed", notifier=notifier.name)
                next_due = None
            wait_s = IDLE_RECHECK_S
            if next_due is not None:
                wait_s = min(max(next_due - self.clock(), 0.0), IDLE_RECHECK_S)
            if wait_s > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(wake.wait(), wait_s)

    async def _deliver_groups(self, notifier: Notifier, rows: list[OutboxEntry]) -> None:
        """Send each group that is due; put the others back until they are. The timing state
        is the outbox itself plus each group's last flush in the store, so a restart resumes
        the same schedule."""
        config = notifier.config
        groups: dict[str, list[OutboxEntry]] = {}
        for row in rows:
            groups.setdefault(group_key(row.event, config.group_by or []), []).append(row)
        for key, members in groups.items():
            if self._stopping:
                return  # the rest stay claimed and are retried after the lease
            now = self.clock()
            last = await self.store.group_flushed_at(notifier.name, key)
            if last is None:
                oldest = min(r.event.detected_at.timestamp() for r in members)
                due = oldest + config.group_wait
            else:
                due = last + config.group_interval
            if due > now:
                await self.store.defer(notifier.name, [r.event.id for r in members], due)
                continue
            await self._deliver(notifier, members, key)

    async def _deliver(
        self, notifier: Notifier, rows: list[OutboxEntry], group: str | None = None
    ) -> None:
        first = rows[0].event
        with structlog.contextvars.bound_contextvars(
            notifier=notifier.name,
            event_id=first.id if len(rows) == 1 else None,
            events=len(rows),
            group=group,
            event_type=first.type.value if len(rows) == 1 else None,
            batch_id=first.batch_id,
            job_id=first.job.id if first.job and len(rows) == 1 else None,
        ):
            try:
                result = await notifier.send([r.event for r in rows])
            except Exception as exc:  # a plugin's bug must not kill the worker
                log.exception("notifier_raised")
                result = DeliveryResult.failed(f"notifier raised {type(exc).__name__}")
            # Recording the outcome must survive a cancellation that arrives mid-write.
            await asyncio.shield(self._record(notifier, rows, result, group))

    async def _record(
        self,
        notifier: Notifier,
        rows: list[OutboxEntry],
        result: DeliveryResult,
        group: str | None,
    ) -> None:
        now = self.clock()
        config = notifier.config
        held = [r for r in rows if r.event.id in result.held]
        if held:
            # Held back by the notifier (e.g. a digest waiting for its batch): not an attempt.
            hold_s = max(config.group_interval, config.group_wait, MIN_HOLD_S)
            await self.store.defer(notifier.name, [r.event.id for r in held], now + hold_s)
        sent = [r for r in rows if r.event.id not in result.held]
        delivered = sent if result.ok else [r for r in sent if r.event.id in result.settled]
        await self.store.mark_delivered_many(notifier.name, [r.event.id for r in delivered])
        if delivered:
            self.metrics.notifications.labels(notifier.name, "delivered").inc(len(delivered))
            log.info("events_delivered", count=len(delivered), detail=result.detail)
        if group is not None and (delivered or held):
            await self.store.set_group_flushed(notifier.name, group, now)
        failed = [r for r in sent if r not in delivered]
        if not failed:
            return
        if result.rate_limited:
            # The receiver said exactly when to come back: waiting is not a failed attempt.
            delay_s = min(result.retry_after_s or 1.0, MAX_RETRY_AFTER_S)
            await self.store.defer(notifier.name, [r.event.id for r in failed], now + delay_s)
            self.metrics.notifications.labels(notifier.name, "retry").inc(len(failed))
            log.warning("rate_limited", events=len(failed), retry_in_s=delay_s)
            return
        # One retry time for the whole send, so that a group comes back together (a digest
        # split by jitter would become several mails).
        attempts = max(r.attempts for r in failed) + 1
        retry_at = now + backoff_s(attempts, self.config, result.retry_after_s)
        for row in failed:
            await self._record_failure(notifier, row, result, retry_at)

    async def _record_failure(
        self, notifier: Notifier, row: OutboxEntry, result: DeliveryResult, retry_at: float
    ) -> None:
        attempts = row.attempts + 1
        if attempts >= self._max_attempts(notifier):
            await self.store.mark_failed(row.event.id, notifier.name, result.detail, None)
            self.metrics.notifications.labels(notifier.name, "dead").inc()
            log.error("event_dead", event_id=row.event.id, attempts=attempts, error=result.detail)
            return
        await self.store.mark_failed(row.event.id, notifier.name, result.detail, retry_at)
        self.metrics.notifications.labels(notifier.name, "retry").inc()
        log.warning(
            "event_delivery_failed",
            event_id=row.event.id,
            attempts=attempts,
            error=result.detail,
            retry_in_s=round(retry_at - self.clock(), 3),
        )


def group_key(event: Event, group_by: Sequence[str]) -> str:
    """`batch=77|to_status=failed`: the group an event belongs to ("" groups everything)."""
    values = {
        "batch": event.batch_id,
        "template": event.template_file_id,
        "to_status": event.to_status,
    }
    return "|".join(f"{field}={values[field] or ''}" for field in group_by)
