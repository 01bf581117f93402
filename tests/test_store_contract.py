"""The `Store` contract: every backend passes this suite unchanged.

Tests speak only the `Store` interface (no SQL, no paths); the `store_backend` fixture in
`tests/conftest.py` runs each test over every backend in `tests/store_fixtures.py` on a fresh
database and fails the test if a connection is left open afterwards."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone
from typing import TYPE_CHECKING

import pytest

from monitor.errors import SchemaTooNew, StoreError
from monitor.model import Event, EventBatch, EventJob, EventType, JobState, SnapshotChanges
from monitor.store.base import (
    MAX_ERROR_CHARS,
    OutboxState,
    PendingEdit,
    RoutedEvent,
    Store,
    TableChunk,
    ThreadRef,
)
from monitor.store.rows import JOB_COLUMNS, ROW_COLUMNS, fingerprint, job_to_row, observed_of

if TYPE_CHECKING:  # the fixture supplies it; no runtime import keeps plain `pytest` working
    from tests.store_fixtures import StoreBackend

T0 = 1_800_000_000.0
LEASE_S = 30.0
ZERO_COUNTS = dict.fromkeys(OutboxState, 0)


def job(job_id: str, batch_id: str = "b1", status: str = "pending", **kw: object) -> JobState:
    return JobState(
        id=job_id, batch_id=batch_id, status=status, template_file_id="t1", output_type="pdf", **kw
    )  # type: ignore[arg-type]


def event(event_id: str, batch_id: str = "b1") -> Event:
    job_id = event_id.split(":")[0]
    return Event(
        id=event_id,
        type=EventType.JOB_STATUS_CHANGED,
        detected_at=datetime(2027, 1, 15, 12, 0, tzinfo=UTC),
        from_status="pending",
        to_status="completed",
        job=EventJob(
            id=job_id,
            batch_id=batch_id,
            status="completed",
            template_file_id="t1",
            output_file_id=None,
            output_type="pdf",
        ),
    )


def routed(event_id: str, *notifiers: str) -> RoutedEvent:
    return RoutedEvent(event(event_id), notifiers)


async def emit(
    store: Store, *event_ids: str, notifiers: tuple[str, ...] = ("slack",), now: float = T0
) -> int:
    """Commit events only (no snapshot change), each routed to `notifiers`."""
    return await store.commit(
        SnapshotChanges(), [routed(e, *notifiers) for e in event_ids], now=now
    )


async def dead_row(store: Store, event_id: str, notifier: str = "slack") -> None:
    """Commit an event and take its row for `notifier` to the dead state."""
    await store.commit(SnapshotChanges(), [routed(event_id, notifier)], now=T0)
    await store.mark_failed(event_id, notifier, "gone for good", None)


def ids(entries: list[object]) -> list[str]:
    return [e.event.id for e in entries]  # type: ignore[attr-defined]


# -- lifecycle --------------------------------------------------------------------------------


async def test_ping_answers_while_open_and_raises_store_error_after_close(store: Store) -> None:
    await store.ping()
    await store.close()
    with pytest.raises(StoreError):
        await store.ping()


async def test_close_is_idempotent(store: Store) -> None:
    await store.close()
    await store.close()


async def test_every_operation_on_an_unopened_or_closed_store_raises_store_error(
    store_backend: StoreBackend,
) -> None:
    for store in (store_backend.build(), store_backend.build()):
        if store is store_backend.built[1]:
            await store.open()
            await store.close()
        with pytest.raises(StoreError):
            await store.load_snapshot()
        with pytest.raises(StoreError):
            await store.commit(SnapshotChanges(upserts=(job("j1"),)), [])
        with pytest.raises(StoreError):
            await store.claim_due("slack", T0, 10, LEASE_S)
        with pytest.raises(StoreError):
            await store.get_meta("k")


async def test_async_with_opens_and_closes(store_backend: StoreBackend) -> None:
    async with store_backend.build() as store:
        await store.ping()
    with pytest.raises(StoreError):
        await store.ping()


# -- schema -----------------------------------------------------------------------------------


async def test_open_migrates_an_empty_database(store_backend: StoreBackend) -> None:
    """A database that exists but holds nothing (an empty file, an empty schema) is set up."""
    store_backend.prepare_empty()
    async with store_backend.build() as store:
        assert await store.load_snapshot() == {}
        assert await store.commit(SnapshotChanges(upserts=(job("j1"),)), [routed("e1", "a")]) == 1
        assert list(await store.load_snapshot()) == ["j1"]


async def test_open_upgrades_a_database_left_by_the_previous_build(
    store_backend: StoreBackend,
) -> None:
    """The previous build's database is migrated in place and keeps what it held."""
    # The older build writes only an event: this build's job rows carry columns it lacks.
    async with store_backend.build(schema_delta=-1) as older:
        if store_backend.schema_version > 1:
            await older.commit(SnapshotChanges(), [routed("e0", "a")])
    async with store_backend.build() as store:
        await store.commit(SnapshotChanges(upserts=(job("j1"),)), [routed("e1", "a")])
    async with store_backend.build() as store:
        assert set(await store.load_snapshot()) == {"j1"}
        expected = ["e0", "e1"] if store_backend.schema_version > 1 else ["e1"]
        assert ids(await store.list_outbox(OutboxState.PENDING)) == expected


async def test_a_database_written_by_a_newer_build_is_refused(
    store_backend: StoreBackend,
) -> None:
    """Opening refuses with SchemaTooNew, names both versions, and leaves nothing open."""
    async with store_backend.build(schema_delta=1) as newer:
        await newer.commit(SnapshotChanges(upserts=(job("j1"),)), [])
    store = store_backend.build()
    with pytest.raises(SchemaTooNew) as refused:
        await store.open()
    known = store_backend.schema_version
    assert f"version {known + 1} is newer" in str(refused.value)
    assert f"({known})" in str(refused.value)
    with pytest.raises(StoreError):
        await store.ping()


# -- snapshot ---------------------------------------------------------------------------------


async def test_job_state_round_trips_every_field_including_none_and_unicode(store: Store) -> None:
    full = JobState(
        id="jöb-1 ✓",
        batch_id="bätch-1",
        status="completed_with_error",
        template_file_id="tmpl-ü",
        output_type="docx",
        output_file_id="out-日本",
        created_at="2027-01-15T12:00:00.123456+09:00",
        created_by_id="ユーザー",
        seq=7,
        first_seen_at=T0 + 0.123456,
        changed_at=T0 + 99.654321,
        errors=("Tag <!channel> has no value", "ünï & \"quoted\""),
        warnings=("w1",),
    )
    sparse = JobState(
        id="j2",
        batch_id="b2",
        status="a-status-this-build-does-not-know",
        template_file_id="t",
        output_type="pdf",
    )
    await store.commit(SnapshotChanges(upserts=(full, sparse)), [])
    assert await store.load_snapshot() == {full.id: full, sparse.id: sparse}


async def test_commit_upsert_replaces_a_changed_row(store: Store) -> None:
    before = job("j1", status="pending", seq=1)
    after = replace(before, status="completed", output_file_id="f9", seq=2, changed_at=T0)
    await store.commit(SnapshotChanges(upserts=(before,)), [])
    await store.commit(SnapshotChanges(upserts=(after,)), [])
    assert await store.load_snapshot() == {"j1": after}


async def test_commit_removals_delete_jobs_and_ignore_unknown_ids(store: Store) -> None:
    await store.commit(SnapshotChanges(upserts=(job("j1"), job("j2"), job("j3"))), [])
    await store.commit(SnapshotChanges(removals=("j1", "j3", "never-seen")), [])
    assert list(await store.load_snapshot()) == ["j2"]


async def test_load_batches_returns_every_job_of_the_given_batches_only(store: Store) -> None:
    """Asked for more batches than fit in one query, it still answers for every one of them."""
    jobs = tuple(job(f"j{i}", batch_id=f"b{i % 1500}") for i in range(3000))
    await store.commit(SnapshotChanges(upserts=jobs), [])
    wanted = {f"b{i}" for i in range(0, 1500, 2)} | {"unknown-batch"}
    loaded = await store.load_batches(iter(wanted))
    assert loaded == {j.id: j for j in jobs if j.batch_id in wanted}
    assert len(loaded) == 1500
    assert await store.load_batches([]) == {}


