"""Outbox -> notifiers. One worker per notifier, so a slow or dead receiver delays nobody else and
never blocks polling. Delivery is at least once: a row is claimed with a lease, sent, then marked;
a crash between send and mark re-sends after the lease, and the receiver drops the repeat by
`Idempotency-Key`."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import contextvars
import random
from collections.abc import Callable, Iterable, Mapping, Sequence

import structlog

from monitor.clock import SteadyWallClock
from monitor.config import DeliveryConfig
from monitor.logging import log_failure
from monitor.metrics import Metrics
from monitor.model import Event
from monitor.notify.base import DeliveryResult, Notifier
from monitor.notify.silences import Silencer
from monitor.store.base import DeliveryStore, OutboxEntry, OutboxState, SilenceReader

log = structlog.get_logger(__name__)

MAX_RETRY_AFTER_S = 3600.0  # a receiver's longer Retry-After is clamped to this
IDLE_RECHECK_S = 5.0  # a missed wake-up costs at most this long
GROUP_CLAIM_LIMIT = 2000
STREAM_CLAIM_FACTOR = 16  # an ungrouped notifier claims up to this many rows per send slot
MIN_HOLD_S = 1.0  # events held back come again no sooner: never a busy loop
_MAX_EXPONENT = 60  # 2 ** 60 seconds outgrows any max_backoff; 2.0 ** 1024 would overflow
_LOGGED_IDS = 20  # a log line about many events names this many of them


def backoff_s(attempts: int, config: DeliveryConfig, rng: Callable[[], float] = random.random
              ) -> float:
    """Delay before the next try after `attempts` failures: exponential with +-20 % jitter,
    growing to `max_backoff` and staying there (never above it)."""
    exponent = min(max(attempts - 1, 0), _MAX_EXPONENT)
    delay = config.initial_backoff * 2.0**exponent * (0.8 + 0.4 * rng())
    return min(delay, config.max_backoff)


class Dispatcher:
    def __init__(
        self,
        store: DeliveryStore,
        notifiers: Mapping[str, Notifier],
        config: DeliveryConfig,
        metrics: Metrics,
        *,
        clock: Callable[[], float] | None = None,
        claim_limit: int = 20,
        silences: SilenceReader | None = None,
    ) -> None:
        self.store = store
        self.notifiers = dict(notifiers)
        self.config = config
        self.metrics = metrics
        # Due times are wall-clock seconds in the store; a backward step must not hold retries.
        self.clock = clock if clock is not None else SteadyWallClock()
        self.claim_limit = claim_limit
        # Silences live where every process reads them: by default this store.
        self.silences: SilenceReader = silences if silences is not None else store
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

    async def refresh_gauges(self) -> None:
        """The outbox depth of each notifier: waiting (pending or in flight) and dead."""
        counts = await self.store.outbox_counts()
        for name in self.notifiers:
            by_state = counts.get(name, {})
            waiting = by_state.get(OutboxState.PENDING, 0) + by_state.get(OutboxState.CLAIMED, 0)
            self.metrics.outbox_pending.labels(name).set(waiting)
            self.metrics.outbox_dead.labels(name).set(by_state.get(OutboxState.DEAD, 0))

    def _max_attempts(self, notifier: Notifier) -> int | None:
        own = notifier.config.max_attempts
        return own if own is not None else self.config.max_attempts

    def _gives_up(self, notifier: Notifier, row: OutboxEntry, now: float) -> bool:
        """Dead once the row's run of failures is `give_up_after` old (or, when a cap is set,
        at `max_attempts` tries); the failure being recorded now counts as one."""
        started = row.first_failed_at if row.first_failed_at is not None else now
        cap = self._max_attempts(notifier)
        return now - started >= self.config.give_up_after or (
            cap is not None and row.attempts + 1 >= cap
        )

    async def _worker(self, notifier: Notifier) -> None:
        # One worker per notifier owns its claims, so an expired lease cannot put a second
        # sender on a row; the lease only decides how soon a crashed process's rows come back.
        lease_s = notifier.timeout_s + 5
        if notifier.config.group_by is None:
            await _Stream(self, notifier, lease_s).run()
            return
        # Rows a crashed process still held would come back only after their lease, and
        # a group flushed without them would be split (a second digest mail).
        try:
            await self.store.release_claims(notifier.name, self.clock())
        except Exception:
            log_failure(log, "release_claims_failed", notifier=notifier.name)
        # A group is judged on all its due rows at once: claim enough to see a whole batch.
        limit = max(self.claim_limit, GROUP_CLAIM_LIMIT)
        while not self._stopping:
            self._wake[notifier.name].clear()
            try:
                rows = await self.store.claim_due(notifier.name, self.clock(), limit, lease_s)
                await self._deliver_groups(notifier, await self._silence(notifier, rows))
                if rows:
                    continue
                next_due = await self.store.next_due_at(notifier.name)
            except Exception:
                log_failure(log, "delivery_loop_failed", notifier=notifier.name)
                next_due = None
            await self._idle(notifier.name, next_due)

    async def _idle(self, name: str, next_due: float | None) -> None:
        """Wait for a wake-up, the next due row, or IDLE_RECHECK_S, whichever comes first."""
        wait_s = IDLE_RECHECK_S
        if next_due is not None:
            wait_s = min(max(next_due - self.clock(), 0.0), IDLE_RECHECK_S)
        if wait_s > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake[name].wait(), wait_s)

    async def _silence(self, notifier: Notifier, rows: list[OutboxEntry]) -> list[OutboxEntry]:
        """Settle the rows a silence mutes (never sent, counted as `silenced`); the rest go on.
        Silences are read from the store on each claim, so one added by any process (or
        replica) applies from the next claim on."""
        if not rows:
            return rows
        now = self.clock()
        oldest = min(r.event.detected_at.timestamp() for r in rows)
        silences = await self.silences.list_silences(ended_after=min(oldest, now))
        if not silences:
            return rows
        silencer = Silencer(silences)
        plan: dict[str, str] = {}
        for row in rows:
            silence = silencer.silencing(row.event, now)
            if silence is not None:
                plan[row.event.id] = silence.id
        if not plan:
            return rows
        await asyncio.shield(self.store.mark_silenced(notifier.name, plan))
        self.metrics.notifications.labels(notifier.name, "silenced").inc(len(plan))
        log.info(
            "events_silenced",
            notifier=notifier.name,
            count=len(plan),
            event_ids=list(plan)[:_LOGGED_IDS],
            silence_ids=sorted(set(plan.values())),
        )
        return [r for r in rows if r.event.id not in plan]

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
        self,
        notifier: Notifier,
        rows: list[OutboxEntry],
        group: str | None = None,
        marks: MarkBatcher | None = None,
        sent: Callable[[], None] | None = None,
    ) -> None:
        """Send `rows` and record the outcome; `sent` is called between the two (the stream
        frees the send's slot then: recording is the store's work, not the receiver's)."""
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
            if sent is not None:
                sent()
            # Recording the outcome must survive a cancellation that arrives mid-write.
            await asyncio.shield(self._record(notifier, rows, result, group, marks))

    async def _record(
        self,
        notifier: Notifier,
        rows: list[OutboxEntry],
        result: DeliveryResult,
        group: str | None,
        marks: MarkBatcher | None = None,
    ) -> None:
        """Write down what `send` said, in a few transactions whatever the number of rows, and
        with sets of ids: a group is up to GROUP_CLAIM_LIMIT rows, on the event loop."""
        now = self.clock()
        config = notifier.config
        held = [r.event.id for r in rows if r.event.id in result.held]
        if held:
            # Held back by the notifier (e.g. a digest waiting for its batch): not an attempt.
            hold_s = max(config.group_interval, config.group_wait, MIN_HOLD_S)
            await self.store.defer(notifier.name, held, now + hold_s)
        sent = [r for r in rows if r.event.id not in result.held]
        delivered = {r.event.id for r in sent if result.ok or r.event.id in result.settled}
        if marks is not None and delivered:
            await marks.mark(delivered)  # one `events_delivered` line per write of marks
            log.debug("event_delivered", detail=result.detail)
        else:
            await self.store.mark_delivered_many(notifier.name, list(delivered))
            if delivered:
                log.info("events_delivered", count=len(delivered), detail=result.detail)
        if delivered:
            self.metrics.notifications.labels(notifier.name, "delivered").inc(len(delivered))
        if group is not None and (delivered or held):
            await self.store.set_group_flushed(notifier.name, group, now)
        failed = [r for r in sent if r.event.id not in delivered]
        if not failed:
            return
        if result.rate_limited or result.retry_after_s is not None:
            await self._record_throttle(notifier, failed, result, now)
        else:
            await self._record_failures(notifier, failed, result, now)

    async def _record_throttle(
        self, notifier: Notifier, rows: list[OutboxEntry], result: DeliveryResult, now: float
    ) -> None:
        """The receiver said when to come back (429, Retry-After): waiting is not a failure,
        whatever the notifier type, so it never brings an event closer to dead."""
        asked_s = result.retry_after_s
        delay_s = self.config.initial_backoff if asked_s is None else asked_s
        if delay_s > MAX_RETRY_AFTER_S:
            log.warning("retry_after_clamped", asked_s=delay_s, clamped_s=MAX_RETRY_AFTER_S)
            delay_s = MAX_RETRY_AFTER_S
        await self.store.mark_throttled(notifier.name, [r.event.id for r in rows], now + delay_s)
        self.metrics.notifications.labels(notifier.name, "retry").inc(len(rows))
        log.warning("rate_limited", events=len(rows), retry_in_s=delay_s, error=result.detail)

    async def _record_failures(
        self, notifier: Notifier, rows: list[OutboxEntry], result: DeliveryResult, now: float
    ) -> None:
        """One failed send: every row retried at one time (so that a group comes back
        together: a digest split by jitter would become several mails) or dead, in ONE
        transaction, with one log line."""
        attempts = max(r.attempts for r in rows) + 1
        retry_in_s = backoff_s(attempts, self.config)
        plan: dict[str, float | None] = {
            r.event.id: None if self._gives_up(notifier, r, now) else now + retry_in_s
            for r in rows
        }
        await self.store.mark_failed_many(notifier.name, plan, result.detail, now)
        dead = [event_id for event_id, at in plan.items() if at is None]
        retried = len(plan) - len(dead)
        failing_since = min(r.first_failed_at or now for r in rows)
        if retried:
            self.metrics.notifications.labels(notifier.name, "retry").inc(retried)
            log.warning(
                "event_delivery_failed",
                count=retried,
                attempts=attempts,
                failing_for_s=round(now - failing_since, 3),
                error=result.detail,
                retry_in_s=round(retry_in_s, 3),
            )
        if dead:
            self.metrics.notifications.labels(notifier.name, "dead").inc(len(dead))
            log.error(
                "event_dead",
                count=len(dead),
                event_ids=dead[:_LOGGED_IDS],
                attempts=attempts,
                failing_for_s=round(now - failing_since, 3),
                error=result.detail,
            )


def group_key(event: Event, group_by: Sequence[str]) -> str:
    """`batch=77|to_status=failed`: the group an event belongs to ("" groups everything)."""
    values = {
        "batch": event.batch_id,
        "template": event.template_file_id,
        "to_status": event.to_status,
    }
    return "|".join(f"{field}={values[field] or ''}" for field in group_by)


class MarkBatcher:
    """Delivered marks written together: while one write runs, the marks of the sends that
    finish meanwhile gather for the next one, so N concurrent sends cost far fewer than N
    transactions (one fsync each) and log lines. `mark` returns once its ids are written; the
    write runs in its own task, so a sender cancelled mid-write does not cancel the record of
    its send."""

    def __init__(self, store: DeliveryStore, notifier: str) -> None:
        self.store = store
        self.notifier = notifier
        self._ids: list[str] = []
        self._written: asyncio.Future[None] | None = None
        self._writer: asyncio.Task[None] | None = None

    async def mark(self, event_ids: Iterable[str]) -> None:
        self._ids.extend(event_ids)
        if self._written is None:
            self._written = asyncio.get_running_loop().create_future()
        written = self._written
        if self._writer is None or self._writer.done():
            # A context of its own: the first sender's bound log fields are not the write's.
            self._writer = asyncio.create_task(
                self._write(), name=f"marks:{self.notifier}", context=contextvars.Context()
            )
        await asyncio.shield(written)

    async def _write(self) -> None:
        while self._ids:
            ids, written = self._ids, self._written
            self._ids, self._written = [], None
            assert written is not None
            try:
                await self.store.mark_delivered_many(self.notifier, ids)
            except Exception as exc:  # each waiting sender logs it; its rows come back later
                written.set_exception(exc)
                written.exception()  # retrieved: no "never retrieved" warning if none waits
            else:
                written.set_result(None)
                # What is delivered is on record: one line per write, not per event (a
                # stream of hundreds a second would drown the log); `debug` has each one.
                log.info("events_delivered", notifier=self.notifier, count=len(ids))


class _Stream:
    """The worker of a notifier that sends one event per `send`: up to `concurrency` sends in
    flight, fed by claims in job order (the store hands out a job's next event only once the
    one before it is delivered or dead, so events of one job never overtake each other, even
    across retries and restarts).

    A claim reads every due row to find the oldest, so rows are claimed STREAM_CLAIM_FACTOR
    slots' worth at a time and queued here. A queued row whose lease runs out before it is
    sent is claimed again by the next claim; it is ignored then, since it is `known`."""

    def __init__(self, dispatcher: Dispatcher, notifier: Notifier, lease_s: float) -> None:
        self.dispatcher = dispatcher
        self.notifier = notifier
        self.lease_s = lease_s
        self.slots = notifier.config.concurrency
        self.marks = MarkBatcher(dispatcher.store, notifier.name)
        self.queued: collections.deque[OutboxEntry] = collections.deque()
        self.in_flight: set[str] = set()  # being sent: each holds a slot
        self.tasks: set[asyncio.Task[None]] = set()  # sending or recording
        self.known: set[str] = set()  # claimed by this worker and not yet recorded

    async def run(self) -> None:
        d, name = self.dispatcher, self.notifier.name
        try:
            while not d._stopping:
                d._wake[name].clear()
                next_due: float | None = None
                try:
                    claimed = await self._claim() if len(self.queued) < self.slots else 0
                    self._start_queued()
                    if claimed:
                        continue
                    if not self.queued and len(self.in_flight) < self.slots:
                        next_due = await d.store.next_due_at(name, job_order=True)
                except Exception:
                    log_failure(log, "delivery_loop_failed", notifier=name)
                await d._idle(name, next_due)
        except asyncio.CancelledError:
            for task in self.tasks:  # past the drain deadline: their rows come back
                task.cancel()
            raise
        finally:
            # Stopping: the sends in flight finish (the dispatcher's drain deadline bounds it),
            # and the rows never started are handed back at once rather than after their lease.
            await asyncio.gather(*self.tasks, return_exceptions=True)
            await asyncio.shield(self._release_queued())

    async def _claim(self) -> int:
        """Top the queue up; how many new rows it got."""
        d = self.dispatcher
        want = STREAM_CLAIM_FACTOR * self.slots - len(self.queued)
        rows = await d.store.claim_due(
            self.notifier.name, d.clock(), want, self.lease_s, job_order=True
        )
        fresh = [r for r in rows if r.event.id not in self.known]
        kept = await d._silence(self.notifier, fresh)  # a silenced row is settled: not queued
        self.known.update(r.event.id for r in kept)
        self.queued.extend(kept)
        return len(fresh)

    def _start_queued(self) -> None:
        while self.queued and len(self.in_flight) < self.slots:
            row = self.queued.popleft()
            self.in_flight.add(row.event.id)
            task = asyncio.create_task(self._send(row), name=f"send:{row.event.id}")
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    async def _send(self, row: OutboxEntry) -> None:
        """Send, free the slot as soon as the receiver answered (the marks of many sends are
        then written together), and forget the row once its outcome is recorded: until then
        the store still holds the job's next event back."""
        event_id = row.event.id
        wake = self.dispatcher._wake[self.notifier.name]

        def sent() -> None:
            self.in_flight.discard(event_id)
            wake.set()

        try:
            await self.dispatcher._deliver(self.notifier, [row], marks=self.marks, sent=sent)
        except Exception:
            log_failure(log, "delivery_record_failed", notifier=self.notifier.name)
        finally:
            sent()
            self.known.discard(event_id)
            wake.set()  # the job's next event may go

    async def _release_queued(self) -> None:
        ids = [r.event.id for r in self.queued]
        self.queued.clear()
        if not ids:
            return
        try:
            await self.dispatcher.store.defer(self.notifier.name, ids, self.dispatcher.clock())
        except Exception:  # they come back after their lease instead
            log_failure(log, "release_queued_failed", notifier=self.notifier.name)
