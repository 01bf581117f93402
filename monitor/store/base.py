"""The state store interface: the job snapshot and the delivery outbox, committed together.

The interface is split into roles, one protocol each, so that every consumer depends only on what
it uses: the `Recorder` commits (`SnapshotStore`), the `Poller` reads and stages a sweep but
cannot commit (`SnapshotReader` + `SweepStaging`), the `Dispatcher` works the outbox
(`DeliveryStore`), a notifier keeps its own state (`NotifierStore`), the status page only
reads (`StatusReader`), replicas share accounts through leases (`LeaseStore`). `Store` is
their union.

Every backend (SQLite now, PostgreSQL later) implements `Store`, registers its URL scheme in
`monitor/store/registry.py` and passes the same contract suite in `tests/test_store_contract.py`.
Dialect differences stay inside the backend."""

from __future__ import annotations

from abc import abstractmethod
from array import array
from collections.abc import (
    AsyncGenerator,
    AsyncIterable,
    Callable,
    Collection,
    Iterable,
    Mapping,
    Sequence,
)
from contextlib import AbstractContextManager
from dataclasses import dataclass
from enum import StrEnum
from types import TracebackType
from typing import Any, Protocol, Self

from monitor.model import Event, JobState, Observed, SnapshotChanges

# `mark_failed` keeps at most this many characters of an error text (receivers' error bodies
# are untrusted and unbounded).
MAX_ERROR_CHARS = 500
#: A snapshot row as every backend writes it: `rows.job_to_row`, in `rows.ROW_COLUMNS` order.
JobRow = tuple[Any, ...]


class OutboxState(StrEnum):
    PENDING = "pending"
    CLAIMED = "claimed"
    DELIVERED = "delivered"
    DEAD = "dead"


@dataclass(frozen=True, slots=True)
class StoredFingerprints:
    """What a sweep compares a listing with before it reads any row: the fingerprint of each
    stored job that has one, how many stored jobs have none (their entries are compared with
    their rows), and how many vanish marks there are (with none, and no job, every listed job
    is new at `seq` 1)."""

    fingerprints: array[int]  # 8 bytes each, no object per job (a million: 8 MB)
    without: int
    vanish_marks: int

    @property
    def empty(self) -> bool:
        """No job and no vanish mark is stored: the first baseline of this store."""
        return not self.fingerprints and not self.without and not self.vanish_marks


@dataclass(frozen=True, slots=True)
class RoutedEvent:
    """An event and the notifiers the router chose for it: one outbox row per notifier."""

    event: Event
    notifiers: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class OutboxEntry:
    """One (event, notifier) row of the outbox.

    `attempts` counts delivery attempts made: each `mark_failed` and the `mark_delivered` adds
    one; `requeue_dead` resets it. `last_error` is the latest failure, kept after a retry.
    `first_failed_at` is when the current run of failures began (None while there is none):
    the row goes dead by that age; a delivery, a throttle answer or a requeue ends the run."""

    event: Event
    notifier: str
    state: OutboxState
    attempts: int
    next_attempt_at: float  # unix seconds
    last_error: str | None
    first_failed_at: float | None = None  # unix seconds


@dataclass(frozen=True, slots=True)
class ThreadRef:
    """Where a batch's parent chat message lives: channel id and the message's `ts`."""

    channel: str
    ts: str


@dataclass(frozen=True, slots=True)
class PendingEdit:
    """An edit of a batch's parent message that failed and waits for its own retry.

    `content` is the latest content wanted (the notifier's own encoding): a later failed edit
    replaces it, so the retry converges to the newest text. `failing_since` is the wall-clock
    time of the first failure, `attempts` the failures so far."""

    batch_id: str
    thread: ThreadRef
    content: str
    attempts: int
    failing_since: float


