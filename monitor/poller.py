"""What to poll and how to turn it into committed observations, at two speeds.

The sweep lists every job (`GET /2.0/docgen_jobs`) rarely: it discovers jobs and is the only
source of `job.vanished`. It streams: each page is diffed against the stored rows of that page's
jobs and staged in the store; `job.vanished` and `batch.completed` are worked out at the end, and
everything lands in ONE transaction (`commit_sweep`). A sweep that fails part way commits nothing.

Batches with non-terminal jobs (or watched through the API) form the active set, polled one by
one (`GET /2.0/docgen_batch_jobs/{id}`) every active interval: the request cost grows with the
active batches, not with the history. The process keeps only the active set's ids in memory.

After a restart, changes first seen by the first poll of each batch (and by the first sweep) may
have happened while the daemon was stopped: their events carry `late: true` and
`last_running_at` in `Event.extra`."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime

import structlog

from monitor.box.client import BoxClient
from monitor.box.errors import BoxAuthError, BoxNotFound
from monitor.box.models import DocGenJob, JobListingPage, ListedJob
from monitor.diff import events_for, snapshot_changes
from monitor.metrics import Metrics
from monitor.model import (
    KNOWN_STATUSES,
    Event,
    EventType,
    JobState,
    Observation,
    SnapshotChanges,
    is_terminal,
)
from monitor.notify.router import Router
from monitor.store.base import RoutedEvent, Store
from monitor.stuck import StuckPolicy, stuck_events

log = structlog.get_logger(__name__)

META_BASELINE_AT = "baseline_at"
META_LAST_SWEEP_AT = "last_sweep_at"
META_LAST_RUNNING_AT = "last_running_at"
#: Batches polled at once in one active round (each is one request from the budget).
ACTIVE_CONCURRENCY = 8
#: Pages fetched ahead of the one being diffed.
PREFETCH_PAGES = 2


def job_state(job: DocGenJob) -> JobState:
    created_by = getattr(job, "created_by", None)
    return JobState(
        id=job.id,
        batch_id=job.batch.id,
        status=job.status,
        template_file_id=job.template_file.id,
        output_type=job.output_type,
        output_file_id=job.output_file.id if job.output_file is not None else None,
        created_at=getattr(job, "created_at", None),
        created_by_id=created_by.id if created_by is not None else None,
        errors=tuple(job.failures.errors) if job.failures is not None else (),
        warnings=tuple(job.failures.warnings) if job.failures is not None else (),
    )


def listed_job_state(job: ListedJob) -> JobState:
    output_file = job.get("output_file")
    failures = job.get("failures")
    return JobState(
        id=job["id"],
        batch_id=job["batch"]["id"],
        status=job["status"],
        template_file_id=job["template_file"]["id"],
        output_type=job["output_type"],
        output_file_id=output_file["id"] if output_file is not None else None,
        created_at=job.get("created_at"),
        created_by_id=job["created_by"]["id"],
        errors=tuple(failures["errors"]) if failures else (),
        warnings=tuple(failures["warnings"]) if failures else (),
    )


@dataclass(frozen=True, slots=True)
class SweepResult:
    events: tuple[Event, ...]
    jobs_seen: int
    requests: int
    baseline: bool  # this sweep recorded the silent baseline


@dataclass(slots=True)
class _Active:
    """One batch of the active set. `observed_at` is when it was last polled successfully."""

    observed_at: float
    watched_until: float | None = None  # a watched batch Box does not list yet, kept until then


class Poller:
    def __init__(
        self,
        box: BoxClient,
        store: Store,
        router: Router,
        metrics: Metrics,
        *,
        baseline: str = "silent",
        page_size: int = 1000,
        stuck: StuckPolicy | None = None,
        watch_ttl_s: float = 600.0,
        on_commit: Callable[[], None] = lambda: None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.box = box
        self.store = store
        self.router = router
        self.metrics = metrics
        self.baseline = baseline
        self.page_size = page_size
        self.stuck = stuck or StuckPolicy()
        self.watch_ttl_s = watch_ttl_s
        self.on_commit = on_commit
        self.clock = clock
        self.active: dict[str, _Active] = {}
        self.last_sweep_requests = 0
        self.last_running_at: float | None = None  # before this process started
        self._caught_up: set[str] = set()  # batches polled since start (no longer late)
        self._swept = False  # a sweep committed since start
        self._baseline_done = False
        # Sweep and active polls read then write the same rows: one commit at a time.
        self._commit_lock = asyncio.Lock()
        self._unknown_statuses: set[str] = set()
        self._status_labels: set[str] = set(KNOWN_STATUSES)

    async def start(self) -> None:
        """Load what survives a restart: when the daemon last ran, and the active set."""
        last = await self.store.get_meta(META_LAST_RUNNING_AT)
        self.last_running_at = float(last) if last is not None else None
        self._baseline_done = await self.store.get_meta(META_BASELINE_AT) is not None
        now = self.clock()
        for batch_id in await self.store.active_batch_ids():
            self.active.setdefault(batch_id, _Active(observed_at=now))
        self.metrics.active_batches.set(len(self.active))

    async def heartbeat(self) -> None:
        """Record that the daemon is running (the catch-up after a stop starts from here)."""
        meta = {META_LAST_RUNNING_AT: repr(self.clock())}
        await self.store.commit(SnapshotChanges(), [], meta=meta)

    # -- the sweep ----------------------------------------------------------------------------

    async def sweep(self) -> SweepResult:
        """One complete listing -> diff -> one commit. Raises (and commits nothing) on failure."""
        started = time.perf_counter()
        start_at = self.clock()
        first = await self.store.get_meta(META_BASELINE_AT) is None
        silent = first and self.baseline == "silent"
        generation = await self.store.sweep_begin()
        changed: dict[str, JobState] = {}  # kept only when events will be built from them
        before: dict[str, JobState] = {}
        jobs_seen = requests = 0
        async for page in _prefetch(self.box.iter_job_listing(self.page_size), PREFETCH_PAGES):
            requests += 1
            entries = page["entries"]
            jobs_seen += len(entries)
            self._note_unknown_statuses((e["status"], e["id"]) for e in entries)
            ids = [e["id"] for e in entries]
            stored = await self.store.load_jobs(ids)
            # Most jobs of a steady sweep are unchanged: recognised on the raw entry, they never
            # become JobStates; the rest go through the pure diff.
            fresh = tuple(
                listed_job_state(e) for e in entries if not _unchanged(stored.get(e["id"]), e)
            )
            page_changes = snapshot_changes(
                stored, Observation(fresh, complete=False, observed_at=start_at), start_at
            )
            staged = [
                (j, stored[j.id].seq if j.id in stored else 0)
                for j in page_changes.upserts
                if j.id not in changed
            ]
            await self.store.sweep_stage(generation, ids, staged)
            if not silent:
                for job, _ in staged:
                    changed[job.id] = job
                    if job.id in stored:
                        before[job.id] = stored[job.id]
        now = self.clock()
        async with self._commit_lock:
            for stale in await self.store.sweep_stale_ids():
                changed.pop(stale, None)  # an active poll got there first
            gone = await self.store.sweep_unseen(generation, start_at)
            changes = SnapshotChanges(tuple(changed.values()), tuple(gone))
            events: tuple[Event, ...] = ()
            if not silent:
                touched = {j.batch_id for j in changed.values()}
                touched |= {j.batch_id for j in (*before.values(), *gone.values())}
                snapshot = {**before, **gone, **await self.store.load_batches(touched)}
                events = self._mark_late(events_for(snapshot, changes, now), None)
            meta = {META_LAST_SWEEP_AT: repr(now), META_LAST_RUNNING_AT: repr(now)}
            if first:
                meta[META_BASELINE_AT] = repr(now)
            routed = [RoutedEvent(e, self.router.route(e)) for e in events]
            await self.store.commit_sweep(changes, routed, meta=meta, now=now)
        self._swept = True
        self._baseline_done = True
        self.last_sweep_requests = requests
        self._after_commit(events, changes, before)
        for batch_id in await self.store.active_batch_ids():
            self.active.setdefault(batch_id, _Active(observed_at=now))
        self.metrics.active_batches.set(len(self.active))
        await self.refresh_job_gauge()
        self.metrics.poll_duration.labels("sweep").observe(time.perf_counter() - started)
        self.metrics.poll_last_success.set(now)
        if first:
            log.info("baseline_recorded", jobs=jobs_seen, mode=self.baseline)
        log.info(
            "sweep_committed",
            jobs=jobs_seen,
            events=len(events),
            requests=requests,
            duration_s=round(time.perf_counter() - started, 3),
        )
        if routed:
            self.on_commit()
        return SweepResult(events, jobs_seen, requests, silent)

    # -- the active set -----------------------------------------------------------------------

    def watch(self, batch_id: str) -> None:
        """Put a batch into the active set now, before any sweep has seen it."""
        now = self.clock()
        entry = self.active.setdefault(batch_id, _Active(observed_at=now))
        entry.watched_until = now + self.watch_ttl_s
        self.metrics.active_batches.set(len(self.active))
        log.info("batch_watched", batch_id=batch_id)

    async def poll_active(self) -> int:
        """Poll every active batch once (oldest observation first); returns how many were
        polled. A batch that fails stays active and is tried again next round."""
        if not self._baseline_done:
            return 0  # the first sweep records the baseline; nothing to compare against yet
        started = time.perf_counter()
        order = sorted(self.active, key=lambda b: self.active[b].observed_at)
        gate = asyncio.Semaphore(ACTIVE_CONCURRENCY)

        async def one(batch_id: str) -> bool:
            async with gate:
                try:
                    await self.poll_batch(batch_id)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    self.metrics.polls.labels("active", "error").inc()
                    if not isinstance(exc, BoxAuthError):  # logged once per try by the auth
                        log.warning("active_poll_failed", batch_id=batch_id, error=str(exc))
                    return False
                self.metrics.polls.labels("active", "ok").inc()
                return True

        results = await asyncio.gather(*(one(b) for b in order))
        if order:
            self.metrics.poll_duration.labels("active").observe(time.perf_counter() - started)
        self.metrics.active_batches.set(len(self.active))
        return sum(results)

    async def poll_batch(self, batch_id: str) -> tuple[Event, ...]:
        """One batch: list its jobs, diff against its stored rows, add stuck events, commit.
        A lone straggler (one job of a known batch still running) is read by its own id: one
        small answer instead of the whole batch's pages."""
        straggler = _lone_straggler(await self.store.load_batches([batch_id]))
        try:
            if straggler is not None:
                jobs = [job_state(await self.box.get_job(straggler))]
            else:
                jobs = [job_state(j) for j in await self.box.list_batch_jobs(batch_id)]
        except BoxNotFound:
            jobs = []  # not (yet) known to Box, or gone: only a sweep may say a job vanished
        now = self.clock()
        self._note_unknown_statuses((j.status, j.id) for j in jobs)
        async with self._commit_lock:
            snapshot = await self.store.load_batches([batch_id])
            observation = Observation(tuple(jobs), complete=False, observed_at=now, kind="batch")
            changes = snapshot_changes(snapshot, observation, now)
            events = self._mark_late(events_for(snapshot, changes, now), batch_id)
            after = {**snapshot, **{j.id: j for j in changes.upserts}}
            if self.stuck.enabled:
                marks = await self.store.stuck_marks(list(after))
                events += stuck_events(after.values(), marks, self.stuck, now)
            routed = [RoutedEvent(e, self.router.route(e)) for e in events]
            if changes.upserts or routed:
                meta = {META_LAST_RUNNING_AT: repr(now)}
                await self.store.commit(changes, routed, meta=meta, now=now)
        self._caught_up.add(batch_id)
        self._after_commit(events, changes, snapshot)
        self._settle(batch_id, after.values(), now)
        if routed:
            self.on_commit()
        return events

    def _settle(self, batch_id: str, jobs: Iterable[JobState], now: float) -> None:
        """Keep the batch active while any job is not terminal (or a watch has not expired)."""
        entry = self.active.setdefault(batch_id, _Active(observed_at=now))
        entry.observed_at = now
        listed = list(jobs)
        if listed:
            entry.watched_until = None  # Box knows it now; its jobs decide
            if all(is_terminal(j.status) for j in listed):
                del self.active[batch_id]
        elif entry.watched_until is None or now >= entry.watched_until:
            del self.active[batch_id]
        self.metrics.active_batches.set(len(self.active))

    def detection_lag_s(self) -> float:
        """How stale the oldest observation of an active batch is."""
        if not self.active:
            return 0.0
        return max(0.0, self.clock() - min(a.observed_at for a in self.active.values()))

    # -- shared ---------------------------------------------------------------------------------

    def _mark_late(self, events: tuple[Event, ...], batch_id: str | None) -> tuple[Event, ...]:
        """Events of the first look at something after a restart may be about the downtime."""
        if self.last_running_at is None:
            return events
        if self._swept or (batch_id is not None and batch_id in self._caught_up):
            return events
        since = datetime.fromtimestamp(self.last_running_at, UTC).isoformat()
        extra = {"late": True, "last_running_at": since.replace("+00:00", "Z")}
        return tuple(e.model_copy(update={"extra": {**e.extra, **extra}}) for e in events)

    def _after_commit(
        self, events: tuple[Event, ...], changes: SnapshotChanges, before: dict[str, JobState]
    ) -> None:
        for event in events:
            self.metrics.events.labels(event.type.value).inc()
            if event.type is EventType.JOB_STATUS_CHANGED:
                self.metrics.job_transitions.labels(event.from_status, event.to_status).inc()
        for job in changes.upserts:
            old = before.get(job.id)
            if is_terminal(job.status) and (old is None or not is_terminal(old.status)):
                started = _created_s(job.created_at) or (old or job).first_seen_at
                self.metrics.job_duration.labels(job.status).observe(
                    max(0.0, job.changed_at - started)
                )

    async def refresh_job_gauge(self) -> None:
        counts = await self.store.status_counts()
        self._status_labels |= counts.keys()
        for status in self._status_labels:
            self.metrics.jobs.labels(status).set(counts.get(status, 0))

    def _note_unknown_statuses(self, jobs: Iterable[tuple[str, str]]) -> None:
        """Count each sighting of a status this build does not know; log each such status once.
        `jobs` are (status, job id) pairs."""
        for status, job_id in jobs:
            if status not in KNOWN_STATUSES:
                self.metrics.unknown_statuses.inc()
                if status not in self._unknown_statuses:
                    self._unknown_statuses.add(status)
                    log.warning(
                        "unknown_job_status",
                        status=status,
                        job_id=job_id,
                        treated_as="non-terminal",
                    )