async def test_status_counts_counts_snapshot_jobs_per_status(store: Store) -> None:
    assert await store.status_counts() == {}
    statuses = ["pending", "pending", "failed", "brand_new_status"]
    jobs = tuple(job(f"j{i}", status=s) for i, s in enumerate(statuses))
    await store.commit(SnapshotChanges(upserts=jobs), [])
    assert await store.status_counts() == {"pending": 2, "failed": 1, "brand_new_status": 1}


# -- meta -------------------------------------------------------------------------------------


async def test_meta_is_set_by_commit_and_overwritten_by_a_later_one(store: Store) -> None:
    assert await store.get_meta("baseline_at") is None
    await store.commit(SnapshotChanges(), [], meta={"baseline_at": "1", "note": "ünï ✓"})
    await store.commit(SnapshotChanges(), [], meta={"baseline_at": "2"})
    assert await store.get_meta("baseline_at") == "2"
    assert await store.get_meta("note") == "ünï ✓"
    assert await store.get_meta("never-set") is None


# -- commit: events and the outbox -----------------------------------------------------------


async def test_event_round_trips_every_field_through_the_outbox(store: Store) -> None:
    job_event = Event(
        id="jöb-1:pending:failed",
        type=EventType.JOB_STATUS_CHANGED,
        detected_at=datetime(2027, 1, 15, 12, 0, 0, 123456, tzinfo=timezone(timedelta(hours=9))),
        from_status="pending",
        to_status="failed",
        job=EventJob(
            id="jöb-1",
            batch_id="bätch",
            status="failed",
            template_file_id="tmpl",
            output_file_id=None,
            output_type="pdf",
            created_by_id="ユーザー",
        ),
        extra={"reason": "<b>ünïcødé</b> @channel", "nested": {"n": [1, 2.5, None, True]}},
    )
    batch_event = Event(
        id="bätch:completed",
        type=EventType.BATCH_COMPLETED,
        detected_at=datetime(2027, 1, 15, 12, 0, tzinfo=UTC),
        batch=EventBatch(id="bätch", counts={"completed": 3, "failed": 1}, duration_s=12.5),
    )
    await store.commit(
        SnapshotChanges(),
        [RoutedEvent(job_event, ("slack",)), RoutedEvent(batch_event, ("slack",))],
    )
    claimed = await store.claim_due("slack", T0 + 1e9, 10, LEASE_S)
    assert [c.event for c in claimed] == [job_event, batch_event]
    listed = await store.list_outbox(OutboxState.CLAIMED)
    assert [e.event for e in listed] == [job_event, batch_event]


async def test_commit_adds_one_pending_row_per_event_and_notifier_and_returns_their_number(
    store: Store,
) -> None:
    added = await store.commit(
        SnapshotChanges(), [routed("e1", "slack", "audit"), routed("e2", "audit")], now=T0
    )
    assert added == 3
    pending = await store.list_outbox(OutboxState.PENDING)
    assert [(p.event.id, p.notifier) for p in pending] == [
        ("e1", "audit"),
        ("e1", "slack"),
        ("e2", "audit"),
    ]
    assert all(p.attempts == 0 and p.last_error is None for p in pending)
    assert all(p.next_attempt_at == T0 for p in pending)


async def test_replayed_event_id_never_yields_a_second_outbox_row(store: Store) -> None:
    """A replay after a crash re-commits the same event id: nothing new, even for new notifiers."""
    assert await emit(store, "e1", notifiers=("slack",)) == 1
    claimed = await store.claim_due("slack", T0, 10, LEASE_S)
    await store.mark_delivered("e1", claimed[0].notifier)
    assert await emit(store, "e1", notifiers=("slack", "audit")) == 0
    assert await store.outbox_counts() == {"slack": {**ZERO_COUNTS, OutboxState.DELIVERED: 1}}
    assert await store.claim_due("slack", T0 + 1e6, 10, LEASE_S) == []


async def test_same_event_twice_in_one_commit_yields_one_row_per_notifier(store: Store) -> None:
    added = await store.commit(
        SnapshotChanges(), [routed("e1", "slack"), routed("e1", "slack", "audit")]
    )
    assert added == 2
    counts = await store.outbox_counts()
    assert counts == {n: {**ZERO_COUNTS, OutboxState.PENDING: 1} for n in ("slack", "audit")}


async def test_event_routed_to_no_notifier_is_recorded_and_never_gets_rows_later(
    store: Store,
) -> None:
    assert await emit(store, "e1", notifiers=()) == 0
    assert await emit(store, "e1", notifiers=("slack",)) == 0
    assert await store.outbox_counts() == {}


async def test_commit_is_atomic_when_a_row_is_rejected_midway(store: Store) -> None:
    """An outbox row with an empty notifier name fails the commit after its snapshot rows,
    removals and events were written: all of it is rolled back, meta included."""
    j1, j2 = job("j1", status="pending"), job("j2")
    await store.commit(
        SnapshotChanges(upserts=(j1, j2)), [routed("e0", "slack")], meta={"k": "old"}, now=T0
    )
    with pytest.raises(StoreError):
        await store.commit(
            SnapshotChanges(upserts=(replace(j1, status="failed"), job("j3")), removals=("j2",)),
            [routed("e1", "slack"), routed("e2", "slack", "")],
            meta={"k": "new", "k2": "x"},
            now=T0 + 1,
        )
    assert await store.load_snapshot() == {"j1": j1, "j2": j2}
    assert (await store.get_meta("k"), await store.get_meta("k2")) == ("old", None)
    assert await store.outbox_counts() == {"slack": {**ZERO_COUNTS, OutboxState.PENDING: 1}}
    # The rejected commit's events were not recorded either: they can still be committed.
    assert await emit(store, "e1", "e2") == 2
    # And the store is usable after the failure.
    await store.ping()


async def test_commit_cancelled_mid_flight_still_lands_whole(
    store_backend: StoreBackend, store: Store
) -> None:
    """Cancelling the caller mid-commit raises CancelledError in the caller, yet the commit is
    recorded whole (never half): the snapshot, its events and meta are all there."""
    jobs = tuple(job(f"j{i:05d}", batch_id=f"b{i // 100}") for i in range(20_000))
    task = asyncio.create_task(
        store.commit(
            SnapshotChanges(upserts=jobs), [routed("e1", "slack")], meta={"k": "v"}, now=T0
        )
    )
    for _ in range(3):  # let the transaction start; 20,000 rows keep it busy well beyond this
        await asyncio.sleep(0)
    assert not task.done()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await store.close()
    async with store_backend.build() as reopened:
        assert len(await reopened.load_snapshot()) == len(jobs)
        assert await reopened.get_meta("k") == "v"
        assert ids(await reopened.list_outbox(OutboxState.PENDING)) == ["e1"]


async def test_close_waits_for_a_commit_in_flight(store: Store) -> None:
    jobs = tuple(job(f"j{i:05d}") for i in range(5_000))
    task = asyncio.create_task(store.commit(SnapshotChanges(upserts=jobs), [routed("e1", "slack")]))
    await asyncio.sleep(0)
    await store.close()
    assert task.done()
    assert task.result() == 1


async def test_readers_never_see_a_commit_in_flight(store: Store) -> None:
    """Reads racing a commit that ends up rolled back never see any of its rows."""
    jobs = tuple(job(f"j{i:05d}") for i in range(20_000))
    commit = asyncio.create_task(
        store.commit(SnapshotChanges(upserts=jobs), [routed("e1", "slack", "")], meta={"k": "v"})
    )
    seen: list[object] = []
    while not commit.done():
        seen += [await store.load_snapshot(), await store.status_counts()]
        seen += [await store.get_meta("k"), await store.outbox_counts()]
    with pytest.raises(StoreError):
        await commit
    assert len(seen) >= 4
    assert all(observation in ({}, None) for observation in seen)


# -- outbox: claiming -------------------------------------------------------------------------


async def test_claim_due_returns_rows_oldest_event_first(store: Store) -> None:
    """Oldest by commit time, then in the order the events were given to commit (not by id)."""
    await emit(store, "e-c", "e-a", now=T0)
    await emit(store, "e-b", now=T0 + 5)
    claimed = await store.claim_due("slack", T0 + 10, 10, LEASE_S)
    assert ids(claimed) == ["e-c", "e-a", "e-b"]
    assert all(c.state is OutboxState.CLAIMED and c.notifier == "slack" for c in claimed)


