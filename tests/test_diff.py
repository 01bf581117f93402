"""The diff is a pure function; these tests state its contract, mostly as properties."""

from __future__ import annotations

from dataclasses import fields as dataclass_fields
from dataclasses import replace

from hypothesis import given, settings
from hypothesis import strategies as st

from monitor.diff import Diff, diff, drop_regressions
from monitor.model import EventType, JobState, Observation, is_terminal

STATUSES = ["pending", "submitted", "completed", "completed_with_error", "failed", "paused_new"]
NOW = 1_800_000_000.0


def job(job_id: str, status: str, batch_id: str = "b1", **kw: object) -> JobState:
    return JobState(
        id=job_id, batch_id=batch_id, status=status, template_file_id="t1", output_type="pdf", **kw
    )  # type: ignore[arg-type]


def apply(snapshot: dict[str, JobState], result: Diff) -> dict[str, JobState]:
    new = dict(snapshot)
    for row in result.changes.upserts:
        new[row.id] = row
    for job_id in result.changes.removals:
        del new[job_id]
    return new


def statuses_after_events(snapshot: dict[str, JobState], result: Diff) -> dict[str, str]:
    """Replays only the events: what a receiver that saw every event believes."""
    seen = {j.id: j.status for j in snapshot.values()}
    for event in result.events:
        assert event.job is not None or event.type is EventType.BATCH_COMPLETED
        if event.type in (
            EventType.JOB_DISCOVERED, EventType.JOB_STATUS_CHANGED, EventType.JOB_REAPPEARED
        ):
            assert event.job is not None and event.to_status is not None
            seen[event.job.id] = event.to_status
        elif event.type is EventType.JOB_VANISHED:
            assert event.job is not None
            del seen[event.job.id]
    return seen


job_ids = st.sampled_from([f"j{i}" for i in range(12)])
batch_ids = st.sampled_from(["b1", "b2", "b3"])
states = st.builds(job, job_ids, st.sampled_from(STATUSES), batch_ids)
snapshots = st.lists(states, max_size=12).map(
    lambda js: {j.id: replace(j, seq=1, first_seen_at=NOW - 100) for j in js}
)
observations = st.builds(
    lambda js, complete: Observation(tuple(js), complete, NOW),
    st.lists(states, max_size=12),
    st.booleans(),
)


@given(snapshots, observations)
@settings(max_examples=300)
def test_old_snapshot_plus_events_is_new_snapshot(
    snapshot: dict[str, JobState], observation: Observation
) -> None:
    result = diff(snapshot, observation, NOW)
    new = apply(snapshot, result)
    assert statuses_after_events(snapshot, result) == {i: j.status for i, j in new.items()}


@given(snapshots, observations)
@settings(max_examples=300)
def test_no_event_without_a_change(snapshot: dict[str, JobState], observation: Observation) -> None:
    result = diff(snapshot, observation, NOW)
    for event in result.events:
        if event.type is EventType.JOB_STATUS_CHANGED:
            assert event.from_status != event.to_status
        if event.type is EventType.JOB_DISCOVERED:
            assert event.job is not None and event.job.id not in snapshot
        if event.type is EventType.JOB_VANISHED:
            assert observation.complete
            assert event.job is not None and event.job.id not in {j.id for j in observation.jobs}
    unchanged = Observation(tuple(snapshot.values()), observation.complete, NOW)
    assert diff(snapshot, unchanged, NOW).events == ()


@given(snapshots, observations)
@settings(max_examples=300)
def test_diffing_the_same_observation_twice_yields_nothing_the_second_time(
    snapshot: dict[str, JobState], observation: Observation
) -> None:
    first = diff(snapshot, observation, NOW)
    second = diff(apply(snapshot, first), observation, NOW + 5)
    assert second.events == ()
    assert second.changes.upserts == () and second.changes.removals == ()