@dataclass(frozen=True, slots=True)
class BatchSummary:
    """One batch as the snapshot holds it, for the status page: jobs per status and what its
    jobs share (Box runs a batch on one template and output type; the first job's are shown
    should they differ). `first_seen_at` and `changed_at` are unix seconds: when the monitor
    first saw one of its jobs and when it last recorded a change; `created_at` is Box's
    earliest creation time of its jobs (ISO 8601), when Box said."""

    batch_id: str
    counts: Mapping[str, int]
    template_file_id: str
    output_type: str
    first_seen_at: float
    changed_at: float
    created_at: str | None = None

    @property
    def jobs(self) -> int:
        return sum(self.counts.values())


@dataclass(frozen=True, slots=True)
class NotifierActivity:
    """What the outbox says about a notifier's health: when it last delivered an event, and
    the latest error of an event it still owes (pending, claimed or dead) with when that row
    last changed (a claim or a retry moves it too). Unix seconds; None when there is none."""

    notifier: str
    last_delivered_at: float | None = None
    last_error: str | None = None
    last_error_at: float | None = None


@dataclass(frozen=True, slots=True)
class Fence:
    """An account's lease as its holder got it: `epoch` grows with every acquisition, so a
    write checked against it fails once anyone else has taken the lease since."""

    account: str
    owner: str  # the replica id
    epoch: int


@dataclass(frozen=True, slots=True)
class Lease:
    """An account's lease row as stored: its last `owner` (None once released), `epoch`, and
    whether it is still `live` (held and not expired, by the store's clock)."""

    account: str
    owner: str | None
    epoch: int
    live: bool


@dataclass(frozen=True, slots=True)
class Silence:
    """Events matching `match` (a route's `match`, as JSON-able data: key -> accepted values)
    are recorded but not sent while `starts_at <= t < ends_at` (unix seconds). Expiring one
    moves its end to the moment it was expired; it is never deleted before `prune`."""

    id: str
    match: Mapping[str, tuple[str, ...]]
    starts_at: float
    ends_at: float
    comment: str
    created_by: str
    created_at: float

    def active_at(self, t: float) -> bool:
        return self.starts_at <= t < self.ends_at


@dataclass(frozen=True, slots=True)
class Delivery:
    """One notifier's part in an event's history. `outcome` is the outbox state, except that a
    row a silence settled reads `silenced` (with the silence's id); `updated_at` is when the
    row last changed (a delivery's time, for a delivered one)."""

    notifier: str
    outcome: str  # pending | claimed | delivered | silenced | dead
    attempts: int
    updated_at: float
    last_error: str | None
    silence_id: str | None = None


@dataclass(frozen=True, slots=True)
class EventRecord:
    """An event as recorded, with what became of it per notifier. `seq` orders events by
    recording and is the cursor of the next page (`EventQuery.before_seq`)."""

    event: Event
    seq: int
    recorded_at: float
    deliveries: tuple[Delivery, ...]


@dataclass(frozen=True, slots=True)
class EventQuery:
    """Filters of `list_events`; None matches anything. `status` is the event's `to_status`."""

    since: float | None = None  # recorded at or after (unix seconds)
    batch_id: str | None = None
    job_id: str | None = None
    type: str | None = None
    status: str | None = None
    before_seq: int | None = None  # the page after the one that ended at this seq
    limit: int = 100


class StoreLifecycle(Protocol):
    """Opening, closing and a liveness check: the daemon's part."""

    @abstractmethod
    async def open(self) -> None:
        """Connect and migrate the schema to the current version, one transaction per step.
        Raises `SchemaTooNew` (leaving nothing open) for a schema written by a newer build."""

    @abstractmethod
    async def close(self) -> None:
        """Wait for in-flight writes, then close every connection; idempotent."""

    @abstractmethod
    async def ping(self) -> None:
        """Raise if the store cannot answer a trivial query (readiness)."""

    @abstractmethod
    def replica_lock(self) -> AbstractContextManager[None]:
        """Held by the daemon for its whole life, apart from `open`/`close`. A store that
        serves one replica (a SQLite file) takes an OS lock beside it and raises `StoreLocked`
        when another process holds it; one that replicas share (PostgreSQL) takes nothing."""