async def test_claim_due_takes_at_most_limit_rows(store: Store) -> None:
    await emit(store, "e1", "e2", "e3", "e4", "e5")
    assert ids(await store.claim_due("slack", T0, 2, LEASE_S)) == ["e1", "e2"]
    assert ids(await store.claim_due("slack", T0, 2, LEASE_S)) == ["e3", "e4"]
    assert await store.claim_due("slack", T0, 0, LEASE_S) == []
    assert ids(await store.claim_due("slack", T0, 2, LEASE_S)) == ["e5"]


async def test_claim_due_only_claims_rows_of_its_notifier(store: Store) -> None:
    await emit(store, "e1", notifiers=("slack", "audit"))
    assert [c.notifier for c in await store.claim_due("slack", T0, 10, LEASE_S)] == ["slack"]
    await store.mark_delivered("e1", "slack")
    audit = await store.claim_due("audit", T0, 10, LEASE_S)
    assert [(c.event.id, c.notifier) for c in audit] == [("e1", "audit")]
    assert await store.claim_due("nobody", T0, 10, LEASE_S) == []


async def test_row_is_not_due_before_its_next_attempt_at(store: Store) -> None:
    await emit(store, "e1", now=T0)
    assert await store.claim_due("slack", T0 - 0.001, 10, LEASE_S) == []
    assert ids(await store.claim_due("slack", T0, 10, LEASE_S)) == ["e1"]


async def test_claimed_row_is_not_claimed_again_until_its_lease_expires(store: Store) -> None:
    """An expired lease (a crashed sender) makes the row due again; claiming is not an attempt."""
    await emit(store, "e1")
    assert ids(await store.claim_due("slack", T0, 10, LEASE_S)) == ["e1"]
    assert await store.claim_due("slack", T0 + LEASE_S - 0.001, 10, LEASE_S) == []
    assert await store.next_due_at("slack") == T0 + LEASE_S
    again = await store.claim_due("slack", T0 + LEASE_S, 10, LEASE_S)
    assert ids(again) == ["e1"]
    assert again[0].attempts == 0
    assert await store.next_due_at("slack") == T0 + 2 * LEASE_S


async def test_delivered_row_is_never_claimed_again(store: Store) -> None:
    await emit(store, "e1")
    await store.claim_due("slack", T0, 10, LEASE_S)
    await store.mark_delivered("e1", "slack")
    assert await store.claim_due("slack", T0 + 1e6, 10, LEASE_S) == []
    assert await store.next_due_at("slack") is None
    delivered = await store.list_outbox(OutboxState.DELIVERED)
    assert [(d.event.id, d.attempts, d.last_error) for d in delivered] == [("e1", 1, None)]


async def test_concurrent_claims_never_hand_out_one_row_twice(store: Store) -> None:
    await emit(store, *(f"e{i:02d}" for i in range(10)))
    claims = await asyncio.gather(*(store.claim_due("slack", T0, 3, LEASE_S) for _ in range(5)))
    claimed = [event_id for claim in claims for event_id in ids(claim)]
    assert sorted(claimed) == [f"e{i:02d}" for i in range(10)]


async def test_a_claim_in_job_order_holds_an_event_behind_its_jobs_earlier_one(
    store: Store,
) -> None:
    """With `job_order`, a job's next event is claimable only once the one before it is
    delivered or dead (in flight and in retry both hold it); other jobs go on."""
    await emit(store, "j1:a", "j2:a", "j1:b", "j1:c")
    assert ids(await store.claim_due("slack", T0, 10, LEASE_S, job_order=True)) == [
        "j1:a", "j2:a"]
    assert await store.claim_due("slack", T0, 10, LEASE_S, job_order=True) == []
    await store.mark_delivered("j2:a", "slack")
    await store.mark_failed("j1:a", "slack", "HTTP 500", T0 + 60)
    assert await store.claim_due("slack", T0 + 1, 10, LEASE_S, job_order=True) == []
    assert await store.next_due_at("slack") == T0  # j1:b, due by itself...
    assert await store.next_due_at("slack", job_order=True) == T0 + 60  # ...held behind j1:a
    assert ids(await store.claim_due("slack", T0 + 60, 10, LEASE_S, job_order=True)) == ["j1:a"]
    await store.mark_delivered("j1:a", "slack")
    assert ids(await store.claim_due("slack", T0 + 60, 10, LEASE_S, job_order=True)) == ["j1:b"]
    await store.mark_failed("j1:b", "slack", "gone for good", None)  # dead: holds nothing
    assert ids(await store.claim_due("slack", T0 + 60, 10, LEASE_S, job_order=True)) == ["j1:c"]


async def test_a_claim_without_job_order_takes_every_due_event_of_a_job(store: Store) -> None:
    """Grouped notifiers claim a job's events together (one digest holds them all)."""
    await emit(store, "j1:a", "j1:b")
    assert ids(await store.claim_due("slack", T0, 10, LEASE_S)) == ["j1:a", "j1:b"]


# -- outbox: failures, retries, dead letters --------------------------------------------------


async def test_failed_row_is_retried_only_from_its_next_attempt_at(store: Store) -> None:
    await emit(store, "e1")
    await store.claim_due("slack", T0, 10, LEASE_S)
    await store.mark_failed("e1", "slack", "HTTP 503 ünï", T0 + 60)
    [pending] = await store.list_outbox(OutboxState.PENDING)
    assert (pending.attempts, pending.last_error, pending.next_attempt_at) == (
        1,
        "HTTP 503 ünï",
        T0 + 60,
    )
    assert await store.next_due_at("slack") == T0 + 60
    assert await store.claim_due("slack", T0 + 59.999, 10, LEASE_S) == []
    [retry] = await store.claim_due("slack", T0 + 60, 10, LEASE_S)
    assert (retry.attempts, retry.last_error) == (1, "HTTP 503 ünï")


async def test_failed_row_without_retry_time_goes_dead_and_is_never_due(store: Store) -> None:
    await emit(store, "e1")
    await store.claim_due("slack", T0, 10, LEASE_S)
    await store.mark_failed("e1", "slack", "first", T0 + 1)
    await store.claim_due("slack", T0 + 1, 10, LEASE_S)
    await store.mark_failed("e1", "slack", "last", None)
    [dead] = await store.list_outbox(OutboxState.DEAD)
    assert (dead.event.id, dead.attempts, dead.last_error) == ("e1", 2, "last")
    assert await store.claim_due("slack", T0 + 1e9, 10, LEASE_S) == []
    assert await store.next_due_at("slack") is None
    assert await store.outbox_counts() == {"slack": {**ZERO_COUNTS, OutboxState.DEAD: 1}}


async def test_mark_failed_many_marks_each_row_pending_or_dead_in_one_call(store: Store) -> None:
    """Each row gets its own retry time (None: dead), one more attempt and the error."""
    await emit(store, "e1", "e2", "e3")
    await store.claim_due("slack", T0, 10, LEASE_S)
    await store.mark_failed_many("slack", {"e1": T0 + 60, "e2": None}, "HTTP 500", T0 + 5)
    [retried] = await store.list_outbox(OutboxState.PENDING)
    assert (retried.event.id, retried.attempts, retried.next_attempt_at) == ("e1", 1, T0 + 60)
    assert (retried.last_error, retried.first_failed_at) == ("HTTP 500", T0 + 5)
    [untouched] = await store.list_outbox(OutboxState.CLAIMED)
    assert (untouched.event.id, untouched.attempts, untouched.first_failed_at) == ("e3", 0, None)
    [dead] = await store.list_outbox(OutboxState.DEAD)
    assert (dead.event.id, dead.attempts, dead.first_failed_at) == ("e2", 1, T0 + 5)
    await store.mark_failed_many("slack", {}, "nothing", T0 + 6)  # no rows: no change


