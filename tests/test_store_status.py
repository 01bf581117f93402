"""The `StatusReader` contract (the status page's reads), over every backend: batch summaries,
recent failures, notifier activity. Same fixtures as `tests/test_store_contract.py`."""

from __future__ import annotations

from dataclasses import replace

from monitor.model import SnapshotChanges
from monitor.store.base import BatchSummary, Store
from tests.test_store_contract import T0, job, routed


async def test_batch_summaries_count_jobs_per_status_and_skip_unknown_batches(
    store: Store,
) -> None:
    jobs = (
        job("j1", "b1", "pending", first_seen_at=T0 + 5, changed_at=T0 + 5,
            created_at="2027-01-15T12:00:05Z"),
        job("j2", "b1", "pending", first_seen_at=T0, changed_at=T0 + 1,
            created_at="2027-01-15T12:00:00Z"),
        job("j3", "b1", "failed", first_seen_at=T0 + 2, changed_at=T0 + 9),
        job("j4", "b2", "completed", first_seen_at=T0, changed_at=T0),
    )
    await store.commit(SnapshotChanges(upserts=jobs), [])

    summaries = await store.batch_summaries(["b1", "nope", "b1"])

    assert summaries == {
        "b1": BatchSummary(
            batch_id="b1", counts={"pending": 2, "failed": 1}, template_file_id="t1",
            output_type="pdf", first_seen_at=T0, changed_at=T0 + 9,
            created_at="2027-01-15T12:00:00Z",
        )
    }
    assert summaries["b1"].jobs == 3
    assert await store.batch_summaries([]) == {}


async def test_recent_failures_are_failed_or_completed_with_error_jobs_latest_first(
    store: Store,
) -> None:
    jobs = (
        job("old", status="failed", changed_at=T0 - 100, errors=("x",)),
        job("f1", status="failed", changed_at=T0 + 1, errors=("The tag 'a' was not provided",)),
        job("w1", status="completed_with_error", changed_at=T0 + 3, warnings=("font",)),
        job("ok", status="completed", changed_at=T0 + 5),
        job("run", status="submitted", changed_at=T0 + 6),
        job("f2", status="failed", changed_at=T0 + 2),
    )
    await store.commit(SnapshotChanges(upserts=jobs), [])

    recent = await store.recent_failures(since=T0, limit=10)

    assert [j.id for j in recent] == ["w1", "f2", "f1"]
    assert recent[2].errors == ("The tag 'a' was not provided",)
    assert recent[0].warnings == ("font",)
    assert [j.id for j in await store.recent_failures(since=T0, limit=2)] == ["w1", "f2"]


async def test_notifier_activity_says_when_each_notifier_last_delivered_and_its_last_error(
    store: Store,
) -> None:
    await store.commit(
        SnapshotChanges(),
        [routed("e1", "slack", "mail"), routed("e2", "slack", "mail"), routed("e3", "hook")],
        now=T0,
    )
    await store.mark_delivered("e1", "slack")
    await store.mark_failed("e1", "mail", "smtp: 421 try later", T0 + 60, now=T0 + 1)
    await store.mark_failed("e2", "mail", "smtp: 550 <b>no</b>", None, now=T0 + 2)

    activity = await store.notifier_activity()

    assert set(activity) == {"slack", "mail"}  # "hook" has neither
    assert activity["slack"].last_delivered_at is not None
    assert activity["slack"].last_error is None
    assert activity["mail"].last_delivered_at is None
    assert activity["mail"].last_error in {"smtp: 421 try later", "smtp: 550 <b>no</b>"}
    assert activity["mail"].last_error_at is not None


async def test_an_error_settled_by_a_later_delivery_is_no_longer_the_last_error(
    store: Store,
) -> None:
    await store.commit(SnapshotChanges(), [routed("e1", "hook")], now=T0)
    await store.mark_failed("e1", "hook", "502 from receiver", T0 + 1, now=T0)
    assert (await store.notifier_activity())["hook"].last_error == "502 from receiver"

    await store.mark_delivered("e1", "hook")

    activity = (await store.notifier_activity())["hook"]
    assert activity.last_error is None
    assert activity.last_delivered_at is not None


async def test_a_job_changed_again_leaves_the_recent_failures(store: Store) -> None:
    failed = job("j1", status="failed", changed_at=T0, errors=("boom",))
    await store.commit(SnapshotChanges(upserts=(failed,)), [])
    await store.commit(
        SnapshotChanges(upserts=(replace(failed, status="completed", changed_at=T0 + 1),)), []
    )
    assert await store.recent_failures(since=0.0, limit=10) == []
