"""Every job the simulator knows, and the timeline that moves it.

Storage is columnar (`array` columns, one row per job) so that a million jobs cost about thirty
bytes each. A job's status is never stored: it is computed from the clock and the job's schedule
whenever someone asks, so an idle simulator does no work however many jobs it holds. Ids grow with
insertion, which makes the table sorted by id: lookups are a bisection.

Listings come in Box's apparent order, newest first: by `created_at` descending, ties by id
descending. A batch's jobs share their `created_at` and hold consecutive rows, so that order is
the batches sorted by (created_at, first row), each read from its last row down. Paging is a
keyset on that order (the last job served), so jobs added while a client pages land at the head
and are never skipped or repeated.
"""

from __future__ import annotations

import random
from array import array
from bisect import bisect_left
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from monitor.simulator import failure_texts
from monitor.simulator.config import OUTCOME_STATUSES, OutcomeMix

PENDING = "pending"
SUBMITTED = "submitted"
COMPLETED = "completed"
COMPLETED_WITH_ERROR = "completed_with_error"
FAILED = "failed"
# Statuses whose job has produced a document: output_file is set from then on.
WITH_OUTPUT = frozenset({COMPLETED, COMPLETED_WITH_ERROR})

# Row flags.
_DELETED = 1
_PINNED = 2

# Output files get ids in their own range, derived from the job id: no column needed.
_OUTPUT_FILE_ID_BASE = 1_500_000_000_000
_OUTPUT_FILE_VERSION_ID_BASE = 1_700_000_000_000


class Batch:
    """One POST /docgen_batches: its jobs are the rows [first, first + count) of the table."""

    __slots__ = (
        "count",
        "created_at_s",
        "created_by_id",
        "errors",
        "first",
        "historic",
        "id",
        "output_type",
        "template_file_id",
        "template_file_version_id",
        "warnings",
    )

    def __init__(
        self,
        *,
        batch_id: int,
        first: int,
        count: int,
        created_at_s: float,
        template_file_id: str,
        template_file_version_id: str,
        output_type: str,
        created_by_id: str,
        historic: bool,
        errors: tuple[str, ...] | None,
        warnings: tuple[str, ...] | None,
    ) -> None:
        self.id = batch_id
        self.first = first
        self.count = count
        self.created_at_s = created_at_s
        self.template_file_id = template_file_id
        self.template_file_version_id = template_file_version_id
        self.output_type = output_type
        self.created_by_id = created_by_id
        self.historic = historic
        # Texts for this batch's bad outcomes; None means "pick a realistic one per job".
        self.errors = errors
        self.warnings = warnings


class Pin:
    """A status set through the control API; the timeline no longer moves the job."""

    __slots__ = ("errors", "first_at_s", "status", "warnings")

    def __init__(
        self,
        status: str,
        errors: tuple[str, ...] | None,
        warnings: tuple[str, ...] | None,
        first_at_s: float,
    ) -> None:
        self.status = status
        self.errors = errors
        self.warnings = warnings
        # The timeline stopped here: natural transitions after this instant never happened.
        self.first_at_s = first_at_s


@dataclass(frozen=True, slots=True)
class Failures:
    errors: tuple[str, ...]
    warnings: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class JobView:
    """One job as of one instant: what every representation (Box or control API) is made from."""

    row: int
    id: int
    batch: Batch
    status: str
    failures: Failures | None
    submitted_at_s: float
    finished_at_s: float
    outcome: str
    pinned: bool

    @property
    def output_file_id(self) -> str | None:
        return str(_OUTPUT_FILE_ID_BASE + self.id) if self.status in WITH_OUTPUT else None

    @property
    def output_file_version_id(self) -> str | None:
        return str(_OUTPUT_FILE_VERSION_ID_BASE + self.id) if self.status in WITH_OUTPUT else None


@dataclass(frozen=True, slots=True)
class Transition:
    at_s: float
    job_id: int
    batch_id: int
    from_status: str
    to_status: str


@dataclass(frozen=True, slots=True)
class BatchPlan:
    """How to make a batch's jobs: the timeline knobs and the outcome weights."""

    count: int
    submitted_after_s: float
    min_duration_s: float
    max_duration_s: float
    outcomes: OutcomeMix