async def test_first_failed_at_is_kept_across_failures_and_cleared_by_an_end_of_the_run(
    store: Store,
) -> None:
    """The run of failures starts at the first failure; delivery, throttling and requeue end
    it, so the next failure starts a new run."""
    await emit(store, "e1", "e2", "e3")
    for at in (T0 + 1, T0 + 2):
        await store.mark_failed_many("slack", dict.fromkeys(("e1", "e2", "e3"), at + 10), "x", at)
    rows = await store.list_outbox(OutboxState.PENDING)
    assert {r.event.id: (r.attempts, r.first_failed_at) for r in rows} == {
        e: (2, T0 + 1) for e in ("e1", "e2", "e3")}
    await store.mark_delivered_many("slack", ["e1"])
    await store.mark_throttled("slack", ["e2"], T0 + 100)
    await store.mark_failed_many("slack", {"e3": None}, "x", T0 + 3)
    [delivered] = await store.list_outbox(OutboxState.DELIVERED)
    [throttled] = await store.list_outbox(OutboxState.PENDING)
    assert delivered.first_failed_at is None
    assert (throttled.event.id, throttled.attempts) == ("e2", 2)
    assert (throttled.next_attempt_at, throttled.first_failed_at) == (T0 + 100, None)
    await store.requeue_dead(T0 + 4)
    [requeued] = [r for r in await store.list_outbox(OutboxState.PENDING) if r.event.id == "e3"]
    assert (requeued.attempts, requeued.first_failed_at) == (0, None)
    await store.mark_failed_many("slack", {"e3": T0 + 60}, "x", T0 + 7)
    [again] = [r for r in await store.list_outbox(OutboxState.PENDING) if r.event.id == "e3"]
    assert again.first_failed_at == T0 + 7


async def test_mark_throttled_ignores_delivered_and_dead_rows(store: Store) -> None:
    await emit(store, "e1")
    await dead_row(store, "e2")
    await store.mark_delivered("e1", "slack")
    await store.mark_throttled("slack", ["e1", "e2", "nope"], T0 + 100)
    assert await store.outbox_counts() == {
        "slack": {**ZERO_COUNTS, OutboxState.DELIVERED: 1, OutboxState.DEAD: 1}}