class SnapshotReader(Protocol):
    """Reads of the job snapshot and of the meta keys a commit set."""

    @abstractmethod
    async def load_snapshot(self) -> dict[str, JobState]:
        """Every job in the snapshot, by job id."""

    @abstractmethod
    async def load_batches(self, batch_ids: Iterable[str]) -> dict[str, JobState]:
        """The snapshot rows of every job in the given batches, by job id."""

    @abstractmethod
    async def load_jobs(self, job_ids: Sequence[str]) -> dict[str, JobState]:
        """The snapshot rows of the given jobs that exist, by job id."""

    @abstractmethod
    async def load_observed(self, job_ids: Sequence[str]) -> dict[str, Observed]:
        """What the rows of these jobs (the ones stored) hold of their last observation: the
        sweep compares each listing entry with it and builds JobStates only for the changed
        ones (`monitor.store.rows.observed_of` is the same tuple from a JobState)."""

    @abstractmethod
    async def status_counts(self) -> dict[str, int]:
        """Number of snapshot jobs per status."""

    @abstractmethod
    async def active_batch_ids(self) -> set[str]:
        """Ids of batches with at least one non-terminal job in the snapshot."""

    @abstractmethod
    async def stuck_marks(self, job_ids: Sequence[str]) -> dict[str, str]:
        """For each given job that has one, the id of the last `job.stuck` event committed for
        it (`commit` records it; removing the job forgets it)."""

    @abstractmethod
    async def template_version_counts(
        self, template_ids: Sequence[str], since: float
    ) -> dict[tuple[str, str], tuple[int, int, float]]:
        """For each (template, template version) of `template_ids` with finished jobs changed
        at or after `since`: (finished jobs, failed or completed-with-error jobs, the earliest
        `first_seen_at` among them). Rows without a version are left out."""

    @abstractmethod
    async def get_meta(self, key: str) -> str | None:
        """A value set by `commit(meta=...)`, or None."""

    @abstractmethod
    async def vanished_seqs(self, job_ids: Sequence[str]) -> dict[str, int]:
        """For each given job removed from the snapshot and not written since, the seq of its
        `job.vanished` (one past its last seq when it was removed)."""

    @abstractmethod
    async def load_suspects(self) -> dict[str, float]:
        """Jobs a complete listing missed that Box has not confirmed gone yet: id -> the unix
        time they were first missed (set by `commit_sweep(suspects=...)`)."""


class SnapshotStore(SnapshotReader, Protocol):
    """The snapshot's writes: every commit goes through here (the `Recorder`)."""

    @abstractmethod
    async def commit(
        self,
        changes: SnapshotChanges,
        events: Sequence[RoutedEvent],
        meta: Mapping[str, str] | None = None,
        now: float | None = None,
    ) -> int:
        """In ONE transaction: apply `changes` (a removed job leaves a vanish mark with the seq
        of its `job.vanished`, `seq + 1`, and stops being a suspect; a written job loses its
        vanish mark), append each event to the events table and one
        pending outbox row per (event, notifier), and set `meta` keys. An event whose id is
        already stored is skipped (never a second row for one change, even when routed to
        other notifiers). Outbox rows are due at once (`next_attempt_at = now`); `now` defaults
        to the current time. Returns the number of outbox rows added. On any failure (for
        example an empty notifier name) raises `StoreError` and nothing is written."""

    @abstractmethod
    async def commit_sweep(
        self,
        changes: SnapshotChanges,
        events: Sequence[RoutedEvent],
        meta: Mapping[str, str] | None = None,
        now: float | None = None,
        suspects: Mapping[str, float] | None = None,
    ) -> int:
        """`commit`, plus every fresh staged row written, in the same ONE transaction; the stage
        is emptied. `suspects` (job id -> since when), when given, replaces the stored suspects
        (ids not in the snapshot are left out)."""



