"""What to poll and how to turn it into a committed observation.

A sweep lists every job (`GET /2.0/docgen_jobs`, page by page), diffs the complete listing against
the stored snapshot and commits snapshot + events in one transaction. Any failure before the
commit leaves the store untouched: the next tick simply tries again."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import structlog

from monitor.box.client import BoxClient
from monitor.box.models import DocGenJobFull
from monitor.diff import events_for, snapshot_changes
from monitor.metrics import Metrics
from monitor.model import KNOWN_STATUSES, Event, EventType, JobState, Observation
from monitor.notify.router import Router
from monitor.store.base import RoutedEvent, Store

log = structlog.get_logger(__name__)

META_BASELINE_AT = "baseline_at"
META_LAST_SWEEP_AT = "last_sweep_at"


def job_state(job: DocGenJobFull) -> JobState:
    return JobState(
        id=job.id,
        batch_id=job.batch.id,
        status=job.status,
        template_file_id=job.template_file.id,
        output_type=job.output_type,
        output_file_id=job.output_file.id if job.output_file is not None else None,
        created_at=job.created_at,
        created_by_id=job.created_by.id,
        errors=tuple(job.failures.errors) if job.failures is not None else (),
        warnings=tuple(job.failures.warnings) if job.failures is not None else (),
    )


@dataclass(frozen=True, slots=True)
class SweepResult:
    events: tuple[Event, ...]
    jobs_seen: int
    requests: int
    baseline: bool  # this sweep recorded the silent baseline


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
        on_commit: Callable[[], None] = lambda: None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.box = box
        self.store = store
        self.router = router
        self.metrics = metrics
        self.baseline = baseline
        self.page_size = page_size
        self.on_commit = on_commit
        self.clock = clock
        self._unknown_statuses: set[str] = set()
        self._status_labels: set[str] = set(KNOWN_STATUSES)

    async def sweep(self) -> SweepResult:
        """One complete listing -> diff -> one commit. Raises (and commits nothing) on failure."""
        started = time.perf_counter()
        jobs: list[JobState] = []
        requests = 0
        async for page in self.box.iter_job_pages(self.page_size):
            requests += 1
            jobs.extend(job_state(j) for j in page.entries)
        now = self.clock()
        self._note_unknown_statuses(jobs)
        snapshot = await self.store.load_snapshot()
        observation = Observation(tuple(jobs), complete=True, observed_at=now)
        changes = snapshot_changes(snapshot, observation, now)
        meta = {META_LAST_SWEEP_AT: repr(now)}
        first = await self.store.get_meta(META_BASELINE_AT) is None
        if first:
            meta[META_BASELINE_AT] = repr(now)
        silent = first and self.baseline == "silent"
        events = () if silent else events_for(snapshot, changes, now)
        routed = [RoutedEvent(e, self.router.route(e)) for e in events]
        await self.store.commit(changes, routed, meta=meta, now=now)
        self._count(events)
        await self.refresh_job_gauge()
        self.metrics.poll_duration.labels("sweep").observe(time.perf_counter() - started)
        self.metrics.poll_last_success.set(now)
        if first:
            log.info("baseline_recorded", jobs=len(jobs), mode=self.baseline)
        log.info(
            "sweep_committed",
            jobs=len(jobs),
            events=len(events),
            requests=requests,
            duration_s=round(time.perf_counter() - started, 3),
        )
        if routed:
            self.on_commit()
        return SweepResult(events, len(jobs), requests, silent)

    async def refresh_job_gauge(self) -> None:
        counts = await self.store.status_counts()
        self._status_labels |= counts.keys()
        for status in self._status_labels:
            self.metrics.jobs.labels(status).set(counts.get(status, 0))

    def _count(self, events: tuple[Event, ...]) -> None:
        for event in events:
            self.metrics.events.labels(event.type.value).inc()
            if event.type is EventType.JOB_STATUS_CHANGED:
                self.metrics.job_transitions.labels(event.from_status, event.to_status).inc()

    def _note_unknown_statuses(self, jobs: list[JobState]) -> None:
        for job in jobs:
            if job.status not in KNOWN_STATUSES:
                self.metrics.unknown_statuses.inc()
                if job.status not in self._unknown_statuses:
                    self._unknown_statuses.add(job.status)
                    log.warning(
                        "unknown_job_status",
                        status=job.status,
                        job_id=job.id,
                        treated_as="non-terminal",
                    )