async def test_mark_failed_keeps_a_bounded_prefix_of_a_long_error(store: Store) -> None:
    await emit(store, "e1")
    await store.mark_failed("e1", "slack", "é" * 100_000, T0 + 1)
    [row] = await store.list_outbox(OutboxState.PENDING)
    assert row.last_error is not None
    assert 0 < len(row.last_error) <= MAX_ERROR_CHARS
    assert row.last_error.startswith("é" * (MAX_ERROR_CHARS // 2))


async def test_an_error_text_with_a_nul_byte_is_recorded(store: Store) -> None:
    """A receiver's error body is untrusted bytes: a NUL or an escape in it never fails the
    write that records the failure."""
    await emit(store, "e1")
    await store.mark_failed("e1", "slack", "HTTP 500: \x00\x1b[2J body", T0 + 1)
    [row] = await store.list_outbox(OutboxState.PENDING)
    assert row.attempts == 1 and row.last_error is not None
    assert row.last_error.startswith("HTTP 500: ") and row.last_error.endswith("[2J body")


async def test_mark_failed_never_undoes_a_delivery(store: Store) -> None:
    """A late failure report for a row another attempt delivered leaves it delivered."""
    await emit(store, "e1")
    await store.mark_delivered("e1", "slack")
    await store.mark_failed("e1", "slack", "late", T0 + 1)
    await store.mark_failed("e1", "slack", "later", None)
    assert ids(await store.list_outbox(OutboxState.DELIVERED)) == ["e1"]


async def test_mark_delivered_wins_over_dead(store: Store) -> None:
    """A success reported after the row went dead (a slow first attempt) is the truth."""
    await dead_row(store, "e1")
    await store.mark_delivered("e1", "slack")
    assert await store.outbox_counts() == {"slack": {**ZERO_COUNTS, OutboxState.DELIVERED: 1}}


async def test_marking_an_unknown_row_changes_nothing(store: Store) -> None:
    await emit(store, "e1")
    await store.mark_delivered("nope", "slack")
    await store.mark_failed("e1", "audit", "x", None)
    assert await store.outbox_counts() == {"slack": {**ZERO_COUNTS, OutboxState.PENDING: 1}}


async def test_next_due_at_is_the_earliest_retry_or_lease_expiry(store: Store) -> None:
    assert await store.next_due_at("slack") is None
    await emit(store, "e1", "e2", "e3", now=T0)
    await store.claim_due("slack", T0, 1, LEASE_S)  # e1 claimed until T0 + 30
    await store.mark_failed("e2", "slack", "x", T0 + 100)
    await store.mark_failed("e3", "slack", "x", None)
    assert await store.next_due_at("slack") == T0 + LEASE_S
    await store.mark_failed("e1", "slack", "x", T0 + 200)
    assert await store.next_due_at("slack") == T0 + 100
    assert await store.next_due_at("audit") is None


async def test_outbox_counts_lists_every_state_per_notifier(store: Store) -> None:
    assert await store.outbox_counts() == {}
    await emit(store, "e1", "e2", "e3", "e4", notifiers=("slack", "audit"))
    await store.claim_due("slack", T0, 1, LEASE_S)
    await store.mark_delivered("e2", "slack")
    await store.mark_failed("e3", "slack", "x", None)
    assert await store.outbox_counts() == {
        "slack": {
            OutboxState.PENDING: 1,
            OutboxState.CLAIMED: 1,
            OutboxState.DELIVERED: 1,
            OutboxState.DEAD: 1,
        },
        "audit": {**ZERO_COUNTS, OutboxState.PENDING: 4},
    }


async def test_list_outbox_filters_by_state_and_notifier_oldest_first_up_to_limit(
    store: Store,
) -> None:
    await emit(store, "e3", now=T0)
    await emit(store, "e1", "e2", now=T0 + 1)
    await emit(store, "e0", notifiers=("audit",), now=T0 + 2)
    await store.mark_failed("e2", "slack", "x", None)
    pending = await store.list_outbox(OutboxState.PENDING)
    assert [(p.event.id, p.notifier, p.state) for p in pending] == [
        ("e3", "slack", OutboxState.PENDING),
        ("e1", "slack", OutboxState.PENDING),
        ("e0", "audit", OutboxState.PENDING),
    ]
    assert ids(await store.list_outbox(OutboxState.PENDING, notifier="slack")) == ["e3", "e1"]
    assert ids(await store.list_outbox(OutboxState.PENDING, limit=1)) == ["e3"]
    assert ids(await store.list_outbox(OutboxState.DEAD)) == ["e2"]
    assert await store.list_outbox(OutboxState.DEAD, notifier="audit") == []


async def test_requeue_dead_makes_dead_rows_pending_now_with_attempts_reset(store: Store) -> None:
    await emit(store, "e1", notifiers=("slack", "audit"))
    await dead_row(store, "e2")
    await emit(store, "e3")  # pending: untouched by requeue
    for row in ("e1", "slack"), ("e1", "audit"):
        await store.mark_failed(*row, "x", None)
    assert await store.requeue_dead(T0 + 50, event_id="e1", notifier="slack") == 1
    assert await store.requeue_dead(T0 + 60, notifier="audit") == 1
    assert await store.requeue_dead(T0 + 70) == 1
    assert await store.requeue_dead(T0 + 80) == 0
    pending = await store.list_outbox(OutboxState.PENDING)
    assert sorted((p.event.id, p.notifier, p.attempts, p.next_attempt_at) for p in pending) == [
        ("e1", "audit", 0, T0 + 60),
        ("e1", "slack", 0, T0 + 50),
        ("e2", "slack", 0, T0 + 70),
        ("e3", "slack", 0, T0),
    ]
    assert ids(await store.claim_due("slack", T0 + 70, 10, LEASE_S)) == ["e1", "e2", "e3"]


async def test_drop_dead_deletes_only_dead_rows_and_the_event_stays_known(store: Store) -> None:
    """Dropped rows are gone for good: replaying their event id still mints nothing."""
    await emit(store, "e1")
    await emit(store, "e2", notifiers=("slack", "audit"))
    await emit(store, "e3")
    for row in ("e1", "slack"), ("e2", "slack"), ("e2", "audit"):
        await store.mark_failed(*row, "x", None)
    assert await store.drop_dead(event_id="e2", notifier="audit") == 1
    assert await store.drop_dead(event_id="e1") == 1
    assert await store.drop_dead(notifier="audit") == 0
    assert await store.drop_dead() == 1
    assert await store.outbox_counts() == {"slack": {**ZERO_COUNTS, OutboxState.PENDING: 1}}
    assert await emit(store, "e1", "e2", notifiers=("slack", "audit")) == 0


async def test_prune_removes_old_delivered_rows_and_events_nothing_still_owed(
    store: Store,
) -> None:
    """Only what every notifier has received goes; pending and dead rows keep their event."""
    await emit(store, "e1", "e2", "e3", notifiers=("slack", "audit"))
    for notifier in ("slack", "audit"):
        await store.mark_delivered("e1", notifier)
    await store.mark_delivered("e2", "slack")
    await store.mark_failed("e3", "slack", "x", None)
    assert await store.prune(before=T0 + 86_400) == 1
    assert await store.outbox_counts() == {
        "slack": {**ZERO_COUNTS, OutboxState.DEAD: 1},
        "audit": {**ZERO_COUNTS, OutboxState.PENDING: 2},
    }
    assert ids(await store.list_outbox(OutboxState.PENDING, "audit")) == ["e2", "e3"]
    assert await emit(store, "e2", "e3", notifiers=("slack", "audit")) == 0


# -- notifications: deferral, threads, groups -------------------------------------------------


async def test_defer_puts_claimed_rows_back_due_later_without_an_attempt(store: Store) -> None:
    await emit(store, "e1", "e2", "e3")
    await store.claim_due("slack", T0, 10, LEASE_S)
    await store.defer("slack", ["e1", "e2"], T0 + 10)  # e3 stays claimed until T0 + LEASE_S
    assert await store.next_due_at("slack") == T0 + 10
    assert ids(await store.claim_due("slack", T0 + 9.999, 10, LEASE_S)) == []
    again = await store.claim_due("slack", T0 + 10, 10, LEASE_S)
    assert ids(again) == ["e1", "e2"]
    assert [r.attempts for r in again] == [0, 0]


async def test_defer_never_revives_a_delivered_or_dead_row(store: Store) -> None:
    await emit(store, "e1", "e2")
    await store.claim_due("slack", T0, 10, LEASE_S)
    await store.mark_delivered("e1", "slack")
    await store.mark_failed("e2", "slack", "gone", None)
    await store.defer("slack", ["e1", "e2", "unknown"], T0 + 1)
    assert ids(await store.list_outbox(OutboxState.DELIVERED)) == ["e1"]
    assert ids(await store.list_outbox(OutboxState.DEAD)) == ["e2"]
    assert await store.next_due_at("slack") is None


async def test_release_claims_makes_one_notifiers_claimed_rows_due_now(store: Store) -> None:
    await emit(store, "e1", "e2", "e3", notifiers=("slack", "mail"))
    await store.claim_due("slack", T0, 2, LEASE_S)
    await store.claim_due("mail", T0, 10, LEASE_S)
    assert await store.release_claims("slack", T0 + 1) == 2
    again = await store.claim_due("slack", T0 + 1, 10, LEASE_S)
    assert ids(again) == ["e1", "e2", "e3"] and [r.attempts for r in again] == [0, 0, 0]
    assert await store.claim_due("mail", T0 + 1, 10, LEASE_S) == []  # untouched


async def test_mark_delivered_many_marks_each_row_once(store: Store) -> None:
    await emit(store, "e1", "e2", "e3")
    await store.claim_due("slack", T0, 10, LEASE_S)
    await store.mark_delivered_many("slack", ["e1", "e2", "unknown"])
    await store.mark_delivered_many("slack", ["e1"])  # again: no second attempt counted
    await store.mark_delivered_many("slack", [])
    delivered = await store.list_outbox(OutboxState.DELIVERED)
    assert [(d.event.id, d.attempts) for d in delivered] == [("e1", 1), ("e2", 1)]
    assert ids(await store.list_outbox(OutboxState.CLAIMED)) == ["e3"]


async def test_a_batch_thread_is_saved_once_and_the_first_wins(store: Store) -> None:
    assert await store.get_thread("slack", "b1") is None
    first = ThreadRef("C1", "1800000000.000100")
    assert await store.save_thread("slack", "b1", first) == first
    assert await store.save_thread("slack", "b1", ThreadRef("C1", "1800000000.000200")) == first
    assert await store.get_thread("slack", "b1") == first
    assert await store.get_thread("other", "b1") is None
    assert await store.get_thread("slack", "b2") is None


async def test_group_flush_times_are_kept_per_notifier_and_group(store: Store) -> None:
    assert await store.group_flushed_at("slack", "batch=b1") is None
    await store.set_group_flushed("slack", "batch=b1", T0)
    await store.set_group_flushed("slack", "batch=b1", T0 + 5)
    await store.set_group_flushed("mail", "batch=b1", T0 + 1)
    assert await store.group_flushed_at("slack", "batch=b1") == T0 + 5
    assert await store.group_flushed_at("mail", "batch=b1") == T0 + 1
    assert await store.group_flushed_at("slack", "batch=b2") is None


async def test_prune_forgets_old_threads_and_groups_only(store: Store) -> None:
    import time

    now = time.time()
    await store.save_thread("slack", "b1", ThreadRef("C1", "1.000001"))
    await store.set_group_flushed("slack", "old", now - 100)
    await store.set_group_flushed("slack", "new", now + 100)
    await store.prune(before=now - 3600)
    assert await store.get_thread("slack", "b1") == ThreadRef("C1", "1.000001")
    assert await store.group_flushed_at("slack", "old") == now - 100
    await store.prune(before=now)
    assert await store.group_flushed_at("slack", "old") is None
    assert await store.group_flushed_at("slack", "new") == now + 100
    await store.prune(before=now + 3600)
    assert await store.get_thread("slack", "b1") is None


async def test_prune_keeps_a_thread_while_its_batch_runs_or_is_owed_an_event(
    store: Store,
) -> None:
    """Retention never cuts a running batch's thread: it goes only once the batch is terminal,
    every event of the batch reached the thread's notifier and no parent edit waits."""
    import time

    later = time.time() + 3600
    thread = ThreadRef("C1", "1.000001")
    await store.commit(SnapshotChanges(upserts=(job("j1", "b1", "submitted"),)), [])
    await store.save_thread("slack", "b1", thread)
    await store.save_thread("mail", "b1", thread)
    await store.prune(before=later)
    assert await store.get_thread("slack", "b1") == thread  # the batch still runs

    done = job("j1", "b1", "completed", seq=2)
    await store.commit(SnapshotChanges(upserts=(done,)),
                       [routed("j1:2:submitted:completed", "slack", "mail")])
    await store.mark_failed("j1:2:submitted:completed", "slack", "HTTP 500", None)
    await store.mark_delivered("j1:2:submitted:completed", "mail")
    await store.prune(before=later)
    assert await store.get_thread("slack", "b1") == thread  # a dead row may be retried
    assert await store.get_thread("mail", "b1") is None  # its notifier was told everything

    await store.mark_delivered("j1:2:submitted:completed", "slack")
    await store.set_pending_edit("slack", "b1", "final text", later - 3600)
    await store.prune(before=later)
    assert await store.get_thread("slack", "b1") == thread  # the parent edit still waits

    await store.clear_pending_edit("slack", "b1")
    await store.prune(before=time.time() - 60)
    assert await store.get_thread("slack", "b1") == thread  # within the retention
    await store.prune(before=later)
    assert await store.get_thread("slack", "b1") is None


async def test_a_parent_post_is_recorded_as_started_until_its_ts_is_saved(store: Store) -> None:
    """A post recorded as started and never saved is reported to the next attempt, with the
    first attempt's time: the message may have reached the receiver before a crash."""
    assert await store.start_thread_post("slack", "b1", T0) is None
    assert await store.get_thread("slack", "b1") is None
    assert await store.start_thread_post("slack", "b1", T0 + 5) == T0
    assert await store.start_thread_post("slack", "b1", T0 + 9) == T0
    assert await store.start_thread_post("mail", "b1", T0 + 9) is None
    saved = ThreadRef("C1", "1800000000.000100")
    assert await store.save_thread("slack", "b1", saved) == saved
    assert await store.save_thread("slack", "b1", ThreadRef("C1", "1.2")) == saved
    assert await store.get_thread("slack", "b1") == saved
    assert await store.start_thread_post("slack", "b1", T0 + 10) is None


async def test_a_reply_post_stays_in_doubt_until_finished_with_its_events_delivered(
    store_backend: StoreBackend, store: Store
) -> None:
    """A reply recorded as started is in doubt (earliest start first, across a reopen) until
    the transaction that marks its events delivered forgets it."""
    await store.commit(SnapshotChanges(), [routed("e1", "slack"), routed("e2", "slack")])
    assert await store.reply_posts_in_doubt("slack", "b1") is None
    await store.start_reply_post("slack", "b1", "k1", T0 + 1)
    await store.start_reply_post("slack", "b1", "k2", T0 + 2)
    await store.start_reply_post("slack", "b1", "k1", T0 + 9)  # a retry keeps the first time
    await store.start_reply_post("slack", "b2", "k1", T0)
    assert await store.reply_posts_in_doubt("slack", "b1") == T0 + 1
    assert await store.reply_posts_in_doubt("mail", "b1") is None
    await store.close()
    async with store_backend.build() as reopened:
        assert await reopened.reply_posts_in_doubt("slack", "b1") == T0 + 1
        await reopened.finish_reply_posts("slack", "b1", ["k1"], ["e1"])
        assert await reopened.reply_posts_in_doubt("slack", "b1") == T0 + 2
        assert ids(await reopened.list_outbox(OutboxState.DELIVERED)) == ["e1"]
        await reopened.finish_reply_posts("slack", "b1", None, ["e2"])
        assert await reopened.reply_posts_in_doubt("slack", "b1") is None
        assert ids(await reopened.list_outbox(OutboxState.DELIVERED)) == ["e1", "e2"]
        assert await reopened.reply_posts_in_doubt("slack", "b2") == T0
        await reopened.prune(before=T0 + 0.5)
        assert await reopened.reply_posts_in_doubt("slack", "b2") is None


async def test_a_pending_parent_edit_keeps_the_latest_content_until_cleared(
    store_backend: StoreBackend, store: Store
) -> None:
    await store.set_pending_edit("slack", "b1", "ignored: no thread yet", T0)
    assert await store.pending_edits("slack") == []
    thread = ThreadRef("C1", "1.000001")
    await store.save_thread("slack", "b1", thread)
    await store.save_thread("slack", "b2", thread)
    await store.set_pending_edit("slack", "b2", "b2 v1", T0 + 1)
    await store.set_pending_edit("slack", "b1", "b1 v1", T0 + 2)
    await store.set_pending_edit("slack", "b1", "b1 v2", T0 + 3)
    assert await store.pending_edits("other") == []
    await store.close()
    async with store_backend.build() as reopened:
        assert await reopened.pending_edits("slack") == [
            PendingEdit("b2", thread, "b2 v1", 1, T0 + 1),
            PendingEdit("b1", thread, "b1 v2", 2, T0 + 2),
        ]
        await reopened.clear_pending_edit("slack", "b2")
        await reopened.set_pending_edit("slack", "b2", "b2 v2", T0 + 9)
        await reopened.clear_pending_edit("slack", "b1")
        assert await reopened.pending_edits("slack") == [
            PendingEdit("b2", thread, "b2 v2", 1, T0 + 9)]
        assert await reopened.get_thread("slack", "b1") == thread


async def test_threads_and_groups_survive_reopening(
    store_backend: StoreBackend, store: Store
) -> None:
    await store.save_thread("slack", "b1", ThreadRef("C1", "1.000001"))
    await store.set_group_flushed("slack", "batch=b1", T0)
    await store.close()
    async with store_backend.build() as reopened:
        assert await reopened.get_thread("slack", "b1") == ThreadRef("C1", "1.000001")
        assert await reopened.group_flushed_at("slack", "batch=b1") == T0


# -- durability and volume --------------------------------------------------------------------


async def test_reopening_the_database_sees_everything_committed(
    store_backend: StoreBackend, store: Store
) -> None:
    jobs = (job("j1", status="completed", seq=3, output_file_id="f"), job("j2", batch_id="b2"))
    await store.commit(
        SnapshotChanges(upserts=jobs),
        [routed("e1", "slack", "audit"), routed("e2", "slack"), routed("e3", "slack")],
        meta={"baseline_at": str(T0)},
        now=T0,
    )
    await store.claim_due("slack", T0, 10, LEASE_S)
    await store.mark_delivered("e1", "slack")
    await store.mark_failed("e2", "slack", "boom", T0 + 60)
    await store.close()

    async with store_backend.build() as reopened:
        assert await reopened.load_snapshot() == {j.id: j for j in jobs}
        assert await reopened.get_meta("baseline_at") == str(T0)
        assert await reopened.outbox_counts() == {
            "slack": {
                **ZERO_COUNTS,
                OutboxState.DELIVERED: 1,
                OutboxState.PENDING: 1,
                OutboxState.CLAIMED: 1,
            },
            "audit": {**ZERO_COUNTS, OutboxState.PENDING: 1},
        }
        [failed] = await reopened.list_outbox(OutboxState.PENDING, notifier="slack")
        assert (failed.event, failed.attempts, failed.last_error) == (event("e2"), 1, "boom")
        assert await reopened.next_due_at("slack") == T0 + LEASE_S
        assert await emit(reopened, "e1", "e2", "e3", notifiers=("slack", "audit")) == 0


async def test_a_baseline_of_100000_jobs_commits_and_loads_back(
    store_backend: StoreBackend, store: Store
) -> None:
    """A first sweep of a large account: one commit, then every job back, by batch and after
    reopening; then half of them leave in one commit."""
    statuses = ("pending", "submitted", "completed", "completed_with_error", "failed")
    jobs = tuple(
        job(
            f"job-{i:06d}",
            batch_id=f"batch-{i // 100:04d}",
            status=statuses[i % 5],
            output_file_id=None if i % 3 else f"file-{i}",
            seq=1,
            first_seen_at=T0,
        )
        for i in range(100_000)
    )
    await store.commit(SnapshotChanges(upserts=jobs), [], meta={"baseline_at": str(T0)}, now=T0)

    snapshot = await store.load_snapshot()
    assert len(snapshot) == 100_000
    assert snapshot["job-054321"] == jobs[54_321]
    assert await store.status_counts() == dict.fromkeys(statuses, 20_000)
    batches = await store.load_batches(f"batch-{b:04d}" for b in range(0, 1000, 3))
    assert len(batches) == 334 * 100

    await store.commit(SnapshotChanges(removals=tuple(j.id for j in jobs[::2])), [])
    await store.close()
    async with store_backend.build() as reopened:
        assert len(await reopened.load_snapshot()) == 50_000
        assert sum((await reopened.status_counts()).values()) == 50_000


# -- active set, streaming sweeps, stuck marks --------------------------------------------------


async def test_a_database_two_versions_old_upgrades_in_one_open(
    store_backend: StoreBackend,
) -> None:
    """Steps are applied in order, whatever lies between (two versions here). The older build
    writes only an event: this build's job rows carry columns it lacks."""
    async with store_backend.build(schema_delta=-2) as older:
        await older.commit(SnapshotChanges(), [routed("e0", "a")])
    async with store_backend.build() as store:
        assert ids(await store.list_outbox(OutboxState.PENDING)) == ["e0"]
        await store.commit(SnapshotChanges(upserts=(job("j0"),)), [])
        assert set(await store.active_batch_ids()) == {"b1"}
        generation = await store.sweep_begin()
        await store.sweep_stage(generation, [("j0", "pending")], [])
        assert await store.sweep_unseen(generation, T0) == {}


async def test_active_batch_ids_are_the_batches_with_a_non_terminal_job(store: Store) -> None:
    await store.commit(
        SnapshotChanges(
            upserts=(
                job("a1", "A", "completed"),
                job("a2", "A", "pending"),
                job("b1", "B", "failed"),
                job("c1", "C", "some_new_status"),
                # Unknown statuses that sort before, between and after the terminal ones (a
                # backend may read the non-terminal set as ranges of an index).
                job("d1", "D", "completed_a"),
                job("e1", "E", "aaa"),
                job("f1", "F", ""),
                job("g1", "G", "completed_x"),
                job("h1", "H", "Failed"),
                job("i1", "I", "completed"),
                job("i2", "I", "completed_with_error"),
            )
        ),
        [],
    )
    assert await store.active_batch_ids() == {"A", "C", "D", "E", "F", "G", "H"}


async def test_load_jobs_returns_the_known_ones_by_id(store: Store) -> None:
    rows = tuple(job(f"j{i}") for i in range(1200))
    await store.commit(SnapshotChanges(upserts=rows), [])
    loaded = await store.load_jobs([f"j{i}" for i in range(0, 1200, 2)] + ["nope", "j0"])
    assert len(loaded) == 600 and loaded["j2"] == rows[2]


async def test_load_observed_is_what_each_known_row_holds_of_its_observation(
    store: Store,
) -> None:
    """The sweep's comparison reads these back: equal to `observed_of` of the committed row on
    every field, texts (unicode, quotes, none) included, across more ids than one statement's
    placeholders."""
    rows = tuple(job(f"j{i}") for i in range(1200))
    full = JobState(
        id="jöb ✓", batch_id="bätch", status="completed_with_error", template_file_id="tmpl-ü",
        output_type="docx", output_file_id="out-日本", created_at="2027-01-15T12:00:00Z",
        created_by_id="u", seq=3, errors=("Tag <!channel> has no value", "ünï & \"q\""),
        warnings=("w1",),
    )
    await store.commit(SnapshotChanges(upserts=(*rows, full)), [])
    loaded = await store.load_observed([f"j{i}" for i in range(0, 1200, 2)] + [full.id, "nope"])
    assert len(loaded) == 601
    assert loaded["j2"] == observed_of(rows[2])
    assert loaded[full.id] == observed_of(full)
    assert loaded[full.id][5:] == ('["Tag <!channel> has no value","ünï & \\"q\\""]', '["w1"]')


async def test_a_staged_sweep_changes_nothing_until_it_commits(store: Store) -> None:
    await store.commit(SnapshotChanges(upserts=(job("old", seq=1, first_seen_at=T0),
                                                job("kept", seq=1, first_seen_at=T0))), [])
    generation = await store.sweep_begin()
    new = job("new", seq=1, first_seen_at=T0 + 10)
    moved = job("kept", status="submitted", seq=2, first_seen_at=T0)
    await store.sweep_stage(generation, [("new", "pending"), ("kept", "submitted")],
                            [(job_to_row(new), 0), (job_to_row(moved), 1)])
    await store.sweep_stage(generation, [("kept", "failed")],
                            [(job_to_row(replace(moved, status="failed")), 1)])
    assert set(await store.load_snapshot()) == {"old", "kept"}
    assert (await store.load_jobs(["kept"]))["kept"].status == "pending"
    assert set(await store.sweep_unseen(generation, T0 + 10)) == {"old"}
    assert await store.sweep_stale_ids() == set()
    await store.commit_sweep(SnapshotChanges(removals=("old",)), [routed("e1", "a")],
                             meta={"k": "v"})
    snapshot = await store.load_snapshot()
    assert snapshot == {"new": new, "kept": moved}  # the first staging of "kept" counts
    assert await store.get_meta("k") == "v"
    assert ids(await store.list_outbox(OutboxState.PENDING)) == ["e1"]


async def test_a_new_sweep_forgets_an_unfinished_one(store: Store) -> None:
    await store.commit(SnapshotChanges(upserts=(job("a", seq=1, first_seen_at=T0),)), [])
    first = await store.sweep_begin()
    await store.sweep_stage(first, [("a", "pending")], [(job_to_row(job("b", seq=1)), 0)])
    second = await store.sweep_begin()
    assert second > first
    assert set(await store.sweep_unseen(second, T0 + 1)) == {"a"}  # first's marks do not count
    await store.commit_sweep(SnapshotChanges(), [])
    assert set(await store.load_snapshot()) == {"a"}  # first's staged row is gone


async def test_a_staged_row_whose_job_moved_meanwhile_is_skipped(store: Store) -> None:
    await store.commit(SnapshotChanges(upserts=(job("j", seq=1),)), [])
    generation = await store.sweep_begin()
    await store.sweep_stage(generation, [("j", "submitted")],
                            [(job_to_row(job("j", status="submitted", seq=2)), 1)])
    await store.commit(SnapshotChanges(upserts=(job("j", status="completed", seq=2),)), [])
    assert await store.sweep_stale_ids() == {"j"}
    await store.commit_sweep(SnapshotChanges(), [])
    assert (await store.load_jobs(["j"]))["j"].status == "completed"


async def test_a_stuck_event_leaves_a_mark_that_removing_the_job_forgets(store: Store) -> None:
    stuck = event("j1:1:stuck").model_copy(update={"type": EventType.JOB_STUCK})
    await store.commit(SnapshotChanges(upserts=(job("j1"),)), [RoutedEvent(stuck, ("a",))])
    assert await store.stuck_marks(["j1", "j2"]) == {"j1": "j1:1:stuck"}
    later = stuck.model_copy(update={"id": "j1:3:stuck"})
    await store.commit(SnapshotChanges(), [RoutedEvent(later, ())])
    assert await store.stuck_marks(["j1"]) == {"j1": "j1:3:stuck"}
    await store.commit(SnapshotChanges(removals=("j1",)), [])
    assert await store.stuck_marks(["j1"]) == {}


async def test_a_removed_job_leaves_the_seq_of_its_vanish_until_it_is_written_again(
    store: Store,
) -> None:
    await store.commit(SnapshotChanges(upserts=(job("j1", seq=3), job("j2", seq=1))), [])
    assert await store.vanished_seqs(["j1", "j2"]) == {}
    await store.commit(SnapshotChanges(removals=("j1",)), [])
    assert await store.vanished_seqs(["j1", "j2", "nope"]) == {"j1": 4}
    await store.commit(SnapshotChanges(upserts=(job("j1", seq=5),)), [])
    assert await store.vanished_seqs(["j1"]) == {}


async def test_a_sweep_that_stages_a_vanished_job_clears_its_vanish_mark(store: Store) -> None:
    await store.commit(SnapshotChanges(upserts=(job("j1", seq=2),)), [])
    await store.commit(SnapshotChanges(removals=("j1",)), [])
    generation = await store.sweep_begin()
    await store.sweep_stage(generation, [("j1", "pending")], [(job_to_row(job("j1", seq=4)), 0)])
    await store.commit_sweep(SnapshotChanges(), [])
    assert await store.vanished_seqs(["j1"]) == {}
    assert (await store.load_jobs(["j1"]))["j1"].seq == 4


async def test_a_sweep_reports_ids_listed_twice_with_different_statuses(store: Store) -> None:
    generation = await store.sweep_begin()
    await store.sweep_stage(generation, [("a", "pending"), ("b", "failed"), ("a", "pending")], [])
    await store.sweep_stage(generation, [("b", "submitted"), ("c", "failed")], [])
    await store.sweep_stage(generation, [("b", "failed")], [])
    assert await store.sweep_conflicts(generation) == {"b"}
    assert set(await store.sweep_unseen(generation, T0 + 1)) == set()


async def test_an_unstaged_row_can_be_staged_again_and_the_new_one_counts(store: Store) -> None:
    await store.commit(SnapshotChanges(upserts=(job("j", seq=1, first_seen_at=T0),)), [])
    generation = await store.sweep_begin()
    submitted = job("j", status="submitted", seq=2, first_seen_at=T0)
    await store.sweep_stage(generation, [("j", "submitted")], [(job_to_row(submitted), 1)])
    await store.sweep_unstage(generation, ["j"])
    await store.sweep_stage(generation, [], [(job_to_row(job("j", status="failed", seq=2,
                                                             first_seen_at=T0)), 1)])
    assert set(await store.sweep_unseen(generation, T0 + 1)) == set()  # still seen
    await store.commit_sweep(SnapshotChanges(), [])
    assert (await store.load_jobs(["j"]))["j"].status == "failed"


async def test_commit_sweep_replaces_the_suspects_of_jobs_still_in_the_snapshot(
    store: Store,
) -> None:
    await store.commit(SnapshotChanges(upserts=(job("a"), job("b"), job("c"))), [])
    assert await store.load_suspects() == {}
    await store.commit_sweep(SnapshotChanges(), [], suspects={"a": T0, "b": T0 + 1, "x": T0})
    assert await store.load_suspects() == {"a": T0, "b": T0 + 1}
    await store.commit_sweep(SnapshotChanges(), [])  # not given: unchanged
    assert await store.load_suspects() == {"a": T0, "b": T0 + 1}
    await store.commit(SnapshotChanges(removals=("a",)), [])
    assert await store.load_suspects() == {"b": T0 + 1}
    await store.commit_sweep(SnapshotChanges(), [], suspects={"c": T0 + 2})
    assert await store.load_suspects() == {"c": T0 + 2}


def fingerprint_of(job: JobState) -> int:
    return fingerprint(job.id, observed_of(job))


async def test_schema_v12_fingerprints_the_rows_an_older_build_wrote(
    store_backend: StoreBackend,
) -> None:
    """Every stored job gets the fingerprint of what its row holds (later writes compute their
    own), so that the first sweep after the upgrade passes over the unchanged ones."""
    rows = [job(f"j{i}", status="failed", errors=(f"e{i}",), first_seen_at=T0) for i in range(3)]

    async def chunks() -> AsyncIterator[TableChunk]:
        yield TableChunk("jobs", JOB_COLUMNS, [job_to_row(j)[: len(JOB_COLUMNS)] for j in rows])

    async with store_backend.build(schema_delta=-1) as older:
        await older.load_tables(chunks(), replace=False)
    async with store_backend.build() as store:
        found = await store.sweep_fingerprints()
        assert sorted(found.fingerprints) == sorted(map(fingerprint_of, rows))
        assert (found.without, found.vanish_marks, found.empty) == (0, 0, False)
        assert await store.load_snapshot() == {j.id: j for j in rows}


async def test_the_unseen_are_looked_for_among_the_fingerprints_no_entry_matched(
    store: Store,
) -> None:
    a, b, c, d = (job(i, first_seen_at=T0) for i in "abcd")
    assert (await store.sweep_fingerprints()).empty

    async def chunks() -> AsyncIterator[TableChunk]:
        yield TableChunk("jobs", ROW_COLUMNS, [job_to_row(j) for j in (a, b, c)])
        # A row copied without its fingerprint (from elsewhere) is never matched.
        yield TableChunk("jobs", JOB_COLUMNS, [job_to_row(d)[: len(JOB_COLUMNS)]])

    await store.load_tables(chunks(), replace=False)
    await store.commit(SnapshotChanges(upserts=(job("gone"),)), [])
    await store.commit(SnapshotChanges(removals=("gone",)), [])
    found = await store.sweep_fingerprints()
    assert sorted(found.fingerprints) == sorted(map(fingerprint_of, (a, b, c)))
    assert (found.without, found.vanish_marks, found.empty) == (1, 1, False)
    generation = await store.sweep_begin()
    await store.sweep_stage(generation, [("b", "failed")], [])  # b listed changed, c as stored
    unmatched = [fingerprint_of(a), fingerprint_of(b)]
    assert set(await store.sweep_unseen(generation, T0 + 1, unmatched)) == {"a", "d"}
    assert set(await store.sweep_unseen(generation, T0 + 1, [])) == {"d"}
    assert set(await store.sweep_unseen(generation, T0 + 1)) == {"a", "c", "d"}


async def test_a_sweep_begun_on_an_empty_snapshot_lands_whole_at_its_commit(store: Store) -> None:
    """A store's first baseline (SQLite stages it beside the empty snapshot and swaps it in):
    nothing shows before the commit, everything after, and the snapshot is queried as usual."""
    rows = [job(f"j{i}", batch_id=f"b{i % 3}", status="completed", first_seen_at=T0)
            for i in range(9)]
    rows[4] = replace(rows[4], status="submitted")
    generation = await store.sweep_begin()
    await store.sweep_stage(generation, [(j.id, j.status) for j in rows[:5]],
                            [(job_to_row(j), 0) for j in rows[:5]])
    await store.sweep_stage(generation, [(j.id, j.status) for j in rows[4:]],
                            [(job_to_row(j), 0) for j in rows[4:]])  # j4 listed twice
    assert await store.load_snapshot() == {}
    assert await store.sweep_stale_ids() == set()
    await store.commit_sweep(SnapshotChanges(), [routed("e1", "a")], meta={"k": "v"})
    assert await store.load_snapshot() == {j.id: j for j in rows}
    assert await store.active_batch_ids() == {"b1"}
    assert set(await store.load_batches(["b2"])) == {"j2", "j5", "j8"}
    assert await store.status_counts() == {"completed": 8, "submitted": 1}
    assert sorted((await store.sweep_fingerprints()).fingerprints) == sorted(
        map(fingerprint_of, rows))
    # A second sweep over what the first one landed.
    generation = await store.sweep_begin()
    await store.sweep_stage(generation, [("j9", "pending")], [(job_to_row(job("j9")), 0)])
    await store.commit_sweep(SnapshotChanges(), [])
    assert set(await store.load_snapshot()) == {j.id for j in rows} | {"j9"}


async def test_a_poll_during_a_first_baseline_keeps_what_it_wrote(store: Store) -> None:
    """A poll commits a job the baseline staged as new: its row stands (the staged one is
    stale); a job the sweep then read as written is staged against its row and lands."""
    generation = await store.sweep_begin()
    await store.sweep_stage(generation, [("a", "pending"), ("b", "pending")],
                            [(job_to_row(job("a")), 0), (job_to_row(job("b")), 0)])
    polled = job("b", status="completed", seq=2, first_seen_at=T0 + 5)
    later = job("c", seq=1, first_seen_at=T0 + 5)
    await store.commit(SnapshotChanges(upserts=(polled, later)), [])
    moved = replace(later, status="failed", seq=2)
    await store.sweep_stage(generation, [("c", "failed")], [(job_to_row(moved), 1)])
    await store.sweep_stage(generation, [("d", "pending")], [(job_to_row(job("d")), 0)])
    assert await store.sweep_stale_ids() == {"b"}
    await store.sweep_unstage(generation, ["d"])
    assert set(await store.sweep_unseen(generation, T0 + 10)) == set()  # d stays seen
    await store.commit_sweep(SnapshotChanges(), [])
    assert await store.load_snapshot() == {"a": job("a"), "b": polled, "c": moved}


async def test_a_first_baseline_superseded_before_its_commit_leaves_nothing(
    store: Store,
) -> None:
    generation = await store.sweep_begin()
    await store.sweep_stage(generation, [("a", "pending")], [(job_to_row(job("a")), 0)])
    again = await store.sweep_begin()  # the first one failed part way
    await store.sweep_stage(again, [("b", "pending")], [(job_to_row(job("b")), 0)])
    await store.commit_sweep(SnapshotChanges(), [])
    assert set(await store.load_snapshot()) == {"b"}
    with pytest.raises(StoreError):
        await store.sweep_stage(generation, [("c", "pending")], [])


def listed(*jobs: JobState) -> tuple[list[tuple[str, str]], list[tuple[tuple[object, ...], int]]]:
    """A page of new jobs as a first baseline stages it: (id, status) pairs and their rows."""
    return [(j.id, j.status) for j in jobs], [(job_to_row(j), 0) for j in jobs]


@pytest.mark.parametrize("then", ["commit", "a job read written"])
async def test_a_first_baseline_finds_every_id_listed_with_two_statuses(
    store: Store, then: str
) -> None:
    """Whether a sighting was staged as a row or only seen, before or after the other; and the
    conflicts and sightings outlive unstaging (and, on SQLite, a move of the staging)."""
    generation = await store.sweep_begin()
    await store.sweep_stage(generation, *listed(job("a"), job("b", status="failed"), job("c")))
    await store.sweep_stage(generation, *listed(job("b", status="completed"), job("c"), job("d")))
    await store.sweep_stage(generation, [("e", "pending")], [])
    await store.sweep_stage(generation, *listed(job("e", status="failed")))
    await store.sweep_stage(generation, *listed(job("f", status="failed")))
    await store.sweep_stage(generation, [("f", "pending"), ("y", "pending")], [])
    assert await store.sweep_conflicts(generation) == {"b", "e", "f"}
    await store.sweep_unstage(generation, ["b", "e", "a"])
    assert await store.sweep_conflicts(generation) == {"b", "e", "f"}
    polled = (job("y", seq=1, first_seen_at=T0), job("z", seq=1, first_seen_at=T0))
    await store.commit(SnapshotChanges(upserts=polled), [])  # a poll, during the sweep
    if then == "a job read written":
        seen, rows = listed(replace(polled[1], status="failed", seq=2))
        await store.sweep_stage(generation, seen, [(rows[0][0], 1)])
    assert await store.sweep_conflicts(generation) == {"b", "e", "f"}
    unseen = {"z"} if then == "commit" else set()
    assert set(await store.sweep_unseen(generation, T0 + 1)) == unseen  # a..f, y were listed
    await store.commit_sweep(SnapshotChanges(), [])
    staged = {"c", "d", "f"} | ({"z"} if then != "commit" else set())
    assert set(await store.load_snapshot()) == staged | {"y", "z"}