class SweepStaging(Protocol):
    """A streaming sweep's staging area: pages staged, then read back at the end.

    Staging never changes the snapshot; `SnapshotStore.commit_sweep` lands it."""

    @abstractmethod
    async def sweep_begin(self) -> int:
        """Start a streaming sweep: forget what an unfinished one staged and return its
        generation number, larger than any before; staging under an older one raises
        `StoreError`. Staging is never durable: it does not survive `close`."""

    @abstractmethod
    async def sweep_fingerprints(self) -> StoredFingerprints:
        """The fingerprint of every stored job (`rows.fingerprint`), read at a sweep's start:
        a listing entry whose fingerprint is among them is an unchanged job."""

    @abstractmethod
    async def sweep_stage(
        self,
        generation: int,
        seen: Sequence[tuple[str, str]],
        staged: Sequence[tuple[JobRow, int]],
    ) -> None:
        """Record one page of a sweep: the (job id, status) pairs it listed and the rows
        to write at the end (`rows.job_to_row`), each with the `seq` the job had when read (0
        when new). The snapshot itself is unchanged until `commit_sweep`; a second staging of
        a job is ignored (the first sighting counts) until `sweep_unstage` forgets it."""

    @abstractmethod
    async def sweep_conflicts(self, generation: int) -> set[str]:
        """Ids this sweep listed more than once with different statuses (a listing that
        cannot say which is true: the caller asks Box for the job itself)."""

    @abstractmethod
    async def sweep_unstage(self, generation: int, job_ids: Sequence[str]) -> None:
        """Forget the rows staged for these jobs (they stay seen); a later `sweep_stage` of
        them counts."""

    @abstractmethod
    async def sweep_unseen(
        self, generation: int, seen_before: float, unmatched: Collection[int] | None = None
    ) -> dict[str, JobState]:
        """Snapshot rows first seen before `seen_before` that no page of this sweep listed.
        With `unmatched`, only among the rows without a fingerprint or with one of these (the
        caller saw every other stored fingerprint in the listing, so their jobs were listed
        without being staged)."""

    @abstractmethod
    async def sweep_stale_ids(self) -> set[str]:
        """Staged jobs whose stored `seq` moved since they were read (another poll committed):
        `commit_sweep` skips them."""



