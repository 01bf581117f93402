"""What the status page shows, gathered in one pass: polling health (from the daemon), active
batches, failure groups, dead letters and notifier health (from the store's read-only
`StatusReader` role). Plain data: the templates only format it."""

from __future__ import annotations

import math
import time
from collections.abc import Awaitable, Callable, Collection, Mapping
from dataclasses import dataclass, field
from datetime import datetime

from monitor.failures import FailureGroup, group_failures
from monitor.model import KNOWN_STATUSES, TERMINAL_STATUSES
from monitor.store.base import (
    BatchSummary,
    NotifierActivity,
    OutboxEntry,
    OutboxState,
    Silence,
    SilenceReader,
    StatusReader,
)

#: The page shows this many batches (the oldest first) and says how many more there are.
MAX_BATCHES = 50
#: Failures of this window are grouped; at most this many jobs are read for it.
FAILURE_WINDOW_S = 24 * 3600.0
MAX_FAILED_JOBS = 2000
MAX_FAILURE_GROUPS = 20
#: Dead letters shown per notifier (the count says how many there are).
MAX_DEAD_PER_NOTIFIER = 20
#: Status order on a progress bar: done first, then what is still running.
BAR_ORDER = ("completed", "completed_with_error", "failed", "submitted", "pending")


@dataclass(frozen=True, slots=True)
class PollingHealth:
    """The daemon's polling state, as `/readyz` knows it, plus the request budget and Box's
    errors. Ages are seconds; None when there is nothing yet."""

    ready: bool
    last_sweep_age_s: float | None
    max_sweep_age_s: float
    degradation: str
    sweep_interval_s: float
    active_interval_s: float
    last_error: str | None = None
    auth: str = "ok"
    refusal: str | None = None
    budget_rate_per_minute: float | None = None
    budget_ceiling_per_minute: float | None = None
    budget_available: float | None = None
    budget_used: int | None = None
    box_requests: int = 0
    box_errors: int = 0


@dataclass(frozen=True, slots=True)
class BatchView:
    batch_id: str
    watched: bool
    summary: BatchSummary | None  # None: watched, and Box does not list it yet
    elapsed_s: float | None

    @property
    def segments(self) -> list[tuple[str, int, float]]:
        """(status, jobs, start %) per status, in `BAR_ORDER`, then unknown statuses."""
        if self.summary is None or self.summary.jobs == 0:
            return []
        counts = self.summary.counts
        order = [s for s in BAR_ORDER if counts.get(s)] + sorted(
            s for s in counts if s not in BAR_ORDER and counts[s]
        )
        total = self.summary.jobs
        segments, start = [], 0.0
        for status in order:
            segments.append((status, counts[status], start))
            start += 100.0 * counts[status] / total
        return segments

    @property
    def done(self) -> int:
        if self.summary is None:
            return 0
        return sum(n for s, n in self.summary.counts.items() if s in TERMINAL_STATUSES)


@dataclass(frozen=True, slots=True)
class NotifierView:
    name: str
    activity: NotifierActivity
    backlog: int
    dead: int
    dead_letters: list[OutboxEntry] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class StatusView:
    now: float
    polling: PollingHealth
    batches: list[BatchView]
    more_batches: int
    failures: list[FailureGroup]
    failed_jobs: int
    failures_capped: bool
    notifiers: list[NotifierView]
    silences: list[Silence] = field(default_factory=list)  # active and pending

    @property
    def dead_total(self) -> int:
        return sum(n.dead for n in self.notifiers)


