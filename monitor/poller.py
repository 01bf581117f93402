"""What to poll and how to turn it into committed observations, at two speeds.

The sweep lists every job (`GET /2.0/docgen_jobs`) rarely: it discovers jobs and is the only
source of `job.vanished`. It streams: each page is diffed against the stored rows of that page's
jobs and staged in the store; `job.vanished` and `batch.completed` are worked out at the end by
the recorder, and everything lands in ONE transaction (`commit_sweep`). A sweep that fails part
way commits nothing.

Batches with non-terminal jobs (or watched through the API) form the active set, polled every
active interval: one by one (`GET /2.0/docgen_batch_jobs/{id}`), or, when the listing proves
newest-first and its head down to the oldest open job costs fewer pages than the batches would
cost polls, by reading that head once (`monitor.discovery.HeadWindow`). Either way the request
cost grows with the active jobs, not with the history. Each batch is still polled on its own
every `DIRECT_POLL_EVERY_S`, for jobs a listing may not show. The process keeps only the active
set's ids in memory.

The poller decides what to read and builds complete observations; every commit is the
`Recorder`'s (`monitor/recorder.py`): the poller's store role cannot commit."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TypeVar

import structlog

from monitor.box.budget import Priority
from monitor.box.client import BoxClient
from monitor.box.errors import BoxAuthError, BoxError, BoxNotFound
from monitor.box.listing import InvalidEntry, ListingPage
from monitor.box.models import DocGenJob, ListedJob
from monitor.diff import drop_regressions, snapshot_changes
from monitor.discovery import HeadWindow, NewestFirst, created_s
from monitor.identity import IdentityGuard
from monitor.listed import ListingMatch, listed_job_state, listed_observed, listed_row
from monitor.metrics import Metrics
from monitor.model import (
    KNOWN_STATUSES,
    Event,
    EventType,
    JobState,
    Observation,
    is_terminal,
)
from monitor.recorder import Recorded, Recorder, StagedSweep
from monitor.store.base import PollStore
from monitor.store.rows import job_to_row
from monitor.vanish import plan_vanish

log = structlog.get_logger(__name__)
_T = TypeVar("_T")

#: Batches polled at once in one active round (each is one request from the budget).
ACTIVE_CONCURRENCY = 8
#: Malformed listing entries remembered so that each is logged once.
MAX_INVALID_LOGGED = 10_000
#: Jobs read by id at once when a listing is checked (missing or conflicting jobs).
CONFIRM_CONCURRENCY = 8
#: Pages fetched ahead of the one being diffed.
PREFETCH_PAGES = 2
#: The sweep waits this long at most for an active round to end before fetching a page.
SWEEP_YIELD_MAX_S = 5.0
#: Watched batches Box does not list yet are polled at most this many per active round (fewest
#: tries first), each less often the longer Box does not know it: a flood of watches for ids
#: that never appear costs a bounded share of the budget, and real active batches keep their
#: interval.
WATCH_POLLS_PER_ROUND = 4
#: The delay between two polls of one such batch doubles from the first to the last value.
WATCH_RETRY_FIRST_S = 1.0
WATCH_RETRY_MAX_S = 60.0
#: Pages one discovery reads at most (a flood of new jobs beyond them waits for the next read,
#: which starts at the head again, or for the sweep).
DISCOVER_MAX_PAGES = 20
#: An active round reads at most this many pages of the listing's head in place of batch polls.
WINDOW_MAX_PAGES = 50
#: A batch the head window covers is still polled on its own this often (a job of it the
#: listing does not show would otherwise wait for the batch's end).
DIRECT_POLL_EVERY_S = 60.0
#: An unknown status is logged cut to this many characters, and only the first this many.
MAX_STATUS_LOG_CHARS = 64
MAX_UNKNOWN_LOGGED = 50
#: What found a change (`found_by` of the detection latency): the sweep, a periodic poll of an
#: active batch, or a poll a Box webhook notification asked for.
FOUND_BY_SWEEP = "sweep"
FOUND_BY_ACTIVE = "active_poll"
FOUND_BY_HINT = "webhook_hint"
#: Events that say a job changed at Box (stuck, vanished and batch events are derived).
_CHANGE_EVENTS = frozenset(
    {EventType.JOB_DISCOVERED, EventType.JOB_STATUS_CHANGED, EventType.JOB_REAPPEARED}
)
#: Called with (batch id, status changes) after a periodic active poll found some.
ChangesFound = Callable[[str, int], None]


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
        template_file_version_id=job.template_file_version.id,
    )


@dataclass(frozen=True, slots=True)
class SweepResult:
    events: tuple[Event, ...]
    jobs_seen: int
    requests: int
    baseline: bool  # this sweep recorded the silent baseline


@dataclass(frozen=True, slots=True)
class DiscoverResult:
    events: tuple[Event, ...]
    requests: int
    newest_first: bool  # the listing proved newest-first over what this read saw


@dataclass(slots=True)
class _Active:
    """One batch of the active set. `observed_at` is when it was last polled successfully
    (monotonic seconds, as are `watched_until` and `next_try_at`)."""

    observed_at: float
    watched_until: float | None = None  # a watched batch Box does not list yet, kept until then
    tries: int = 0  # polls of such a batch that found nothing
    next_try_at: float = 0.0
    templates: frozenset[str] = frozenset()  # its jobs' template files (empty: not polled yet)
    #: `created_at` (unix s) of its oldest job not terminal, as stored (None: not known yet)
    open_since: float | None = None
    #: When it was last polled on its own, or joined the set from a read of the head
    #: (monotonic); -inf: it is polled on its own first (its open jobs are not known)
    direct_at: float = float("-inf")

    @property
    def pending(self) -> bool:
        """Watched, and not (yet) listed by Box."""
        return self.watched_until is not None

    @property
    def turn(self) -> tuple[int, float]:
        """Among pending watches, who is polled first: fewest tries; among the untried, the
        newest (a flood of old watches does not delay a new one); else the longest due."""
        return (self.tries, -self.next_try_at if self.tries == 0 else self.next_try_at)


class Poller:
    """What to poll and how to build complete observations; the `Recorder` commits them."""

    def __init__(
        self,
        box: BoxClient,
        store: PollStore,
        recorder: Recorder,
        metrics: Metrics,
        *,
        page_size: int = 1000,
        watch_ttl_s: float = 600.0,
        max_watched: int = 1000,
        vanish_confirm_max: int = 200,
        identity: IdentityGuard | None = None,
        accept_mass_vanish: bool = False,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.box = box
        self.store = store
        self.recorder = recorder
        self.metrics = metrics
        self.page_size = page_size
        self.watch_ttl_s = watch_ttl_s
        self.max_watched = max_watched
        self.vanish_confirm_max = vanish_confirm_max
        self.identity = identity
        self.accept_mass_vanish = accept_mass_vanish
        self.clock = clock  # wall: a sweep's start is compared with stored sighting times
        self.monotonic = monotonic  # the active set's ages, watch deadlines and retries
        self.active: dict[str, _Active] = {}
        self.watched: set[str] = set()  # active batches that came through `watch` (the page)
        self.last_sweep_requests = 0
        self.last_round_requests: int | None = None  # Box requests of the last active round
        #: When an active round last read the head in a window that held (monotonic).
        self.window_read_at = float("-inf")
        self._rounds_idle = asyncio.Event()  # set while no active round runs
        self._rounds_idle.set()
        #: Why the last complete sweep was refused as a mass change (None: it was not).
        self.refusal: str | None = None
        self._baseline_done = False
        self._head_read_at = monotonic()  # the listing's head last read (or start)
        self._newest_first: bool | None = None  # as the last discovery found the listing
        self._last_sweep_at: float | None = None  # monotonic start of the last committed sweep
        #: Told about changes a periodic active poll found (the webhook health check).
        self.on_changes_found: ChangesFound | None = None
        self._unknown_statuses: set[str] = set()
        self._invalid_logged: set[str] = set()

    async def start(self) -> None:
        """Load what survives a restart: the active set (and the recorder's catch-up point)."""
        await self.recorder.start()
        self._baseline_done = not await self.recorder.needs_baseline()
        now = self.monotonic()
        for batch_id in await self.store.active_batch_ids():
            self.active.setdefault(batch_id, _Active(observed_at=now))
        self.metrics.active_batches.set(len(self.active))

    # -- the sweep ----------------------------------------------------------------------------

    async def sweep(self) -> SweepResult:
        """One complete listing, staged page by page, then recorded in one commit. Raises (and
        commits nothing) on failure."""
        started = time.perf_counter()
        started_at = self.monotonic()
        if self.identity is not None:
            await self.identity.verify()  # no-op once verified
        first = await self.recorder.needs_baseline()
        silent = self.recorder.silent(first)
        staged_sweep = StagedSweep(await self.store.sweep_begin(), self.clock(), first)
        match = ListingMatch(await self.store.sweep_fingerprints())
        jobs_seen = requests = invalid = 0
        pages = self.box.iter_job_listing(self.page_size)
        async for page in _prefetch(pages, PREFETCH_PAGES, self._rounds_idle):
            requests += 1
            jobs_seen += len(page.entries)
            invalid += self._note_invalid(page.invalid)
            await self._stage_page(staged_sweep, page.entries, match, keep=not silent)
        requests += await self._settle_conflicts(staged_sweep, match, keep=not silent)
        if not invalid:  # a listing with an entry set aside is not complete: it vanishes nothing
            requests += await self._judge_missing(staged_sweep, match, keep=not silent)
        events = await self.recorder.record_sweep(staged_sweep)
        now = self.monotonic()
        self._observe_found(FOUND_BY_SWEEP, events, self._last_sweep_at)
        self._last_sweep_at = started_at
        self._baseline_done = True
        self._head_read_at = max(self._head_read_at, now)
        self.last_sweep_requests = requests
        for batch_id in await self.store.active_batch_ids():
            self.active.setdefault(batch_id, _Active(observed_at=now))
        self.metrics.active_batches.set(len(self.active))
        self.metrics.poll_duration.labels("sweep").observe(time.perf_counter() - started)
        self.metrics.poll_last_success.set(self.clock())
        if first:
            log.info("baseline_recorded", jobs=jobs_seen, mode=self.recorder.baseline)
        log.info(
            "sweep_committed",
            jobs=jobs_seen,
            events=len(events),
            requests=requests,
            duration_s=round(time.perf_counter() - started, 3),
        )
        return SweepResult(events, jobs_seen, requests, silent)

    async def _stage_page(
        self,
        sweep: StagedSweep,
        entries: Sequence[ListedJob],
        match: ListingMatch,
        *,
        keep: bool,
    ) -> None:
        """Diff one page against the stored rows of its jobs and stage what changed; `keep`
        the changed rows (and their stored rows) when events will be built from them."""
        self._note_unknown_statuses(
            (e["status"], e["id"]) for e in entries if e["status"] not in KNOWN_STATUSES
        )
        if match.empty and not keep:  # a first silent baseline: every job is new, at seq 1
            rows = [(listed_row(e, 1, sweep.started_at), 0) for e in entries]
            listed = [(e["id"], e["status"]) for e in entries]
            await self.store.sweep_stage(sweep.generation, listed, rows)
            return
        # Most jobs of a steady sweep are unchanged: recognised by their fingerprint, they are
        # neither read nor turned into JobStates. The others are compared with what their
        # rows hold, and the changed ones go through the pure diff.
        entries = match.unmatched(entries)
        if not entries:
            return
        observed = await self.store.load_observed([e["id"] for e in entries])
        changed = []
        for entry in entries:
            row = observed.get(entry["id"])
            if row != listed_observed(entry):
                changed.append(entry)
                if row is not None and row[0] != entry["status"]:
                    match.contest(entry["id"], row)
        seen = [(e["id"], e["status"]) for e in entries]
        if not changed:
            await self.store.sweep_stage(sweep.generation, seen, [])
            return
        known = [e["id"] for e in changed if e["id"] in observed]  # the rest are new
        stored = await self.store.load_jobs(known) if known else {}
        fresh, behind = drop_regressions(stored, (listed_job_state(e) for e in changed))
        if behind:
            self.metrics.listing_regressions.inc(len(behind))
            log.info("listing_behind_ignored", jobs=len(behind), sample=behind[:5])
        await self._stage(sweep, fresh, stored, seen, keep=keep)

    async def _stage(
        self,
        sweep: StagedSweep,
        jobs: Sequence[JobState],
        stored: dict[str, JobState],
        seen: Sequence[tuple[str, str]],
        *,
        keep: bool,
    ) -> None:
        """Diff `jobs` against their `stored` rows (a job back after its vanish reappears) and
        stage the changed ones, with `seen` the (id, status) pairs listed."""
        start_at = sweep.started_at
        unknown = [j.id for j in jobs if j.id not in stored]
        vanished = await self.store.vanished_seqs(unknown) if unknown else {}
        changes = snapshot_changes(
            stored, Observation(tuple(jobs), complete=False, observed_at=start_at), start_at,
            vanished,
        )
        staged = [
            (j, stored[j.id].seq if j.id in stored else 0)
            for j in changes.upserts
            if j.id not in sweep.changed
        ]
        rows = [(job_to_row(job), base) for job, base in staged]
        await self.store.sweep_stage(sweep.generation, seen, rows)
        if keep:
            for job, _ in staged:
                sweep.changed[job.id] = job
                if job.id in stored:
                    sweep.before[job.id] = stored[job.id]

    # -- what a listing cannot settle alone ----------------------------------------------------

    async def _settle_conflicts(
        self, sweep: StagedSweep, match: ListingMatch, *, keep: bool
    ) -> int:
        """Ids the listing showed with different statuses are read by id (up to the confirm
        cap): Box's answer is recorded, never one of the copies; an id that cannot be read
        stays as it was. Returns the requests made."""
        conflicts = sorted(await self.store.sweep_conflicts(sweep.generation) | match.conflicts())
        if not conflicts:
            return 0
        self.metrics.listing_conflicts.inc(len(conflicts))
        await self.store.sweep_unstage(sweep.generation, conflicts)
        for job_id in conflicts:
            sweep.changed.pop(job_id, None)
            sweep.before.pop(job_id, None)
        to_read = conflicts[: self.vanish_confirm_max]
        found, _, _ = await self._read_jobs(to_read)
        await self._stage_reads(sweep, found, keep=keep)
        log.info(
            "listing_conflicts_settled", jobs=len(conflicts), read=len(to_read), settled=len(found)
        )
        return len(to_read)

    async def _judge_missing(
        self, sweep: StagedSweep, match: ListingMatch, *, keep: bool
    ) -> int:
        """The jobs this complete listing missed: read by id (404 = gone, 200 = the listing
        shifted and Box's answer is recorded), held as suspects beyond the cap, or, when too many
        are missing, refused as a mass change. Returns the requests made."""
        among = match.unseen_among()
        missing = (
            {} if among is None
            else await self.store.sweep_unseen(sweep.generation, sweep.started_at, among)
        )
        if sweep.baseline:  # a new baseline records what Box lists now, silently
            sweep.gone, sweep.suspects = set(missing), {}
            self._clear_refusal()
            return 0
        now = self.clock()
        suspects = await self.store.load_suspects()
        # The snapshot's size matters only to the mass-vanish guard, when jobs are missing (a
        # steady sweep spares a scan of every row).
        size = sum((await self.store.status_counts()).values()) if missing else 0
        plan = plan_vanish(
            {i: j.first_seen_at for i, j in missing.items()},
            suspects,
            size,
            self.vanish_confirm_max,
            now,
            guard=not self.accept_mass_vanish,
        )
        if plan.refused:
            self._refuse_mass_vanish(len(missing), size)
            return 0
        self._clear_refusal()
        found, gone, failed = await self._read_jobs(plan.confirm)
        for outcome, n in (("gone", len(gone)), ("present", len(found)), ("error", len(failed))):
            if n:
                self.metrics.vanish_confirmations.labels(outcome).inc(n)
        if found:
            self.metrics.listing_misses.inc(len(found))
            log.info("listing_missed_jobs", jobs=len(found), sample=sorted(found)[:5])
        await self._stage_reads(sweep, found, keep=keep)
        sweep.gone = gone
        sweep.suspects = {**plan.hold, **{i: suspects.get(i, now) for i in failed}}
        self.metrics.vanish_suspects.set(len(sweep.suspects))
        return len(plan.confirm)

    def _refuse_mass_vanish(self, missing: int, size: int) -> None:
        self.metrics.mass_change_refused.labels("vanish").inc()
        reason = (
            f"mass vanish refused: {missing} of {size} jobs missing from a complete listing"
        )
        if self.refusal != reason:
            log.error(
                "mass_vanish_refused",
                missing=missing,
                snapshot=size,
                effect="nothing vanished; /readyz false until a listing shows them again",
                if_really_deleted="start once with `run --accept-mass-vanish`",
            )
        self.refusal = reason

    def _clear_refusal(self) -> None:
        if self.refusal is not None:
            log.info("mass_vanish_cleared")
        self.refusal = None

    async def _read_jobs(
        self, job_ids: Sequence[str]
    ) -> tuple[dict[str, JobState], set[str], set[str]]:
        """Each job by id, from the budget at sweep priority: (found, gone (404), failed)."""
        found: dict[str, JobState] = {}
        gone: set[str] = set()
        failed: set[str] = set()
        gate = asyncio.Semaphore(CONFIRM_CONCURRENCY)

        async def one(job_id: str) -> None:
            async with gate:
                try:
                    found[job_id] = job_state(
                        await self.box.get_job(job_id, priority=Priority.SWEEP)
                    )
                except BoxNotFound:
                    gone.add(job_id)
                except BoxError as exc:
                    failed.add(job_id)
                    log.warning("job_read_failed", job_id=job_id, error=str(exc))

        await asyncio.gather(*(one(i) for i in job_ids))
        return found, gone, failed

    async def _stage_reads(
        self, sweep: StagedSweep, found: dict[str, JobState], *, keep: bool
    ) -> None:
        """Jobs Box answered by id, staged with the sweep as the truth about them."""
        if not found:
            return
        jobs = list(found.values())
        self._note_unknown_statuses((j.status, j.id) for j in jobs)
        stored = await self.store.load_jobs(list(found))
        await self._stage(sweep, jobs, stored, [(j.id, j.status) for j in jobs], keep=keep)

    # -- discovery: the head of the listing -------------------------------------------------

    async def discover(self) -> DiscoverResult:
        """Read the head of the listing and record what it shows, to find new jobs in seconds
        without the whole history. Further pages are read only while the listing proves
        newest-first (`monitor.discovery`) and holds no job already known: past the first known
        job, a newest-first listing shows only older ones. New batches join the active set.
        Raises on a failed read (what earlier pages showed is recorded)."""
        if not self._baseline_done:
            return DiscoverResult((), 0, True)  # the first sweep records the baseline
        started = time.perf_counter()
        proof = NewestFirst()
        events: list[Event] = []
        requests = 0
        pages = self.box.iter_job_listing(self.page_size, priority=Priority.ACTIVE)
        async with contextlib.aclosing(pages):
            async for page in pages:
                requests += 1
                self._note_invalid(page.invalid)
                ordered = proof.check(page.entries)
                recorded, reached_known = await self._record_head(page.entries)
                events += recorded.events if recorded is not None else ()
                if not ordered or reached_known or requests >= DISCOVER_MAX_PAGES:
                    break
        self._head_read_at = self.monotonic()
        self._note_order(proof.holds)
        self.metrics.poll_duration.labels("discover").observe(time.perf_counter() - started)
        return DiscoverResult(tuple(events), requests, proof.holds)

    async def _record_head(
        self, entries: Sequence[ListedJob]
    ) -> tuple[Recorded | None, bool]:
        """Record the jobs of the head that are new or changed; (what was recorded, None when
        nothing was, and whether a job listed was known before this read). An id listed twice
        is left to the sweep, which reads it by id."""
        self._note_unknown_statuses(
            (e["status"], e["id"]) for e in entries if e["status"] not in KNOWN_STATUSES
        )
        counts: dict[str, int] = {}
        for entry in entries:
            counts[entry["id"]] = counts.get(entry["id"], 0) + 1
        observed = await self.store.load_observed(list(counts))
        changed = [
            e for e in entries
            if counts[e["id"]] == 1 and observed.get(e["id"]) != listed_observed(e)
        ]
        known = [e["id"] for e in changed if e["id"] in observed]  # the rest are new
        stored = await self.store.load_jobs(known) if known else {}
        fresh, behind = drop_regressions(stored, (listed_job_state(e) for e in changed))
        if behind:
            self.metrics.listing_regressions.inc(len(behind))
        if not fresh:
            return None, bool(observed)
        recorded = await self.recorder.record_head(fresh)
        now = self.monotonic()
        for batch_id, jobs in _grouped(recorded.snapshot.values(), _job_batch).items():
            if any(not is_terminal(j.status) for j in jobs):
                active = self.active.setdefault(
                    batch_id, _Active(observed_at=now, direct_at=now)
                )
                active.open_since = _open_since(jobs)
        self.metrics.active_batches.set(len(self.active))
        return recorded, bool(observed)

    def _note_order(self, newest_first: bool) -> None:
        """What the last read of the head proved about the listing's order."""
        if newest_first != self._newest_first:
            log.info(
                "listing_order",
                newest_first=newest_first,
                effect=None if newest_first else (
                    "discovery reads the head page only; active batches are polled one by one"
                ),
            )
        self._newest_first = newest_first
        self.metrics.listing_newest_first.set(1 if newest_first else 0)

    def discovery_lag_s(self) -> float:
        """Seconds since the head of the listing was last read (by discovery or a
        sweep; since start before either)."""
        return max(0.0, self.monotonic() - self._head_read_at)

    # -- the active set -----------------------------------------------------------------------

    def watch(self, batch_id: str) -> bool:
        """Put a batch into the active set now, before any sweep has seen it. False (nothing
        changed) when `max_watched` batches Box does not list yet are watched already."""
        now = self.monotonic()
        entry = self.active.get(batch_id)
        if entry is not None and not entry.pending:
            self.watched.add(batch_id)
            return True  # followed already: its jobs decide when it leaves
        if entry is None:
            if self.watched_count >= self.max_watched:
                log.warning("watch_refused", batch_id=batch_id, watched=self.watched_count)
                return False
            entry = self.active[batch_id] = _Active(observed_at=now, next_try_at=now)
        entry.watched_until = now + self.watch_ttl_s
        self.watched.add(batch_id)
        self.metrics.active_batches.set(len(self.active))
        log.info("batch_watched", batch_id=batch_id)
        return True

    @property
    def watched_count(self) -> int:
        """Watched batches Box does not list yet."""
        return sum(1 for a in self.active.values() if a.pending)

    @property
    def batches_per_round(self) -> int:
        """Polls of one active round at most, for the budget plan: every batch Box lists, and
        at most `WATCH_POLLS_PER_ROUND` of those it does not list yet; fewer when the last
        round's head window stood in for most of them (its pages and the polls beside it)."""
        pending = self.watched_count
        direct = len(self.active) - pending + min(pending, WATCH_POLLS_PER_ROUND)
        if self._newest_first and self.last_round_requests is not None:
            return min(direct, self.last_round_requests)
        return direct

    def _round(self, now: float, fresh_s: float = 0.0) -> list[str]:
        """This round's batches: every listed one (oldest observation first), then the pending
        watches that are due, in `_Active.turn` order, up to `WATCH_POLLS_PER_ROUND`. A watch past
        its TTL leaves first, polled or not: a sweep still finds the batch if Box lists it."""
        for batch_id, entry in list(self.active.items()):
            if entry.watched_until is not None and now >= entry.watched_until:
                del self.active[batch_id]
                self.recorder.forget(batch_id)
        listed = [
            b for b, a in self.active.items() if not a.pending and now - a.observed_at >= fresh_s
        ]
        listed.sort(key=lambda b: self.active[b].observed_at)
        due = [b for b, a in self.active.items() if a.pending and a.next_try_at <= now]
        due.sort(key=lambda b: self.active[b].turn)
        return listed + due[:WATCH_POLLS_PER_ROUND]

    @property
    def round_running(self) -> bool:
        """An active round is under way (the sweep fetches no page meanwhile)."""
        return not self._rounds_idle.is_set()

    async def poll_active(self, *, fresh_s: float = 0.0) -> int:
        """Poll every active batch once (oldest observation first), except those observed
        less than `fresh_s` ago (a hinted poll did); returns how many were polled. A batch that
        fails stays active and is tried again next round. While it runs the sweep fetches no
        page: a round's few requests wait behind no sweep's, at Box or in the store, so a
        sweep does not stretch the detection of changes in active batches."""
        if not self._baseline_done:
            return 0  # the first sweep records the baseline; nothing to compare against yet
        self._rounds_idle.clear()
        try:
            return await self._poll_active(fresh_s)
        finally:
            self._rounds_idle.set()

    async def _poll_active(self, fresh_s: float) -> int:
        started = time.perf_counter()
        order = self._round(self.monotonic(), fresh_s)
        covered, window_pages = await self._poll_window(order)
        order = [b for b in order if b not in covered]
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
        if order or covered:
            self.metrics.poll_duration.labels("active").observe(time.perf_counter() - started)
        self.metrics.active_batches.set(len(self.active))
        self.last_round_requests = window_pages + len(order)
        return sum(results) + len(covered)

    async def _poll_window(self, order: Sequence[str]) -> tuple[set[str], int]:
        """Read the listing's head in place of polling this round's batches one by one, when
        the listing proved newest-first and it can cost fewer requests; (the batches it
        covered, pages read). Nothing is covered when the read fails or the order breaks: those
        batches are polled on their own this round."""
        now = self.monotonic()
        targets: dict[str, float] = {}
        for batch_id in order:
            entry = self.active[batch_id]
            if (
                entry.open_since is not None
                and not entry.pending
                and now - entry.direct_at < DIRECT_POLL_EVERY_S
            ):
                targets[batch_id] = entry.open_since
        if not self._newest_first or len(targets) < 2:
            return set(), 0
        window = HeadWindow(targets, min(WINDOW_MAX_PAGES, len(targets) - 1))
        rows: dict[str, JobState] = {}
        events: list[Event] = []
        try:
            async with contextlib.aclosing(self._read_window(window)) as recorded_pages:
                async for recorded in recorded_pages:
                    rows.update(recorded.snapshot)
                    events += recorded.events
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.metrics.polls.labels("window", "error").inc()
            if not isinstance(exc, BoxAuthError):
                log.warning("head_window_failed", error=f"{type(exc).__name__}: {exc}")
            return set(), window.pages
        self.metrics.polls.labels("window", "ok").inc()
        self._note_order(window.proof.holds)
        self._head_read_at = max(self._head_read_at, now)
        if window.proof.holds:
            self.window_read_at = now
        covered = window.covered()
        self._settle_covered(covered, rows, events, now)
        return covered, window.pages

    async def _read_window(self, window: HeadWindow) -> AsyncGenerator[Recorded, None]:
        """The window's pages, each recorded as it arrives (its events go out while the next
        page is read), the next page fetched while this one is recorded, and none fetched
        beyond what the window asks for. Raises on a failed page: what the pages before it
        showed is recorded, as discovery records it."""
        pages = self.box.iter_job_listing(self.page_size, priority=Priority.ACTIVE)
        following: asyncio.Future[ListingPage | None] | None = None
        async with contextlib.aclosing(pages):
            try:
                page = await anext(pages, None)
                while page is not None:
                    self._note_invalid(page.invalid)
                    more = window.take(page.entries)
                    following = asyncio.ensure_future(anext(pages, None)) if more else None
                    recorded, _ = await self._record_head(page.entries)
                    if recorded is not None:
                        yield recorded
                    if following is None:
                        break
                    page = await following
                    following = None
                else:
                    window.end()
            finally:
                if following is not None and not following.done():
                    following.cancel()
                    with contextlib.suppress(BaseException):
                        await following

    def _settle_covered(
        self, covered: set[str], rows: dict[str, JobState], events: list[Event], now: float
    ) -> None:
        """Batches a head window covered: observed now, with what the window recorded of them
        (detection latency, the webhook health check, and whether they are done)."""
        by_batch = _grouped(rows.values(), _job_batch)
        events_of = _grouped(events, _event_batch)
        for batch_id in covered:
            entry = self.active.get(batch_id)
            if entry is None:
                continue
            since = entry.observed_at
            if batch_id in by_batch:
                self._settle(batch_id, by_batch[batch_id], now, direct=False)
            else:
                entry.observed_at = now  # read, and unchanged
            self._found_by_active(batch_id, events_of.get(batch_id, ()), since)

    async def poll_batch(
        self, batch_id: str, *, found_by: str = FOUND_BY_ACTIVE, since: float | None = None
    ) -> tuple[Event, ...]:
        """One batch: list its jobs and record them (diff, stuck events, commit).
        A lone straggler (one job of a known batch still running) is read by its own id: one
        small answer instead of the whole batch's pages. `found_by` and `since` (monotonic:
        the change happened after it) feed the detection latency; `since` defaults to the
        batch's previous poll."""
        entry = self.active.get(batch_id)
        if since is None and entry is not None:
            since = entry.observed_at
        straggler = _lone_straggler(await self.store.load_batches([batch_id]))
        try:
            if straggler is not None:
                jobs = [job_state(await self.box.get_job(straggler))]
            else:
                jobs = [job_state(j) for j in await self.box.list_batch_jobs(batch_id)]
        except BoxNotFound:
            jobs = []  # not (yet) known to Box, or gone: only a sweep may say a job vanished
        self._note_unknown_statuses((j.status, j.id) for j in jobs)
        if straggler is not None and jobs:
            recorded = await self.recorder.record_job(jobs[0])
        else:
            recorded = await self.recorder.record_batch(batch_id, jobs)
        self._settle(batch_id, recorded.snapshot.values(), self.monotonic())
        if found_by == FOUND_BY_ACTIVE:
            self._found_by_active(batch_id, recorded.events, since)
        else:
            self._observe_found(found_by, recorded.events, since)
        return recorded.events

    def _found_by_active(self, batch_id: str, events: Sequence[Event], since: float | None) -> None:
        """What a periodic poll found of one batch: its detection latency, and the status
        changes told to the webhook health check (a new job is no status change: Box notifies
        when generation starts)."""
        self._observe_found(FOUND_BY_ACTIVE, events, since)
        moved = sum(1 for e in events if e.type is EventType.JOB_STATUS_CHANGED)
        if moved and self.on_changes_found is not None:
            self.on_changes_found(batch_id, moved)

    def _observe_found(self, found_by: str, events: Sequence[Event], since: float | None) -> int:
        """Detection latency of each job change in `events`, from `since` (monotonic) to now:
        for polls an upper bound, as Box does not say when a job changed. Returns how many."""
        changed = sum(1 for e in events if e.type in _CHANGE_EVENTS)
        if changed and since is not None:
            latency_s = max(0.0, self.monotonic() - since)
            histogram = self.metrics.detection_latency.labels(found_by)
            for _ in range(changed):
                histogram.observe(latency_s)
        return changed

    def related_batches(self, template_file_id: str | None) -> list[str]:
        """Active batches a Box notification about this template file may concern: those whose
        jobs use it, and those not polled yet (their template is not known)."""
        return [
            batch_id
            for batch_id, entry in self.active.items()
            if not entry.templates or template_file_id in entry.templates
        ]

    def _settle(
        self, batch_id: str, jobs: Iterable[JobState], now: float, *, direct: bool = True
    ) -> None:
        """Keep the batch active while any job is not terminal (or a watch has not expired);
        `jobs` are all its stored rows, read on its own (`direct`) or by a head window."""
        entry = self.active.setdefault(batch_id, _Active(observed_at=now))
        entry.observed_at = now
        if direct:
            entry.direct_at = now
        listed = list(jobs)
        if listed:
            entry.watched_until = None  # Box knows it now; its jobs decide
            entry.templates = frozenset(j.template_file_id for j in listed)
            if direct:  # after a head window, `_record_head` set it from the same rows
                entry.open_since = _open_since(listed)
            if all(is_terminal(j.status) for j in listed):
                del self.active[batch_id]
        elif entry.watched_until is None or now >= entry.watched_until:
            del self.active[batch_id]
        else:  # Box does not know it yet: try again later, less often each time
            entry.tries += 1
            entry.next_try_at = now + min(
                WATCH_RETRY_MAX_S, WATCH_RETRY_FIRST_S * 2 ** (entry.tries - 1)
            )
        if batch_id not in self.active:
            self.recorder.forget(batch_id)
        self.metrics.active_batches.set(len(self.active))

    def followed(self) -> dict[str, bool]:
        """The active set for the status page: batch id -> whether it came through `watch`."""
        self.watched &= self.active.keys()
        return {batch_id: batch_id in self.watched for batch_id in self.active}

    def detection_lag_s(self) -> float:
        """How stale the oldest observation of an active batch is."""
        followed = [a.observed_at for a in self.active.values() if not a.pending]
        if not followed:
            return 0.0  # a watch of a batch Box does not list yet is not a detection delay
        return max(0.0, self.monotonic() - min(followed))

    def _note_invalid(self, entries: Sequence[InvalidEntry]) -> int:
        """Count each malformed listing entry; log the ones not logged before, in one line per
        page (a page whose every entry breaks is one line, not a thousand). Returns how many
        there were."""
        if not entries:
            return 0
        self.metrics.listing_invalid_entries.inc(len(entries))
        new = [e for e in entries if (e.job_id or e.reason) not in self._invalid_logged]
        if new and len(self._invalid_logged) < MAX_INVALID_LOGGED:
            self._invalid_logged.update(e.job_id or e.reason for e in new)
            log.warning(
                "listing_entries_invalid",
                entries=len(new),
                samples=[{"job_id": e.job_id, "reason": e.reason} for e in new[:5]],
                effect="their jobs left as they were; this listing vanishes nothing",
            )
        return len(entries)

    def _note_unknown_statuses(self, jobs: Iterable[tuple[str, str]]) -> None:
        """Count each sighting of a status this build does not know; log each such status once
        (cut to `MAX_STATUS_LOG_CHARS`; after `MAX_UNKNOWN_LOGGED` of them, no more: Box's text
        must not grow the log or this set without bound). `jobs` are (status, job id) pairs."""
        for status, job_id in jobs:
            if status in KNOWN_STATUSES:
                continue
            self.metrics.unknown_statuses.inc()
            shown = status[:MAX_STATUS_LOG_CHARS]
            if shown in self._unknown_statuses or len(self._unknown_statuses) > MAX_UNKNOWN_LOGGED:
                continue
            self._unknown_statuses.add(shown)
            if len(self._unknown_statuses) > MAX_UNKNOWN_LOGGED:
                log.warning("unknown_job_statuses_unlogged", after=MAX_UNKNOWN_LOGGED)
                continue
            log.warning(
                "unknown_job_status",
                status=shown,
                status_chars=len(status),
                job_id=job_id[:MAX_STATUS_LOG_CHARS],
                treated_as="non-terminal",
                metric_label="unknown",
            )


def _grouped(items: Iterable[_T], batch_of: Callable[[_T], str | None]) -> dict[str, list[_T]]:
    """`items` by batch id (those of no batch left out)."""
    grouped: dict[str, list[_T]] = {}
    for item in items:
        batch_id = batch_of(item)
        if batch_id is not None:
            grouped.setdefault(batch_id, []).append(item)
    return grouped


def _job_batch(job: JobState) -> str:
    return job.batch_id


def _event_batch(event: Event) -> str | None:
    return event.batch_id


def _open_since(jobs: Iterable[JobState]) -> float | None:
    """`created_at` (unix s) of the oldest job not terminal; None when there is none, or when
    one has no readable `created_at` (no head window can then tell it was read)."""
    oldest_s: float | None = None
    for job in jobs:
        if is_terminal(job.status):
            continue
        at_s = created_s(job.created_at)
        if at_s is None:
            return None
        oldest_s = at_s if oldest_s is None else min(oldest_s, at_s)
    return oldest_s


def _lone_straggler(batch: dict[str, JobState]) -> str | None:
    """The id of the only non-terminal job of a batch with other jobs, else None."""
    running = [j.id for j in batch.values() if not is_terminal(j.status)]
    return running[0] if len(running) == 1 and len(batch) > 1 else None


async def _prefetch(
    pages: AsyncIterator[ListingPage], depth: int, clear: asyncio.Event | None = None
) -> AsyncIterator[ListingPage]:
    """Fetch up to `depth` pages ahead while the caller diffs the current one, each once
    `clear` is set (if given; or after `SWEEP_YIELD_MAX_S`, so that rounds which never end
    cannot starve the sweep). A failure of the listing is raised to the caller at the page
    where it happened."""
    queue: asyncio.Queue[ListingPage | BaseException | None] = asyncio.Queue(depth)

    async def produce() -> None:
        try:
            while True:
                if clear is not None and not clear.is_set():  # no task per page when clear
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(clear.wait(), SWEEP_YIELD_MAX_S)
                page = await anext(pages, None)
                if page is None:
                    break
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