@given(snapshots, observations)
@settings(max_examples=200)
def test_event_ids_are_stable_and_unique(
    snapshot: dict[str, JobState], observation: Observation
) -> None:
    """The same change yields the same id, even detected at another time (a replay)."""
    first = diff(snapshot, observation, NOW)
    replay = diff(snapshot, observation, NOW + 60)
    assert [e.id for e in first.events] == [e.id for e in replay.events]
    assert len({e.id for e in first.events}) == len(first.events)


@given(snapshots, observations)
@settings(max_examples=200)
def test_batch_completed_exactly_when_a_batch_becomes_wholly_terminal(
    snapshot: dict[str, JobState], observation: Observation
) -> None:
    result = diff(snapshot, observation, NOW)
    new = apply(snapshot, result)
    completed = {
        e.batch.id: e.batch
        for e in result.events
        if e.type is EventType.BATCH_COMPLETED and e.batch is not None
    }
    for batch_id, batch in completed.items():
        jobs = [j for j in new.values() if j.batch_id == batch_id]
        assert jobs and all(is_terminal(j.status) for j in jobs)
        assert sum(batch.counts.values()) == len(jobs)
    for batch_id in {j.batch_id for j in new.values()} - set(completed):
        jobs_new = [j for j in new.values() if j.batch_id == batch_id]
        jobs_old = [j for j in snapshot.values() if j.batch_id == batch_id]
        now_done = all(is_terminal(j.status) for j in jobs_new)
        was_done = bool(jobs_old) and all(is_terminal(j.status) for j in jobs_old)
        assert not now_done or (was_done and len(jobs_old) == len(jobs_new))


def test_status_change_event_carries_both_statuses_and_a_sequenced_id() -> None:
    snapshot = {"j1": job("j1", "pending", seq=1, first_seen_at=NOW - 10)}
    result = diff(snapshot, Observation((job("j1", "submitted"),), False, NOW), NOW)
    (event,) = result.events
    assert event.type is EventType.JOB_STATUS_CHANGED
    assert (event.from_status, event.to_status) == ("pending", "submitted")
    assert event.id == "j1:2:pending:submitted"
    assert result.changes.upserts[0].seq == 2
    assert result.changes.upserts[0].first_seen_at == NOW - 10


def test_a_partial_observation_never_declares_a_job_vanished() -> None:
    snapshot = {"j1": job("j1", "pending", seq=1), "j2": job("j2", "pending", seq=1)}
    partial = diff(snapshot, Observation((job("j1", "pending"),), False, NOW), NOW)
    assert partial.events == () and partial.changes.removals == ()
    complete = diff(snapshot, Observation((job("j1", "pending"),), True, NOW), NOW)
    (event,) = complete.events
    assert event.type is EventType.JOB_VANISHED and event.id == "j2:2:vanished"
    assert event.from_status == "pending" and event.to_status is None
    assert complete.changes.removals == ("j2",)


def test_batch_completed_counts_each_outcome_once() -> None:
    snapshot = {
        "j1": job("j1", "completed", seq=2, first_seen_at=NOW - 30, changed_at=NOW - 5),
        "j2": job("j2", "submitted", seq=1, first_seen_at=NOW - 30),
        "j3": job("j3", "failed", seq=2, first_seen_at=NOW - 30),
    }
    result = diff(snapshot, Observation((job("j2", "completed_with_error"),), False, NOW), NOW)
    batch_events = [e for e in result.events if e.type is EventType.BATCH_COMPLETED]
    assert len(batch_events) == 1
    batch = batch_events[0].batch
    assert batch is not None
    assert batch.counts == {"completed": 1, "completed_with_error": 1, "failed": 1}
    assert batch.duration_s == 30.0
    assert batch_events[0].id == "b1:completed:3"


def test_unknown_status_is_kept_and_is_not_terminal() -> None:
    result = diff({}, Observation((job("j1", "paused_new"),), True, NOW), NOW)
    assert [e.type for e in result.events] == [EventType.JOB_DISCOVERED]
    assert result.changes.upserts[0].status == "paused_new"


