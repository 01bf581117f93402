"""The core vocabulary shared by diff, store, poller and notifiers: a job's observed state,
an observation, and the events that changes become. Nothing here does I/O."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

#: The account a single-account configuration (top-level `box:`) watches; its state keeps
#: `state.url` as it is.
DEFAULT_ACCOUNT = "default"
TERMINAL_STATUSES = frozenset({"completed", "completed_with_error", "failed"})
KNOWN_STATUSES = frozenset({"pending", "submitted"}) | TERMINAL_STATUSES
#: The output types Box documents for a Doc Gen job (`box-api/FACTS.md`).
BOX_OUTPUT_TYPES = frozenset({"docx", "pdf"})


def is_terminal(status: str) -> bool:
    """Only Box's three outcome statuses are terminal; an unknown status never is."""
    return status in TERMINAL_STATUSES


@dataclass(frozen=True, slots=True)
class JobState:
    """One job as the monitor last saw it: a snapshot row.

    `seq` counts the changes recorded for the job, so that a job that goes back and forth
    still gets a new event id for each real change while a replayed change keeps its id.
    """

    id: str
    batch_id: str
    status: str
    template_file_id: str
    output_type: str
    output_file_id: str | None = None
    created_at: str | None = None
    created_by_id: str | None = None
    seq: int = 0
    first_seen_at: float = 0.0
    changed_at: float = 0.0
    # Box's `failures` texts (untrusted: written by whoever built the template and data).
    errors: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()
    # Box's `template_file_version.id`: which version of the template the job was built from
    # (None for rows stored before the snapshot kept it). Not part of `same_observation`: a
    # job's template version never changes.
    template_file_version_id: str | None = None

    def booked(self, seq: int, first_seen_at: float, changed_at: float) -> JobState:
        """This observation with the snapshot's bookkeeping fields set: `dataclasses.replace`,
        at a tenth of its cost (a baseline books every job of the account)."""
        return JobState(
            self.id, self.batch_id, self.status, self.template_file_id, self.output_type,
            self.output_file_id, self.created_at, self.created_by_id, seq, first_seen_at,
            changed_at, self.errors, self.warnings, self.template_file_version_id,
        )

    def same_observation(self, other: JobState) -> bool:
        """True when nothing Box reports about the job differs (bookkeeping fields ignored)."""
        return (
            self.status == other.status
            and self.batch_id == other.batch_id
            and self.output_file_id == other.output_file_id
            and self.template_file_id == other.template_file_id
            and self.output_type == other.output_type
            and self.errors == other.errors
            and self.warnings == other.warnings
        )


#: What a listing says of a job, as the snapshot stores it: the fields `same_observation` compares
#: (status, batch id, template file id, output type, output file id, and the errors and warnings
#: as the JSON arrays the store keeps). A sweep compares each listing entry's with the stored
#: one: an equal pair is an unchanged job, recognised without building a JobState.
Observed = tuple[str, str, str, str, str | None, str, str]


@dataclass(frozen=True, slots=True)
class Observation:
    """What one poll saw. `complete` means the listing covers every job the user has, so a job
    missing from it is gone; a partial observation (one batch, one job) can never declare that."""

    jobs: tuple[JobState, ...]
    complete: bool
    observed_at: float  # unix seconds
    kind: str = "sweep"


@dataclass(frozen=True, slots=True)
class SnapshotChanges:
    """New or changed snapshot rows, and ids of jobs that left the snapshot."""

    upserts: tuple[JobState, ...] = ()
    removals: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class BoxIdentity:
    """The Box user (and enterprise) whose jobs a store holds: `GET /2.0/users/me`. A store
    watched by one identity is never diffed against another's listing."""

    user_id: str
    enterprise_id: str | None = None

    def describe(self) -> str:
        enterprise = self.enterprise_id if self.enterprise_id is not None else "none"
        return f"user {self.user_id} (enterprise {enterprise})"


class EventType(StrEnum):
    JOB_DISCOVERED = "job.discovered"
    JOB_STATUS_CHANGED = "job.status_changed"
    JOB_STUCK = "job.stuck"
    JOB_VANISHED = "job.vanished"
    JOB_REAPPEARED = "job.reappeared"
    BATCH_COMPLETED = "batch.completed"
    TEMPLATE_FAILURE_RATE_ROSE = "template.failure_rate_rose"


class EventJob(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str
    batch_id: str
    status: str | None
    template_file_id: str
    output_file_id: str | None
    output_type: str
    created_by_id: str | None = None
    errors: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()


class EventBatch(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str
    counts: dict[str, int]
    duration_s: float | None = None


class EventTemplate(BaseModel):
    """A template whose new version fails markedly more than the previous one, over the
    window (`monitor/template_rates.py`). A failure is a `failed` or `completed_with_error`
    job; the ratios are failures / finished jobs of each version."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str
    version_id: str
    failure_ratio: float
    jobs: int  # finished jobs of this version in the window
    failed_jobs: int
    previous_version_id: str
    previous_failure_ratio: float
    previous_jobs: int
    previous_failed_jobs: int
    window_s: float


class Event(BaseModel):
    """A change worth telling someone about. `id` is stable: the same change always yields the
    same id, which receivers use as an idempotency key."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str
    type: EventType
    detected_at: datetime
    account: str = DEFAULT_ACCOUNT  # the Box account (configuration name) it happened in
    from_status: str | None = None
    to_status: str | None = None
    job: EventJob | None = None
    batch: EventBatch | None = None
    template: EventTemplate | None = None
    extra: dict[str, Any] = Field(default_factory=dict)

    @property
    def batch_id(self) -> str | None:
        if self.job is not None:
            return self.job.batch_id
        return self.batch.id if self.batch is not None else None

    @property
    def template_file_id(self) -> str | None:
        if self.job is not None:
            return self.job.template_file_id
        return self.template.id if self.template is not None else None

    def wire(self) -> dict[str, Any]:
        """The documented JSON body: `job` absent for batch and template events, `batch` only
        for batch ones, `template` only for `template.failure_rate_rose`.
        Added keys (receivers ignore unknown keys): `account`, `job.created_by_id` and
        `job.failures`
        (`{"errors": [...], "warnings": [...]}`, or null when Box reported none)."""
        body: dict[str, Any] = {
            "id": self.id,
            "type": self.type.value,
            "detected_at": self.detected_at.isoformat().replace("+00:00", "Z"),
            "account": self.account,
            "from_status": self.from_status,
            "to_status": self.to_status,
        }
        if self.job is not None:
            body["job"] = {
                "id": self.job.id,
                "batch_id": self.job.batch_id,
                "status": self.job.status,
                "template_file_id": self.job.template_file_id,
                "output_file_id": self.job.output_file_id,
                "output_type": self.job.output_type,
                "created_by_id": self.job.created_by_id,
                "failures": (
                    {"errors": list(self.job.errors), "warnings": list(self.job.warnings)}
                    if self.job.errors or self.job.warnings
                    else None
                ),
            }
        if self.batch is not None:
            body["batch"] = self.batch.model_dump(exclude_none=True)
        if self.template is not None:
            body["template"] = self.template.model_dump()
        body.update(self.extra)
        return body
