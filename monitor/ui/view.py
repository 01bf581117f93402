"""What the status page shows, gathered in one pass, account by account: who leads it (the
lease table), polling health (from the unit, only where this replica leads it), active
batches, failure groups, dead letters and notifier health (from the store's read-only
`StatusReader` role, through a handle open on every replica: reads need no lease). Plain
data: the templates only format it."""

from __future__ import annotations

import math
import time
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
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
class AccountView:
    """One account's part of the page. `polling` is None where this replica does not lead
    the account (only the leader polls: its figures are on its own page); `leader` is the
    replica holding the account's live lease, None when nobody does."""

    name: str
    leader: str | None
    polling: PollingHealth | None
    batches: list[BatchView]
    more_batches: int
    failures: list[FailureGroup]
    failed_jobs: int
    failures_capped: bool
    notifiers: list[NotifierView]

    @property
    def dead_total(self) -> int:
        return sum(n.dead for n in self.notifiers)


@dataclass(frozen=True, slots=True)
class StatusView:
    now: float
    replica: str  # this process's name among replicas
    accounts: list[AccountView]
    silences: list[Silence] = field(default_factory=list)  # active and pending

    @property
    def several(self) -> bool:
        """Several accounts: each section names its account (and element ids carry it)."""
        return len(self.accounts) > 1


@dataclass(frozen=True, slots=True)
class AccountSources:
    """Where one account's part is read from. `store`: a handle open whether or not this
    replica leads the account. `polling()`: None while this replica does not run the
    account. `active()` maps each batch the poller follows here to whether it came through
    the watch API (empty on a standby: the snapshot's running batches still show).
    `retry_dead(notifier, event_id)` requeues dead letters (None: all of the notifier's) and
    answers how many; `baseline_at()` is when the baseline was recorded (its jobs are
    history, not recent failures), or None."""

    name: str
    store: StatusReader
    polling: Callable[[], PollingHealth | None]
    active: Callable[[], Mapping[str, bool]]
    retry_dead: Callable[[str, str | None], Awaitable[int]]
    baseline_at: Callable[[], Awaitable[float | None]]


@dataclass(frozen=True, slots=True)
class StatusSources:
    """Where the page reads from: each account's sources, and what they share.
    `leaders()` maps each account to the replica holding its live lease (absent: nobody);
    `add_silence` and `expire_silence(id)` (None: the page cannot change silences) write to
    the store silences live in (`silences`; None: the first account's)."""

    accounts: Sequence[AccountSources]
    notifiers: Callable[[], Collection[str]]
    leaders: Callable[[], Awaitable[Mapping[str, str]]]
    replica: str = ""
    clock: Callable[[], float] = time.time
    silences: SilenceReader | None = None
    add_silence: Callable[[Silence], Awaitable[None]] | None = None
    expire_silence: Callable[[str], Awaitable[Silence | None]] | None = None

    def account(self, name: str | None) -> AccountSources | None:
        """The account named `name`; with one account, that one when no name is given."""
        if name is None and len(self.accounts) == 1:
            return self.accounts[0]
        return next((a for a in self.accounts if a.name == name), None)


async def gather(sources: StatusSources) -> StatusView:
    now = sources.clock()
    leaders = await sources.leaders()
    names = sources.notifiers()
    accounts = [await _account(a, names, leaders.get(a.name), now) for a in sources.accounts]
    silences = sources.silences or sources.accounts[0].store
    return StatusView(
        now=now,
        replica=sources.replica,
        accounts=accounts,
        silences=await silences.list_silences(ended_after=now),
    )


async def _account(
    sources: AccountSources, notifiers: Collection[str], leader: str | None, now: float
) -> AccountView:
    batches, more = await _batches(sources, now)
    since = now - FAILURE_WINDOW_S
    baseline_at = await sources.baseline_at()
    if baseline_at is not None:
        # A baseline's rows changed at or before it: a failure after it changed later.
        since = max(since, math.nextafter(baseline_at, math.inf))
    failed = await sources.store.recent_failures(since, MAX_FAILED_JOBS)
    return AccountView(
        name=sources.name,
        leader=leader,
        polling=sources.polling(),
        batches=batches,
        more_batches=more,
        failures=group_failures(failed)[:MAX_FAILURE_GROUPS],
        failed_jobs=len(failed),
        failures_capped=len(failed) >= MAX_FAILED_JOBS,
        notifiers=await _notifiers(sources.store, notifiers),
    )


async def _batches(sources: AccountSources, now: float) -> tuple[list[BatchView], int]:
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


async def _notifiers(store: StatusReader, configured: Collection[str]) -> list[NotifierView]:
    counts = await store.outbox_counts()
    activity = await store.notifier_activity()
    names = sorted(set(configured) | counts.keys())
    views = []
    for name in names:
        by_state = counts.get(name, {})
        dead = by_state.get(OutboxState.DEAD, 0)
        letters = (
            await store.list_outbox(OutboxState.DEAD, name, MAX_DEAD_PER_NOTIFIER)
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