class JobTable:
    """Rows of jobs in id order, plus the batches and the sparse overrides (pins, deletions)."""

    def __init__(self, rng: random.Random) -> None:
        self._rng = rng
        self._ids = array("q")
        self._batch_row = array("l")  # index into self.batches
        self._submitted_at_s = array("d")
        self._finished_at_s = array("d")
        self._outcome = array("b")  # index into OUTCOME_STATUSES
        self._flags = bytearray()
        self.batches: list[Batch] = []
        self._batch_by_id: dict[int, Batch] = {}
        # Batches in listing order, oldest first (read backwards for newest first).
        self._order: list[Batch] = []
        self._order_keys: list[tuple[float, int]] = []
        self._pins: dict[int, Pin] = {}
        self._deleted_at_s: dict[int, float] = {}
        self._pin_log: list[Transition] = []
        self._template_versions: dict[str, str] = {}
        # Realistic, seeded numeric ids: they start somewhere plausible and grow with gaps.
        self._next_job_id = 1_200_000_000 + rng.randrange(100_000_000)
        self._next_batch_id = 800_000_000 + rng.randrange(100_000_000)
        self._next_template_version_id = 1_900_000_000_000 + rng.randrange(10_000_000)
        self.live_count = 0

    # ------------------------------------------------------------------ writes

    def template_version_for(self, template_file_id: str) -> str:
        """The current version id of a template file, made up once and then kept."""
        version = self._template_versions.get(template_file_id)
        if version is None:
            self._next_template_version_id += 1 + self._rng.randrange(500)
            version = str(self._next_template_version_id)
            self._template_versions[template_file_id] = version
        return version

    def add_batch(
        self,
        plan: BatchPlan,
        *,
        created_at_s: float,
        template_file_id: str,
        template_file_version_id: str | None,
        output_type: str,
        created_by_id: str,
        historic: bool = False,
        errors: Sequence[str] | None = None,
        warnings: Sequence[str] | None = None,
    ) -> Batch:
        """Append a batch and its jobs, each with a seeded schedule and outcome."""
        rng = self._rng
        self._next_batch_id += 1 + rng.randrange(50)
        batch = Batch(
            batch_id=self._next_batch_id,
            first=len(self._ids),
            count=plan.count,
            created_at_s=created_at_s,
            template_file_id=template_file_id,
            template_file_version_id=(
                template_file_version_id or self.template_version_for(template_file_id)
            ),
            output_type=output_type,
            created_by_id=created_by_id,
            historic=historic,
            errors=tuple(errors) if errors is not None else None,
            warnings=tuple(warnings) if warnings is not None else None,
        )
        batch_row = len(self.batches)
        self.batches.append(batch)
        self._batch_by_id[batch.id] = batch
        key = (created_at_s, batch.first)
        at = bisect_left(self._order_keys, key)
        self._order_keys.insert(at, key)
        self._order.insert(at, batch)

        random_ = rng.random
        job_id = self._next_job_id
        ids = []
        for _ in range(plan.count):
            job_id += 1 + int(random_() * 7)
            ids.append(job_id)
        self._next_job_id = job_id
        self._ids.extend(ids)

        submitted_at_s = created_at_s + plan.submitted_after_s
        span_s = plan.max_duration_s - plan.min_duration_s
        base_s = submitted_at_s + plan.min_duration_s
        self._submitted_at_s.extend([submitted_at_s] * plan.count)
        self._finished_at_s.extend([base_s + span_s * random_() for _ in range(plan.count)])
        self._outcome.extend(rng.choices(range(3), weights=plan.outcomes.weights(), k=plan.count))
        self._batch_row.extend([batch_row] * plan.count)
        self._flags.extend(bytes(plan.count))
        self.live_count += plan.count
        return batch

    def pin(
        self,
        row: int,
        status: str,
        *,
        errors: Sequence[str] | None,
        warnings: Sequence[str] | None,
        now_s: float,
    ) -> None:
        """Set a job's status for good; log the change if there was one."""
        before = self.status_of(row, now_s)
        old = self._pins.get(row)
        self._pins[row] = Pin(
            status,
            tuple(errors) if errors is not None else None,
            tuple(warnings) if warnings is not None else None,
            old.first_at_s if old is not None else now_s,
        )
        self._flags[row] |= _PINNED
        if before != status:
            batch = self.batch_of(row)
            self._pin_log.append(Transition(now_s, self._ids[row], batch.id, before, status))

    @property
    def pin_log(self) -> Sequence[Transition]:
        """Every change a pin made, in order (append-only)."""
        return self._pin_log

    def follows_timeline(self, row: int, at_s: float) -> bool:
        """True when neither a pin nor a deletion had stopped the job's timeline by `at_s`."""
        if self._flags[row] & _PINNED and self._pins[row].first_at_s <= at_s:
            return False
        return not (self._flags[row] & _DELETED and self._deleted_at_s[row] <= at_s)

    def delete(self, row: int, now_s: float) -> None:
        if not self._flags[row] & _DELETED:
            self._flags[row] |= _DELETED
            self._deleted_at_s[row] = now_s
            self.live_count -= 1

    # ------------------------------------------------------------------ reads

    def find(self, job_id: int) -> int | None:
        """The row of a live job, or None."""
        row = bisect_left(self._ids, job_id)
        if row < len(self._ids) and self._ids[row] == job_id and not self._flags[row] & _DELETED:
            return row
        return None

    def batch(self, batch_id: int) -> Batch | None:
        return self._batch_by_id.get(batch_id)

    def batch_job_ids(self, batch: Batch) -> list[int]:
        """Every job id the batch was created with, deleted ones included."""
        return self._ids[batch.first : batch.first + batch.count].tolist()

    def batch_of(self, row: int) -> Batch:
        return self.batches[self._batch_row[row]]

    def status_of(self, row: int, now_s: float) -> str:
        if self._flags[row] & _PINNED:
            return self._pins[row].status
        if now_s < self._submitted_at_s[row]:
            return PENDING
        if now_s < self._finished_at_s[row]:
            return SUBMITTED
        return OUTCOME_STATUSES[self._outcome[row]]

    def view(self, row: int, now_s: float) -> JobView:
        status = self.status_of(row, now_s)
        batch = self.batch_of(row)
        pin = self._pins.get(row) if self._flags[row] & _PINNED else None
        return JobView(
            row=row,
            id=self._ids[row],
            batch=batch,
            status=status,
            failures=self._failures(row, status, batch, pin),
            submitted_at_s=self._submitted_at_s[row],
            finished_at_s=self._finished_at_s[row],
            outcome=OUTCOME_STATUSES[self._outcome[row]],
            pinned=pin is not None,
        )

    def _failures(self, row: int, status: str, batch: Batch, pin: Pin | None) -> Failures | None:
        if pin is not None and (pin.errors is not None or pin.warnings is not None):
            return Failures(pin.errors or (), pin.warnings or ())
        job_id = self._ids[row]
        if status == FAILED:
            return Failures(batch.errors or (failure_texts.error_for(job_id),), ())
        if status == COMPLETED_WITH_ERROR:
            return Failures((), batch.warnings or (failure_texts.warning_for(job_id),))
        return None

    def row_of(self, job_id: int) -> int | None:
        """The row of a job, deleted or not (a marker may point at a job deleted since)."""
        row = bisect_left(self._ids, job_id)
        return row if row < len(self._ids) and self._ids[row] == job_id else None

    def newest_first(
        self, *, after_row: int | None = None, batch: Batch | None = None, owner: str | None = None
    ) -> Iterator[int]:
        """Live rows in listing order (newest first), from just after `after_row`; only one
        batch's, or only those of batches `owner` created, when given."""
        flags = self._flags
        if batch is not None:
            top = batch.first + batch.count - 1 if after_row is None else after_row - 1
            for row in range(top, batch.first - 1, -1):
                if not flags[row] & _DELETED:
                    yield row
            return
        order = self._order
        if after_row is None:
            pos, top_row = len(order) - 1, None
        else:
            at = self.batch_of(after_row)
            pos, top_row = bisect_left(self._order_keys, (at.created_at_s, at.first)), after_row - 1
        while pos >= 0:
            current = order[pos]
            if owner is None or current.created_by_id == owner:
                top = current.first + current.count - 1 if top_row is None else top_row
                for row in range(top, current.first - 1, -1):
                    if not flags[row] & _DELETED:
                        yield row
            top_row = None
            pos -= 1

    def id_of(self, row: int) -> int:
        return self._ids[row]

    def live_rows(self, batch: Batch | None = None) -> Iterator[int]:
        """Every live row (of one batch, or all), in no particular order: for counting."""
        lo, hi = (batch.first, batch.first + batch.count) if batch else (0, len(self._ids))
        flags = self._flags
        return (row for row in range(lo, hi) if not flags[row] & _DELETED)

    def status_counts(self, now_s: float) -> dict[str, int]:
        counts: dict[str, int] = {}
        for row in self.live_rows():
            status = self.status_of(row, now_s)
            counts[status] = counts.get(status, 0) + 1
        return counts

    def transitions(self, now_s: float) -> list[Transition]:
        """Every status change that has happened by `now_s`, oldest first.

        Seeded history is left out: those jobs were born terminal, before anyone watched. A job's
        creation is not a change. Natural changes stop where a pin or a deletion stopped the job.
        """
        natural: list[Transition] = []
        for batch in self.batches:
            if batch.historic:
                continue
            for row in range(batch.first, batch.first + batch.count):
                cut_s = now_s
                if self._flags[row] & _PINNED:
                    cut_s = min(cut_s, self._pins[row].first_at_s)
                if self._flags[row] & _DELETED:
                    cut_s = min(cut_s, self._deleted_at_s[row])
                submitted_at_s = self._submitted_at_s[row]
                if submitted_at_s > cut_s:
                    continue
                job_id = self._ids[row]
                natural.append(Transition(submitted_at_s, job_id, batch.id, PENDING, SUBMITTED))
                finished_at_s = self._finished_at_s[row]
                if finished_at_s <= cut_s:
                    outcome = OUTCOME_STATUSES[self._outcome[row]]
                    natural.append(Transition(finished_at_s, job_id, batch.id, SUBMITTED, outcome))
        # A stable sort on time keeps each job's own changes in the order they happened.
        return sorted(natural + self._pin_log, key=lambda t: t.at_s)
