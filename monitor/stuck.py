"""Which jobs have stayed in one non-terminal status for too long. Pure, like `diff`.

A job is stuck when it is non-terminal and its status has not changed for longer than its
threshold (per template if configured, else global). The event id carries the job's `seq`, so it
fires once per crossing: a later transition gives a new `seq`, which clears the mark and arms the
next crossing."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime

from monitor.diff import job_event
from monitor.model import Event, EventType, JobState, is_terminal


def stuck_id(job_id: str, seq: int) -> str:
    return f"{job_id}:{seq}:stuck"


@dataclass(frozen=True, slots=True)
class StuckPolicy:
    """`after_s` for every template (None: off), `by_template_s` overrides it per template."""

    after_s: float | None = None
    by_template_s: Mapping[str, float] = field(default_factory=dict)

    def threshold_s(self, template_file_id: str) -> float | None:
        return self.by_template_s.get(template_file_id, self.after_s)

    @property
    def enabled(self) -> bool:
        return self.after_s is not None or bool(self.by_template_s)


def stuck_events(
    jobs: Iterable[JobState], marks: Mapping[str, str], policy: StuckPolicy, now: float
) -> tuple[Event, ...]:
    """`job.stuck` for each job past its threshold that has no mark for its current `seq`."""
    detected_at = datetime.fromtimestamp(now, UTC)
    events = []
    for job in jobs:
        threshold_s = policy.threshold_s(job.template_file_id)
        if threshold_s is None or is_terminal(job.status):
            continue
        stuck_for_s = now - job.changed_at
        event_id = stuck_id(job.id, job.seq)
        if stuck_for_s <= threshold_s or marks.get(job.id) == event_id:
            continue
        event = job_event(EventType.JOB_STUCK, event_id, job.status, job, detected_at, job.status)
        extra = {"stuck_for_s": round(stuck_for_s, 3), "threshold_s": threshold_s}
        events.append(event.model_copy(update={"extra": extra}))
    return tuple(events)