def test_a_silent_field_change_is_stored_but_not_announced() -> None:
    snapshot = {"j1": job("j1", "completed", seq=2)}
    seen = job("j1", "completed", output_file_id="f9")
    result = diff(snapshot, Observation((seen,), False, NOW), NOW)
    assert result.events == ()
    assert result.changes.upserts[0].output_file_id == "f9"
    assert result.changes.upserts[0].seq == 2


def test_a_standard_variant_read_keeps_the_stored_creator_and_creation_time() -> None:
    """Batch and single-job reads carry no creator: routing on the creator must still work."""
    snapshot = {"j1": job("j1", "submitted", seq=2, created_by_id="u7",
                          created_at="2026-11-28T09:00:00-08:00")}
    result = diff(snapshot, Observation((job("j1", "failed"),), False, NOW), NOW)
    (row,) = result.changes.upserts
    assert (row.created_by_id, row.created_at) == ("u7", "2026-11-28T09:00:00-08:00")
    event = next(e for e in result.events if e.type is EventType.JOB_STATUS_CHANGED)
    assert event.job is not None and event.job.created_by_id == "u7"


def test_a_job_seen_again_after_its_vanish_reappears_with_a_new_event_id() -> None:
    """Reported vanished at seq 3, it is announced again (never swallowed as a repeat of its
    first discovery), and a second vanish and return get ids of their own."""
    back = diff({}, Observation((job("j1", "failed"),), False, NOW), NOW, vanished={"j1": 3})
    (event,) = [e for e in back.events if e.type is not EventType.BATCH_COMPLETED]
    assert event.type is EventType.JOB_REAPPEARED
    assert event.id == "j1:4:reappeared" and event.to_status == "failed"
    (row,) = back.changes.upserts
    assert row.seq == 4 and row.first_seen_at == NOW
    gone = diff({"j1": row}, Observation((), True, NOW + 1), NOW + 1)
    assert [e.id for e in gone.events] == ["j1:5:vanished"]
    again = diff({}, Observation((job("j1", "failed"),), False, NOW + 2), NOW + 2,
                 vanished={"j1": 5})
    assert [e.id for e in again.events if e.job] == ["j1:6:reappeared"]


def test_a_job_never_vanished_is_discovered_as_before() -> None:
    result = diff({}, Observation((job("j1", "pending"),), False, NOW), NOW, vanished={"j2": 4})
    assert [(e.type, e.id) for e in result.events] == [
        (EventType.JOB_DISCOVERED, "j1:discovered")
    ]


def test_a_listing_behind_a_committed_terminal_status_is_dropped_not_diffed() -> None:
    """Terminal back to non-terminal is a stale listing; terminal to terminal is still news."""
    snapshot = {
        "j1": job("j1", "completed", seq=3),
        "j2": job("j2", "completed", seq=3),
        "j3": job("j3", "submitted", seq=2),
    }
    listed = [job("j1", "submitted"), job("j2", "failed"), job("j3", "pending"), job("j4", "x")]
    kept, behind = drop_regressions(snapshot, listed)
    assert behind == ["j1"]
    assert [j.id for j in kept] == ["j2", "j3", "j4"]


def test_booked_is_replace_of_the_bookkeeping_fields_and_keeps_every_other_field() -> None:
    """`JobState.booked` builds the row positionally (for speed): every field, including one
    added later, must come through as `dataclasses.replace` would carry it."""
    values: dict[str, object] = {}
    for number, f in enumerate(dataclass_fields(JobState)):
        values[f.name] = (
            (f"text{number}",) if f.name in ("errors", "warnings")
            else float(number) if f.type == "float"
            else number if f.type == "int"
            else f"{f.name}-{number}"
        )
    job = JobState(**values)  # type: ignore[arg-type]
    assert job.booked(91, 92.0, 93.0) == replace(job, seq=91, first_seen_at=92.0, changed_at=93.0)
