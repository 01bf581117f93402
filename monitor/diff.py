"""snapshot + observation -> events. Pure: no I/O, no clock, no randomness, so it can be
property-tested and replayed after a crash with the same result."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime

from monitor.model import (
    Event,
    EventBatch,
    EventJob,
    EventType,
    JobState,
    Observation,
    SnapshotChanges,
    is_terminal,
)


@dataclass(frozen=True, slots=True)
class Diff:
    """The events an observation produces and the snapshot rows it changes."""

    events: tuple[Event, ...]
    changes: SnapshotChanges


def discovered_id(job_id: str) -> str:
    return f"{job_id}:discovered"


def status_changed_id(job_id: str, seq: int, from_status: str, to_status: str) -> str:
    # `seq` tells a job's second pending->submitted apart from its first; a replay keeps it.
    return f"{job_id}:{seq}:{from_status}:{to_status}"


def vanished_id(job_id: str, seq: int) -> str:
    return f"{job_id}:{seq}:vanished"


def reappeared_id(job_id: str, seq: int) -> str:
    # `seq` continues from the vanish: a second reappearance gets a new id, a replay the same.
    return f"{job_id}:{seq}:reappeared"


def batch_completed_id(batch_id: str, job_count: int) -> str:
    return f"{batch_id}:completed:{job_count}"


def diff(
    snapshot: Mapping[str, JobState],
    observation: Observation,
    now: float,
    vanished: Mapping[str, int] | None = None,
) -> Diff:
    """Compare what was stored with what was seen: the changed rows and the events they make.

    `snapshot` must hold every stored job of each batch the observation touches (all jobs for a
    complete sweep), so that `batch.completed` is judged on the whole batch. Only a complete
    observation may declare a job vanished. `vanished` maps jobs reported vanished before to the
    `seq` of that report: seen again, they reappear instead of being discovered a second time.
    """
    changes = snapshot_changes(snapshot, observation, now, vanished)
    return Diff(events_for(snapshot, changes, now), changes)


def snapshot_changes(
    snapshot: Mapping[str, JobState],
    observation: Observation,
    now: float,
    vanished: Mapping[str, int] | None = None,
) -> SnapshotChanges:
    """The rows to write. A silent baseline stops here: it records, it announces nothing.
    A job that is not in `snapshot` starts at `seq` 1, or one past its vanish in `vanished`."""
    gone_seqs = vanished or {}
    upserts: dict[str, JobState] = {}
    seen: set[str] = set()
    for job in observation.jobs:
        if job.id in seen:
            continue  # a listing that repeats a job across pages: the first sighting counts
        seen.add(job.id)
        old = snapshot.get(job.id)
        if old is not None:
            job = _keep_unreported(old, job)
        if old is None:
            new = job.booked(gone_seqs.get(job.id, 0) + 1, now, now)
        elif old.status != job.status:
            new = job.booked(old.seq + 1, old.first_seen_at, now)
        elif not old.same_observation(job):
            # e.g. an output file id that appears without a status change: stored, not announced
            new = job.booked(old.seq, old.first_seen_at, old.changed_at)
        else:
            continue
        upserts[job.id] = new
    removals = tuple(i for i in snapshot if i not in seen) if observation.complete else ()
    return SnapshotChanges(tuple(upserts.values()), removals)


def drop_regressions(
    snapshot: Mapping[str, JobState], jobs: Iterable[JobState]
) -> tuple[list[JobState], list[str]]:
    """A listing that shows a job non-terminal after a terminal status was committed for it
    (from a batch or job read) is behind: Box never takes a finished job back. Returns the
    jobs to diff and the ids of the ones ignored."""
    kept: list[JobState] = []
    behind: list[str] = []
    for job in jobs:
        old = snapshot.get(job.id)
        if old is not None and is_terminal(old.status) and not is_terminal(job.status):
            behind.append(job.id)
        else:
            kept.append(job)
    return kept, behind


def _keep_unreported(old: JobState, seen: JobState) -> JobState:
    """A batch or single-job read returns Box's standard job variant, which has no creator and
    no creation time: what the stored row knows of them stays."""
    if (seen.created_at is None and old.created_at is not None) or (
        seen.created_by_id is None and old.created_by_id is not None
    ):
        return replace(
            seen,
            created_at=seen.created_at or old.created_at,
            created_by_id=seen.created_by_id or old.created_by_id,
        )
    return seen


def events_for(
    snapshot: Mapping[str, JobState], changes: SnapshotChanges, now: float
) -> tuple[Event, ...]:
    """The events that `changes` to `snapshot` amount to, in observation order."""
    detected_at = datetime.fromtimestamp(now, UTC)
    events: list[Event] = []
    for new in changes.upserts:
        old = snapshot.get(new.id)
        if old is None and new.seq > 1:  # known before: reported vanished, now back
            events.append(
                job_event(
                    EventType.JOB_REAPPEARED,
                    reappeared_id(new.id, new.seq),
                    None,
                    new,
                    detected_at,
                    new.status,
                )
            )
        elif old is None:
            events.append(
                job_event(
                    EventType.JOB_DISCOVERED,
                    discovered_id(new.id),
                    None,
                    new,
                    detected_at,
                    new.status,
                )
            )
        elif old.status != new.status:
            event_id = status_changed_id(new.id, new.seq, old.status, new.status)
            events.append(
                job_event(
                    EventType.JOB_STATUS_CHANGED, event_id, old.status, new, detected_at, new.status
                )
            )
    for job_id in changes.removals:
        old = snapshot[job_id]
        gone = replace(old, seq=old.seq + 1)
        events.append(
            job_event(
                EventType.JOB_VANISHED,
                vanished_id(job_id, gone.seq),
                old.status,
                gone,
                detected_at,
                None,
            )
        )
    upserts = {j.id: j for j in changes.upserts}
    touched = {j.batch_id for j in changes.upserts}
    touched |= {snapshot[i].batch_id for i in (*upserts, *changes.removals) if i in snapshot}
    events.extend(
        _completed_batches(snapshot, upserts, set(changes.removals), touched, detected_at)
    )
    return tuple(events)


def _completed_batches(
    snapshot: Mapping[str, JobState],
    upserts: Mapping[str, JobState],
    removals: set[str],
    touched: Iterable[str],
    detected_at: datetime,
) -> list[Event]:
    """`batch.completed` for each touched batch that is now wholly terminal but was not before."""
    before: dict[str, list[JobState]] = {b: [] for b in touched}
    for job in snapshot.values():
        if job.batch_id in before:
            before[job.batch_id].append(job)
    after: dict[str, list[JobState]] = {b: [] for b in touched}
    for jobs in before.values():
        for job in jobs:
            final = upserts.get(job.id, job)
            if job.id not in removals and final.batch_id == job.batch_id:
                after[job.batch_id].append(final)
    for job in upserts.values():
        old = snapshot.get(job.id)
        if old is None or old.batch_id != job.batch_id:
            after[job.batch_id].append(job)  # new to this batch
    events = []
    for batch_id in sorted(touched):
        old_jobs, new_jobs = before[batch_id], after[batch_id]
        if not new_jobs or not all(is_terminal(j.status) for j in new_jobs):
            continue
        was_done = (
            old_jobs
            and len(old_jobs) == len(new_jobs)
            and all(is_terminal(j.status) for j in old_jobs)
        )
        if was_done:
            continue
        counts = dict(sorted(Counter(j.status for j in new_jobs).items()))
        started = min(j.first_seen_at for j in new_jobs)
        finished = max(j.changed_at for j in new_jobs)
        events.append(
            Event(
                id=batch_completed_id(batch_id, len(new_jobs)),
                type=EventType.BATCH_COMPLETED,
                detected_at=detected_at,
                batch=EventBatch(
                    id=batch_id, counts=counts, duration_s=max(0.0, finished - started)
                ),
            )
        )
    return events


def job_event(
    type_: EventType,
    event_id: str,
    from_status: str | None,
    job: JobState,
    detected_at: datetime,
    to_status: str | None,
) -> Event:
    return Event(
        id=event_id,
        type=type_,
        detected_at=detected_at,
        from_status=from_status,
        to_status=to_status,
        job=EventJob(
            id=job.id,
            batch_id=job.batch_id,
            status=job.status,
            template_file_id=job.template_file_id,
            output_file_id=job.output_file_id,
            output_type=job.output_type,
            created_by_id=job.created_by_id,
            errors=job.errors,
            warnings=job.warnings,
        ),
    )
