"""Outbox -> notifiers. One worker per notifier, so a slow or dead receiver delays nobody else and
never blocks polling. Delivery is at least once: a row is claimed with a lease, sent, then marked;
a crash between send and mark re-sends after the lease, and the receiver drops the repeat by
`Idempotency-Key`."""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Callable, Mapping

import structlog

from monitor.config import DeliveryConfig
from monitor.metrics import Metrics
from monitor.notify.base import DeliveryResult, Notifier
from monitor.store.base import OutboxEntry, Store

log = structlog.get_logger(__name__)

MAX_RETRY_AFTER_S = 3600.0
IDLE_RECHECK_S = 5.0  # a missed wake-up costs at most this long


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
        while not self._stopping:
            wake.clear()
            try:
                rows = await self.store.claim_due(
                    notifier.name, self.clock(), self.claim_limit, lease_s
                )
                for row in rows:
                    if self._stopping:
                        break  # the rest stay claimed and are retried after the lease
                    await self._deliver(notifier, row)
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

    async def _deliver(self, notifier: Notifier, row: OutboxEntry) -> None:
        event = row.event
        with structlog.contextvars.bound_contextvars(
            notifier=notifier.name,
            event_id=event.id,
            event_type=event.type.value,
            batch_id=event.batch_id,
            job_id=event.job.id if event.job else None,
        ):
            try:
                result = await notifier.send([event])
            except Exception as exc:  # a plugin's bug must not kill the worker
                log.exception("notifier_raised")
                result = DeliveryResult.failed(f"notifier raised {type(exc).__name__}")
            # Recording the outcome must survive a cancellation that arrives mid-write.
            await asyncio.shield(self._record(notifier, row, result))

    async def _record(self, notifier: Notifier, row: OutboxEntry, result: DeliveryResult) -> None:
        attempts = row.attempts + 1
        if result.ok:
            await self.store.mark_delivered(row.event.id, notifier.name)
            self.metrics.notifications.labels(notifier.name, "delivered").inc()
            log.info("event_delivered", attempts=attempts, detail=result.detail)
            return
        if attempts >= self._max_attempts(notifier):
            await self.store.mark_failed(row.event.id, notifier.name, result.detail, None)
            self.metrics.notifications.labels(notifier.name, "dead").inc()
            log.error("event_dead", attempts=attempts, error=result.detail)
            return
        delay_s = backoff_s(attempts, self.config, result.retry_after_s)
        await self.store.mark_failed(
            row.event.id, notifier.name, result.detail, self.clock() + delay_s
        )
        self.metrics.notifications.labels(notifier.name, "retry").inc()
        log.warning(
            "event_delivery_failed",
            attempts=attempts,
            error=result.detail,
            retry_in_s=round(delay_s, 3),
        )