@dataclass(frozen=True, slots=True)
class StatusSources:
    """Where the page reads from: the store's read-only role, and the daemon's live state.
    `active` maps each batch the poller follows to whether it came through the watch API;
    `retry_dead(notifier, event_id)` requeues dead letters (None: all of the notifier's) and
    answers how many; `add_silence` and `expire_silence(id)` (None: the page cannot change
    silences) write to the store; `baseline_at()` is when the baseline was recorded (its jobs
    are history, not recent failures), or None."""

    store: StatusReader
    polling: Callable[[], PollingHealth]
    active: Callable[[], Mapping[str, bool]]
    notifiers: Callable[[], Collection[str]]
    retry_dead: Callable[[str, str | None], Awaitable[int]]
    baseline_at: Callable[[], Awaitable[float | None]]
    clock: Callable[[], float] = time.time
    silences: SilenceReader | None = None  # where silences are read (None: `store`)
    add_silence: Callable[[Silence], Awaitable[None]] | None = None
    expire_silence: Callable[[str], Awaitable[Silence | None]] | None = None


async def gather(sources: StatusSources) -> StatusView:
    now = sources.clock()
    batches, more = await _batches(sources, now)
    since = now - FAILURE_WINDOW_S
    baseline_at = await sources.baseline_at()
    if baseline_at is not None:
        # A baseline's rows changed at or before it: a failure after it changed later.
        since = max(since, math.nextafter(baseline_at, math.inf))
    failed = await sources.store.recent_failures(since, MAX_FAILED_JOBS)
    return StatusView(
        now=now,
        polling=sources.polling(),
        batches=batches,
        more_batches=more,
        failures=group_failures(failed)[:MAX_FAILURE_GROUPS],
        failed_jobs=len(failed),
        failures_capped=len(failed) >= MAX_FAILED_JOBS,
        notifiers=await _notifiers(sources),
        silences=await (sources.silences or sources.store).list_silences(ended_after=now),
    )


async def _batches(sources: StatusSources, now: float) -> tuple[list[BatchView], int]:
    """The batches the poller follows, and those the snapshot says still run (a restart
    forgets nothing): the longest-running first."""
    active = dict(sources.active())
    for batch_id in await sources.store.active_batch_ids():
        active.setdefault(batch_id, False)
    summaries = await sources.store.batch_summaries(active)
    views = [
        BatchView(
            batch_id=batch_id,
            watched=watched,
            summary=summaries.get(batch_id),
            elapsed_s=_elapsed_s(summaries[batch_id], now) if batch_id in summaries else None,
        )
        for batch_id, watched in active.items()
    ]
    views.sort(key=lambda b: (b.summary is not None, -(b.elapsed_s or 0.0), b.batch_id))
    return views[:MAX_BATCHES], max(0, len(views) - MAX_BATCHES)


def _elapsed_s(summary: BatchSummary, now: float) -> float:
    """Since Box created the batch's first job, when Box said so in a form that reads as a
    time in the past; else since the monitor first saw one of its jobs."""
    since = summary.first_seen_at
    if summary.created_at is not None:
        try:
            created = datetime.fromisoformat(summary.created_at)
        except ValueError:
            created = None
        if created is not None and created.tzinfo is not None:
            since = min(since, created.timestamp())
    return max(0.0, now - since)


async def _notifiers(sources: StatusSources) -> list[NotifierView]:
    counts = await sources.store.outbox_counts()
    activity = await sources.store.notifier_activity()
    names = sorted(set(sources.notifiers()) | counts.keys())
    views = []
    for name in names:
        by_state = counts.get(name, {})
        dead = by_state.get(OutboxState.DEAD, 0)
        letters = (
            await sources.store.list_outbox(OutboxState.DEAD, name, MAX_DEAD_PER_NOTIFIER)
            if dead
            else []
        )
        views.append(
            NotifierView(
                name=name,
                activity=activity.get(name, NotifierActivity(name)),
                backlog=by_state.get(OutboxState.PENDING, 0) + by_state.get(OutboxState.CLAIMED, 0),
                dead=dead,
                dead_letters=letters,
            )
        )
    return views


def status_class(status: str) -> str:
    """A CSS class for a status: Box's own, or `unknown` (a status is Box's text)."""
    return status if status in KNOWN_STATUSES else "unknown"