class OutboxStore(Protocol):
    """The delivery outbox: claims, marks, retries, dead letters, retention."""

    @abstractmethod
    async def claim_due(
        self, notifier: str, now: float, limit: int, lease_s: float, *, job_order: bool = False
    ) -> list[OutboxEntry]:
        """Mark up to `limit` due rows of `notifier` as claimed until `now + lease_s` and return
        them, oldest event first (commit time, then the order given to `commit`). Due: pending
        with `next_attempt_at <= now`, or claimed with an expired lease, `claimed_until <= now`
        (a crashed sender's work). Claiming does not count as an attempt.

        `job_order`: a row is claimable only when no earlier event of its job is still owed to
        `notifier` (pending, due or not, or claimed); dead or delivered ones do not hold it.
        So at most one event per job is claimed, and concurrent senders keep each job's order,
        across retries and restarts."""

    @abstractmethod
    async def mark_delivered(self, event_id: str, notifier: str) -> None:
        """The receiver accepted the event (whatever the row's state: a late success after the
        lease expired, or after it went dead, is still the truth). No-op for an unknown row."""

    @abstractmethod
    async def mark_delivered_many(self, notifier: str, event_ids: Sequence[str]) -> None:
        """`mark_delivered` for each of `event_ids`, in one transaction (a group's events)."""

    @abstractmethod
    async def mark_failed(
        self,
        event_id: str,
        notifier: str,
        error: str,
        next_attempt_at: float | None,
        now: float | None = None,
    ) -> None:
        """One more failed attempt; pending again at `next_attempt_at`, or dead when None.
        `error` is kept truncated to `MAX_ERROR_CHARS`. Ignored for a delivered or dead row.
        A row without `first_failed_at` gets `now` (default: the current time)."""

    @abstractmethod
    async def mark_failed_many(
        self, notifier: str, retry_at: Mapping[str, float | None], error: str, now: float
    ) -> None:
        """`mark_failed(event_id, notifier, error, retry_at[event_id], now)` for every key, in
        ONE transaction: a failed group of N events is one write, not N."""

    @abstractmethod
    async def mark_throttled(self, notifier: str, event_ids: Sequence[str], until: float) -> None:
        """The receiver throttled these rows (429, Retry-After): `defer` them to `until` and end
        their run of failures (`first_failed_at` None). A receiver that answers is not down, so
        throttling never brings a row closer to dead."""

    @abstractmethod
    async def defer(self, notifier: str, event_ids: Sequence[str], until: float) -> None:
        """Put claimed or pending rows back to pending, due at `until`, without counting an
        attempt (a group not yet due, events a notifier holds back, a receiver's rate limit).
        Ignored for delivered or dead rows."""

    @abstractmethod
    async def next_due_at(self, notifier: str, *, job_order: bool = False) -> float | None:
        """Earliest `next_attempt_at` of pending rows or lease expiry of claimed rows (dead
        rows are never due), or None when there is none. `job_order`: of the rows a claim in
        job order could take (a row held behind its job's earlier event is due no sooner)."""

    @abstractmethod
    async def release_claims(self, notifier: str, now: float) -> int:
        """Make every claimed row of `notifier` pending, due at `now`, without counting an
        attempt: at start-up, the claims of a process that died are released at once instead
        of after their lease. Returns how many."""

    @abstractmethod
    async def outbox_counts(self) -> dict[str, dict[OutboxState, int]]:
        """Rows per notifier and state; every state is present (0 when none) for a notifier
        that has any row."""

    @abstractmethod
    async def list_outbox(
        self, state: OutboxState, notifier: str | None = None, limit: int = 1000
    ) -> list[OutboxEntry]:
        """Up to `limit` rows in `state`, oldest event first, optionally for one notifier."""

    @abstractmethod
    async def requeue_dead(
        self, now: float, event_id: str | None = None, notifier: str | None = None
    ) -> int:
        """Make dead rows (all, or those of one event and/or one notifier) pending again, due at
        `now`, with attempts reset; returns how many."""

    @abstractmethod
    async def drop_dead(self, event_id: str | None = None, notifier: str | None = None) -> int:
        """Delete dead rows (all, or those of one event and/or one notifier); returns how many.
        The event stays recorded, so a replay of its id still mints no new row."""

    @abstractmethod
    async def prune(self, before: float) -> int:
        """Delete delivered outbox rows last updated before `before`, then events created before
        it that no outbox row refers to; returns the events deleted. Safe: an event id can only
        be minted again while its change is missing from the snapshot, a window of seconds.
        Groups last flushed before `before` go too, and batch threads started before it whose
        batch is over: no non-terminal job in the snapshot, no undelivered (pending, claimed or
        dead) row of the thread's notifier for an event of the batch, no pending edit; and
        reply starts recorded before it (a reply in doubt for that long is not retried), and
        silences that ended before it."""



class SilenceReader(Protocol):
    """Where silences are read: the store every process shares (with one store per Box
    account, the base store), so that one silence mutes every account and replica."""

    @abstractmethod
    async def list_silences(self, ended_after: float | None = None) -> list[Silence]:
        """As `SilenceStore.list_silences`."""


