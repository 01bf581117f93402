"""The one commit pipeline: from "Box told us this" to "committed".

Every way into the snapshot (the sweep, a batch poll, a single-job poll, later a Box webhook
hint) hands its observation to the `Recorder`, which builds the events (diff, stuck, late
marking), routes them, commits snapshot rows and outbox rows in one transaction under one lock,
counts what the commit changed, and wakes delivery. There is no second commit path: the poller's
store role (`PollStore`) cannot commit.

Late marking: after a restart, changes first seen by the first poll of each batch (and by the
first sweep) may have happened while the daemon was stopped: their events carry `late: true` and
`last_running_at` in `Event.extra`."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

import structlog

from monitor.diff import events_for, snapshot_changes
from monitor.errors import StoreError
from monitor.metrics import Metrics
from monitor.model import (
    DEFAULT_ACCOUNT,
    Event,
    EventType,
    JobState,
    Observation,
    SnapshotChanges,
    is_terminal,
)
from monitor.notify.router import Router
from monitor.store.base import RecorderStore, RoutedEvent
from monitor.stuck import StuckPolicy, stuck_events
from monitor.template_rates import (
    RatePolicy,
    VersionCounts,
    finished_templates,
    fold,
    rises,
)

log = structlog.get_logger(__name__)

META_BASELINE_AT = "baseline_at"
META_LAST_SWEEP_AT = "last_sweep_at"
META_LAST_RUNNING_AT = "last_running_at"
#: Set when a store is adopted for another Box identity: the next sweep records a new baseline.
META_REBASELINE = "rebaseline_requested"
#: Set with each `template.failure_rate_rose` committed (the key ends with its id).
META_RISE_PREFIX = "rise:"


@dataclass(slots=True)
class StagedSweep:
    """A complete listing, staged page by page in the store (generation `generation`), ready to
    be closed: `changed` are the staged rows events will be built from (empty for a silent
    baseline) and `before` their stored rows. `started_at` is wall-clock time: the snapshot's
    `first_seen_at` is compared with it to find the jobs no page listed."""

    generation: int
    started_at: float
    baseline: bool  # the first sweep of this store: it records the baseline
    changed: dict[str, JobState] = field(default_factory=dict)
    before: dict[str, JobState] = field(default_factory=dict)
    # What the poller settled about the jobs no page listed: the ones Box confirmed gone (404
    # by id), and the suspects left for a later sweep (None: the stored ones stay as they are).
    gone: set[str] = field(default_factory=set)
    suspects: dict[str, float] | None = None


@dataclass(frozen=True, slots=True)
class Recorded:
    """What one commit produced: its events and the snapshot changes."""

    events: tuple[Event, ...]
    changes: SnapshotChanges
    snapshot: Mapping[str, JobState]  # the batch's rows after the commit (polls only)


class Recorder:
    def __init__(
        self,
        store: RecorderStore,
        router: Router,
        metrics: Metrics,
        *,
        baseline: str = "silent",
        stuck: StuckPolicy | None = None,
        rates: RatePolicy | None = None,
        wake: Callable[[], None] = lambda: None,
        clock: Callable[[], float] = time.time,
        account: str = DEFAULT_ACCOUNT,
    ) -> None:
        """`account` names the Box account every event of this store happens in."""
        self.store = store
        self.account = account
        self.metrics = metrics
        self.baseline = baseline
        self.stuck = stuck or StuckPolicy()
        self.rates = rates or RatePolicy()
        self.clock = clock
        self._router = router
        self._wake = wake
        self.last_running_at: float | None = None  # before this process started
        self._swept = False  # a sweep committed since start: nothing is late any more
        self._caught_up: set[str] = set()  # before the first sweep: batches polled since start
        # Sweep and polls read then write the same rows: one commit at a time.
        self._lock = asyncio.Lock()
        self.write_failures = 0  # consecutive failed commits (the daemon reopens the store)
        self.last_write_error: str | None = None

    # -- wiring that survives a reload ------------------------------------------------------

    @property
    def router(self) -> Router:
        return self._router

    def set_router(self, router: Router) -> None:
        """Route the next commits by `router` (a reload's new rules)."""
        self._router = router

    def set_wake(self, wake: Callable[[], None]) -> None:
        """Call `wake` after each commit that added outbox rows (a reload's new dispatcher)."""
        self._wake = wake

    # -- lifecycle --------------------------------------------------------------------------

    async def start(self) -> None:
        """Load when the daemon last ran: the catch-up after a stop starts from there."""
        last = await self.store.get_meta(META_LAST_RUNNING_AT)
        self.last_running_at = float(last) if last is not None else None

    async def heartbeat(self) -> None:
        """Record that the daemon is running."""
        meta = {META_LAST_RUNNING_AT: repr(self.clock())}
        await self._write(self.store.commit(SnapshotChanges(), [], meta=meta))

    async def needs_baseline(self) -> bool:
        """No sweep has ever committed to this store, or the store was adopted for another Box
        identity since the last baseline: the next sweep records the baseline."""
        baseline_at = await self.store.get_meta(META_BASELINE_AT)
        if baseline_at is None:
            return True
        rebaseline = await self.store.get_meta(META_REBASELINE)
        return rebaseline is not None and float(rebaseline) >= float(baseline_at)

    def silent(self, baseline: bool) -> bool:
        """A baseline sweep emits no events unless configured to."""
        return baseline and self.baseline == "silent"

    # -- observations -----------------------------------------------------------------------

    async def record_sweep(self, sweep: StagedSweep) -> tuple[Event, ...]:
        """Close a staged complete listing: rows an active poll committed meanwhile are skipped,
        the jobs the poller found gone (`sweep.gone`) are removed, events built, routed and
        committed with every staged row and the suspects in ONE transaction."""
        silent = self.silent(sweep.baseline)
        changed, before = sweep.changed, sweep.before
        async with self._lock:
            now = self.clock()
            for stale in await self.store.sweep_stale_ids():
                changed.pop(stale, None)  # an active poll got there first
            gone = await self.store.load_jobs(sorted(sweep.gone)) if sweep.gone else {}
            changes = SnapshotChanges(tuple(changed.values()), tuple(gone))
            events: tuple[Event, ...] = ()
            if not silent:
                touched = {j.batch_id for j in changed.values()}
                touched |= {j.batch_id for j in (*before.values(), *gone.values())}
                snapshot = {**before, **gone, **await self.store.load_batches(touched)}
                events = self._mark_late(events_for(snapshot, changes, now), None)
            meta = {META_LAST_SWEEP_AT: repr(now), META_LAST_RUNNING_AT: repr(now)}
            if not silent:
                events += await self._template_rises(changes, before, gone.values(), now, meta)
            if sweep.baseline:
                meta[META_BASELINE_AT] = repr(now)
            events = self._stamp(events)
            routed = self._route(events)
            await self._write(
                self.store.commit_sweep(
                    changes, routed, meta=meta, now=now, suspects=sweep.suspects
                )
            )
        self._swept = True
        self._caught_up.clear()  # never consulted again
        self._count(events, changes, before)
        await self.refresh_job_gauge()
        if routed:
            self._wake()
        return events

    async def record_batch(self, batch_id: str, jobs: Sequence[JobState]) -> Recorded:
        """Every job Box lists for one batch (none when Box does not know it): a partial
        observation, so no job of it can vanish."""
        return await self._record_poll([batch_id], jobs, "batch")

    async def record_job(self, job: JobState) -> Recorded:
        """One job read by its id: a partial observation of its batch."""
        return await self._record_poll([job.batch_id], [job], "job")

    async def record_head(self, jobs: Sequence[JobState]) -> Recorded:
        """What the head of the listing showed (discovery): a partial observation of each
        batch it touches, recorded in one commit."""
        batch_ids = sorted({j.batch_id for j in jobs})
        return await self._record_poll(batch_ids, jobs, "discover")

    @property
    def catching_up(self) -> frozenset[str]:
        """Batches polled since start whose events are no longer late (before the first sweep
        only: at most the active set, never every batch ever polled)."""
        return frozenset(self._caught_up)

    def forget(self, batch_id: str) -> None:
        """`batch_id` left the active set: nothing to remember about it."""
        self._caught_up.discard(batch_id)

    async def _record_poll(
        self, batch_ids: Sequence[str], jobs: Sequence[JobState], kind: str
    ) -> Recorded:
        async with self._lock:
            now = self.clock()
            snapshot = await self.store.load_batches(list(batch_ids))
            observation = Observation(tuple(jobs), complete=False, observed_at=now, kind=kind)
            unknown = [j.id for j in jobs if j.id not in snapshot]
            vanished = await self.store.vanished_seqs(unknown) if unknown else {}
            changes = snapshot_changes(snapshot, observation, now, vanished)
            events = self._mark_late(events_for(snapshot, changes, now), batch_ids)
            after = {**snapshot, **{j.id: j for j in changes.upserts}}
            if self.stuck.enabled:
                marks = await self.store.stuck_marks(list(after))
                events += stuck_events(after.values(), marks, self.stuck, now)
            meta = {META_LAST_RUNNING_AT: repr(now)}
            events += await self._template_rises(changes, snapshot, (), now, meta)
            events = self._stamp(events)
            routed = self._route(events)
            if changes.upserts or routed:
                await self._write(self.store.commit(changes, routed, meta=meta, now=now))
        if not self._swept:
            self._caught_up.update(batch_ids)
        self._count(events, changes, snapshot)
        if routed:
            self._wake()
        return Recorded(events, changes, after)

    async def _template_rises(
        self,
        changes: SnapshotChanges,
        before: Mapping[str, JobState],
        removed: Iterable[JobState],
        now: float,
        meta: dict[str, str],
    ) -> tuple[Event, ...]:
        """`template.failure_rate_rose` for the templates a job of this commit finished,
        counted as the snapshot will be after it; each rise once (a meta key commits with it,
        and its id is stable should a replay get past that)."""
        templates = finished_templates(changes.upserts, before) if self.rates.enabled else set()
        if not templates:
            return ()
        since = now - self.rates.window_s
        stored = await self.store.template_version_counts(sorted(templates), since)
        counts = {key: VersionCounts(*value) for key, value in stored.items()}
        fold(counts, templates, changes.upserts, removed, before, since)
        found = []
        for event in rises(counts, self.rates, now):
            key = f"{META_RISE_PREFIX}{event.id}"
            if await self.store.get_meta(key) is None:
                meta[key] = repr(now)
                found.append(event)
        return tuple(found)

    async def _write(self, commit: Awaitable[int]) -> None:
        """Run one commit, counting consecutive failures: a store that cannot be written makes
        the daemon reopen it, then report itself not alive."""
        try:
            rows = await commit
        except StoreError as exc:
            self.write_failures += 1
            self.last_write_error = str(exc)
            raise
        self.write_failures = 0
        self.last_write_error = None
        if rows:  # what is owed is on record (the twin of the dispatcher's `events_delivered`)
            log.info("events_committed", outbox_rows=rows)

    # -- the metrics of a commit ----------------------------------------------------------

    async def refresh_job_gauge(self) -> None:
        """`box_docgen_jobs` from the snapshot's counts per status."""
        counts = await self.store.status_counts()
        self.metrics.set_job_counts(counts)

    def _count(
        self, events: tuple[Event, ...], changes: SnapshotChanges, before: Mapping[str, JobState]
    ) -> None:
        for event in events:
            self.metrics.events.labels(event.type.value).inc()
            if event.type is EventType.JOB_STATUS_CHANGED:
                self.metrics.count_transition(event.from_status, event.to_status)
        for job in changes.upserts:
            old = before.get(job.id)
            if is_terminal(job.status) and (old is None or not is_terminal(old.status)):
                started = _created_s(job.created_at) or (old or job).first_seen_at
                self.metrics.observe_job_duration(job.status, max(0.0, job.changed_at - started))

    # -- shared -----------------------------------------------------------------------------

    def _stamp(self, events: tuple[Event, ...]) -> tuple[Event, ...]:
        """Every event names its account (`diff` and `stuck` know none)."""
        if self.account == DEFAULT_ACCOUNT:
            return events  # the model's default already
        return tuple(e.model_copy(update={"account": self.account}) for e in events)

    def _route(self, events: tuple[Event, ...]) -> list[RoutedEvent]:
        return [RoutedEvent(e, self._router.route(e)) for e in events]

    def _mark_late(
        self, events: tuple[Event, ...], batch_ids: Sequence[str] | None
    ) -> tuple[Event, ...]:
        """Events of the first look at something after a restart may be about the downtime:
        those of a sweep (`batch_ids` None), or of a batch not looked at since the start."""
        if self.last_running_at is None or self._swept:
            return events
        caught_up = self._caught_up if batch_ids is not None else set()
        since = datetime.fromtimestamp(self.last_running_at, UTC).isoformat()
        extra = {"late": True, "last_running_at": since.replace("+00:00", "Z")}
        return tuple(
            e if e.batch_id in caught_up else e.model_copy(update={"extra": {**e.extra, **extra}})
            for e in events
        )


def _created_s(created_at: str | None) -> float | None:
    if not created_at:
        return None
    try:
        return datetime.fromisoformat(created_at.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None
