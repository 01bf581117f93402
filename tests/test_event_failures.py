"""A job's failure texts and creator travel from Box's listing into the snapshot, the events and
the webhook wire body (added keys `job.created_by_id`, `job.failures`)."""

from __future__ import annotations

from monitor.box.models import DocGenJobFull
from monitor.diff import diff
from monitor.model import Observation
from monitor.poller import job_state
from tests.test_box_models import full_job, raw


def test_failures_and_creator_reach_the_wire_body() -> None:
    body = full_job(status="failed", output_file=None, output_file_version=None,
                    failures={"errors": ["Tag <!channel> has no value"], "warnings": ["w"]})
    state = job_state(DocGenJobFull.model_validate_json(raw(body)))
    assert (state.errors, state.warnings, state.created_by_id) == (
        ("Tag <!channel> has no value",), ("w",), "11446498")
    [event] = diff({}, Observation((state,), complete=True, observed_at=1.0), 1.0).events[:1]
    job = event.wire()["job"]
    assert job["created_by_id"] == "11446498"
    assert job["failures"] == {"errors": ["Tag <!channel> has no value"], "warnings": ["w"]}


def test_a_job_without_failures_has_null_failures_on_the_wire() -> None:
    state = job_state(DocGenJobFull.model_validate_json(raw(full_job())))
    assert (state.errors, state.warnings) == ((), ())
    [event] = diff({}, Observation((state,), complete=True, observed_at=1.0), 1.0).events[:1]
    assert event.wire()["job"]["failures"] is None


def test_a_change_of_failure_texts_alone_updates_the_snapshot_without_an_event() -> None:
    before = job_state(DocGenJobFull.model_validate_json(raw(full_job(status="failed"))))
    seen = diff({}, Observation((before,), complete=True, observed_at=1.0), 1.0)
    stored = seen.changes.upserts[0]
    after = job_state(DocGenJobFull.model_validate_json(raw(
        full_job(status="failed", failures={"errors": ["late text"], "warnings": []}))))
    again = diff({stored.id: stored}, Observation((after,), complete=True, observed_at=2.0), 2.0)
    assert again.events == ()
    assert again.changes.upserts[0].errors == ("late text",)