class StatusReader(SnapshotReader, SilenceReader, Protocol):
    """What the status page reads: aggregates over the snapshot and the outbox, bounded in
    size whatever the account's, and never a write."""

    @abstractmethod
    async def batch_summaries(self, batch_ids: Iterable[str]) -> dict[str, BatchSummary]:
        """A summary of each given batch with at least one job in the snapshot, by batch id."""

    @abstractmethod
    async def recent_failures(self, since: float, limit: int) -> list[JobState]:
        """Up to `limit` snapshot jobs that ended `failed` or `completed_with_error` and
        changed at or after `since` (unix seconds), the latest change first."""

    @abstractmethod
    async def notifier_activity(self) -> dict[str, NotifierActivity]:
        """The `NotifierActivity` of every notifier that delivered an event still in the
        outbox or owes one that failed; other notifiers are absent."""

    @abstractmethod
    async def outbox_counts(self) -> dict[str, dict[OutboxState, int]]:
        """As `OutboxStore.outbox_counts`."""

    @abstractmethod
    async def list_outbox(
        self, state: OutboxState, notifier: str | None = None, limit: int = 1000
    ) -> list[OutboxEntry]:
        """As `OutboxStore.list_outbox`."""

class SilenceStore(Protocol):
    """Silences, shared by every process on the store, and the history of events."""

    @abstractmethod
    async def add_silence(self, silence: Silence) -> None:
        """Record a silence; `StoreError` when its id is taken."""

    @abstractmethod
    async def list_silences(self, ended_after: float | None = None) -> list[Silence]:
        """Silences whose end is after `ended_after` (None: every one), newest first."""

    @abstractmethod
    async def expire_silence(self, silence_id: str, now: float) -> Silence | None:
        """End the silence at `now` (one already over keeps its end) and return it as stored;
        None for an unknown id."""

    @abstractmethod
    async def mark_silenced(self, notifier: str, silenced: Mapping[str, str]) -> None:
        """Settle pending or claimed rows (event id -> id of the silence that matched): they
        are never sent, and read `silenced` in the history. One transaction."""

    @abstractmethod
    async def list_events(self, query: EventQuery) -> list[EventRecord]:
        """Up to `query.limit` recorded events matching `query`, newest first, each with its
        outbox rows (by notifier name)."""


class NotifierState(Protocol):
    """What notifiers remember between sends: Slack threads (and their posts and edits in
    flight), group flush times."""

    @abstractmethod
    async def get_thread(self, notifier: str, batch_id: str) -> ThreadRef | None:
        """The parent message `notifier` posted for `batch_id`, or None."""

    @abstractmethod
    async def save_thread(self, notifier: str, batch_id: str, thread: ThreadRef) -> ThreadRef:
        """Record the parent message of a batch; the first one recorded wins and is returned
        (a batch never gets a second parent)."""

    @abstractmethod
    async def start_thread_post(self, notifier: str, batch_id: str, at: float) -> float | None:
        """Record, before posting it, that the parent message of a batch is being posted at
        `at` (wall clock). When an earlier post was recorded and no `save_thread` followed, it
        may have reached the receiver before a crash: its start time is returned (and kept, so
        a lookup covers every attempt), else None. No-op returning None for a saved thread."""

    @abstractmethod
    async def start_reply_post(
        self, notifier: str, batch_id: str, reply_key: str, at: float
    ) -> None:
        """Record, before posting it, that the thread reply `reply_key` of a batch is being
        posted at `at` (wall clock); a reply recorded earlier under the same key keeps its
        first time. Until `finish_reply_posts` it is in doubt: it may have reached the
        receiver before a crash."""

    @abstractmethod
    async def reply_posts_in_doubt(self, notifier: str, batch_id: str) -> float | None:
        """The earliest start of a reply of the batch recorded by `start_reply_post` and not
        finished since (a lookup from it covers every such attempt), or None."""

    @abstractmethod
    async def finish_reply_posts(
        self,
        notifier: str,
        batch_id: str,
        reply_keys: Sequence[str] | None,
        event_ids: Sequence[str],
    ) -> None:
        """In one transaction: mark `event_ids` delivered for `notifier` (as
        `mark_delivered_many`) and forget the starts of `reply_keys` (None: every reply of
        the batch in doubt, once a lookup has settled them all)."""

    @abstractmethod
    async def set_pending_edit(
        self, notifier: str, batch_id: str, content: str, at: float
    ) -> None:
        """A parent edit failed: keep `content` as the latest content wanted, count one more
        attempt and, for a first failure, remember `at` as `failing_since`. Ignored for a batch
        without a saved thread."""

    @abstractmethod
    async def pending_edits(self, notifier: str) -> list[PendingEdit]:
        """Every pending parent edit of `notifier`, oldest failure first."""

    @abstractmethod
    async def clear_pending_edit(self, notifier: str, batch_id: str) -> None:
        """The parent shows the latest content (or the edit was abandoned): forget the edit."""

    @abstractmethod
    async def group_flushed_at(self, notifier: str, group_key: str) -> float | None:
        """When `notifier` last sent the group `group_key`, or None if never."""

    @abstractmethod
    async def set_group_flushed(self, notifier: str, group_key: str, at: float) -> None:
        """Record that `notifier` sent the group `group_key` at `at`."""