def _unchanged(stored: JobState | None, entry: ListedJob) -> bool:
    """`JobState.same_observation`, tested on a raw listing entry (no JobState built)."""
    if stored is None:
        return False
    output_file = entry.get("output_file")
    failures = entry.get("failures")
    return (
        stored.status == entry["status"]
        and stored.batch_id == entry["batch"]["id"]
        and stored.output_file_id == (output_file["id"] if output_file is not None else None)
        and stored.template_file_id == entry["template_file"]["id"]
        and stored.output_type == entry["output_type"]
        and stored.errors == (tuple(failures["errors"]) if failures else ())
        and stored.warnings == (tuple(failures["warnings"]) if failures else ())
    )


def _lone_straggler(batch: dict[str, JobState]) -> str | None:
    """The id of the only non-terminal job of a batch with other jobs, else None."""
    running = [j.id for j in batch.values() if not is_terminal(j.status)]
    return running[0] if len(running) == 1 and len(batch) > 1 else None


def _created_s(created_at: str | None) -> float | None:
    if not created_at:
        return None
    try:
        return datetime.fromisoformat(created_at.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


async def _prefetch(
    pages: AsyncIterator[JobListingPage], depth: int
) -> AsyncIterator[JobListingPage]:
    """Fetch up to `depth` pages ahead while the caller diffs the current one. A failure of the
    listing is raised to the caller at the page where it happened."""
    queue: asyncio.Queue[JobListingPage | BaseException | None] = asyncio.Queue(depth)

    async def produce() -> None:
        try:
            async for page in pages:
                await queue.put(page)
            await queue.put(None)
        except asyncio.CancelledError:
            raise
        except BaseException as exc:
            await queue.put(exc)

    task = asyncio.create_task(produce(), name="sweep-prefetch")
    try:
        while True:
            item = await queue.get()
            if item is None:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        aclose = getattr(pages, "aclose", None)
        if aclose is not None:
            await aclose()