class NotifierStore(NotifierState, SnapshotReader, Protocol):
    """What a notifier may touch: its own state, the snapshot rows a message shows, and the mark
    of events it settled itself (`Notifier.settle`)."""

    @abstractmethod
    async def mark_delivered_many(self, notifier: str, event_ids: Sequence[str]) -> None:
        """As `OutboxStore.mark_delivered_many`."""


class DeliveryStore(OutboxStore, NotifierStore, SilenceReader, Protocol):
    """What the dispatcher uses: the outbox, and the notifier state of the notifiers it runs
    (and, unless it is given another source, the silences)."""

    @abstractmethod
    async def mark_silenced(self, notifier: str, silenced: Mapping[str, str]) -> None:
        """As `SilenceStore.mark_silenced`."""


class PollStore(SnapshotReader, SweepStaging, Protocol):
    """What the poller uses: it reads the snapshot and stages sweeps, and cannot commit."""


class RecorderStore(SnapshotStore, SweepStaging, Protocol):
    """What the recorder uses: it closes a staged sweep and commits every observation."""


class LeaseStore(Protocol):
    """Leases of Box accounts among replicas that share one store, and the replica registry.

    Expiry is judged by the store's clock (the database server's), so replicas' clocks need not
    agree. Fencing: once `set_fence` gave a handle a fence, every write through it (commit,
    sweep staging, outbox claim, delivery mark, notifier state) checks inside its own
    transaction that the fence's epoch still holds the lease, locking the lease row so that a
    takeover waits for it; when it does not, the write raises `LeaseLost`, commits nothing, and
    the handle's `on_lease_lost` listener hears of it (whoever caught the error). The lease
    operations themselves are never fenced."""

    @abstractmethod
    async def heartbeat(self, replica: str, ttl_s: float) -> int:
        """Register `replica` as live for `ttl_s` more seconds; return how many replicas are
        live now (this one included)."""

    @abstractmethod
    async def leave(self, replica: str) -> None:
        """Forget `replica` (a clean shutdown): it stops counting at once."""

    @abstractmethod
    async def acquire_lease(self, account: str, owner: str, ttl_s: float) -> Fence | None:
        """Take the lease of `account` for `owner` until `ttl_s` from now, with the next epoch,
        when nobody holds it (never held, released or expired); None when it is held."""

    @abstractmethod
    async def renew_lease(self, fence: Fence, ttl_s: float) -> bool:
        """Extend the lease to `ttl_s` from now if `fence` still holds it (same owner and
        epoch, expired or not: nobody took it since); False when it moved on."""

    @abstractmethod
    async def release_lease(self, fence: Fence) -> None:
        """Give the lease up if `fence` still holds it: free at once for the next taker."""

    @abstractmethod
    async def leases(self) -> dict[str, Lease]:
        """Every account's lease row, by account."""

    @abstractmethod
    def share_leases_of(self, url: str) -> None:
        """Before `open`: fence checks read the lease table of the store at `url` (the base
        store whose leases every account shares) instead of this store's own; a no-op for
        this store's own URL."""

    @abstractmethod
    def set_fence(self, fence: Fence | None) -> None:
        """Check every later write of this handle against `fence` (None: no check)."""

    @abstractmethod
    def on_lease_lost(self, listener: Callable[[Fence], None] | None) -> None:
        """Call `listener` with the fence each time a write is refused by `LeaseLost`."""


# The tables `docgen-monitor state migrate` copies, in an order that keeps foreign keys
# satisfied (events before the outbox rows that name them). Every table a migration creates is
# here or in `NOT_COPIED_TABLES` (a test checks both backends), so a new table cannot be left
# behind by a move unnoticed.
COPIED_TABLES = (
    "jobs",
    "events",
    "outbox",
    "meta",  # identity, baseline and heartbeat keys
    "threads",
    "notify_groups",
    "stuck_marks",
    "vanished",
    "suspects",
    "reply_posts",
    "silences",
)
# The schema's version (the target migrates itself), the delivered counter (the target's
# trigger counts the outbox rows as they are copied), a sweep's staging (never durable), and
# who holds which lease (the running replicas' business: a moved store starts with no holder).
NOT_COPIED_TABLES = (
    "schema_version",
    "outbox_delivered",
    "sweep_runs",
    "sweep_seen",
    "sweep_stage",
    "jobs_next",  # a first baseline's rows on SQLite until its commit (store/sqlite_first.py)
    "leases",
    "replicas",
)


@dataclass(frozen=True, slots=True)
class TableChunk:
    """Up to a chunk of one table's rows, every column, in the order of `columns`."""

    table: str
    columns: tuple[str, ...]
    rows: list[tuple[Any, ...]]


class TableCopy(Protocol):
    """Whole tables, every column, for `docgen-monitor state migrate`: a copy keeps what no
    role shows (attempt counts, creation times, the order of events). Values travel as Python
    scalars (str, int, float, None), which both backends read and write alike."""

    @abstractmethod
    def dump_tables(self, chunk_rows: int) -> AsyncGenerator[TableChunk, None]:
        """Every row of `COPIED_TABLES`, table by table in that order, up to `chunk_rows` at a
        time, all read in one transaction (a consistent view of a store in use)."""

    @abstractmethod
    async def load_tables(
        self, chunks: AsyncIterable[TableChunk], *, replace: bool
    ) -> dict[str, int]:
        """In ONE transaction: with `replace` delete every row of `COPIED_TABLES` first,
        otherwise raise `StoreNotEmpty` when any of them holds a row; insert every chunk; move
        generated ids (the events' `seq`) past the copied ones. Returns rows per table."""


class Store(
    StoreLifecycle,
    SnapshotStore,
    SweepStaging,
    OutboxStore,
    NotifierStore,
    StatusReader,
    LeaseStore,
    TableCopy,
    SilenceStore,
):
    """Every role, as one backend implements them: async, single-process view of the durable
    state. Open with `async with`.

    Every method but `open` and `close` raises `StoreError` when the store is not open or the
    backend fails. Writes are shielded from the caller's cancellation: the caller gets
    `CancelledError` at once, while the transaction still commits or rolls back whole."""

    @classmethod
    @abstractmethod
    def from_url(cls, url: str) -> Self:
        """A store for `url` (its registered scheme), not yet opened. Raises `ValueError`
        saying what is wrong with a malformed URL; touches nothing on disk or network."""

    @classmethod
    @abstractmethod
    def account_url(cls, url: str, account: str) -> str:
        """The URL of the state of Box account `account` (a safe name: `[a-z][a-z0-9_-]*`)
        beside the one `url` names, separate from it and from every other account's. The
        `default` account's is `url` itself, so a single-account store keeps its state."""

    async def __aenter__(self) -> Self:
        await self.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()
