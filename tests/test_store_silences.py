"""The `Store` contract for silences and the event history (schema v8), over every backend
(the `store` and `store_backend` fixtures of `tests/conftest.py`)."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import pytest

from monitor.errors import StoreError
from monitor.model import Event, EventBatch, EventJob, EventType, SnapshotChanges
from monitor.store.base import EventQuery, OutboxState, RoutedEvent, Silence, Store

if TYPE_CHECKING:
    from tests.store_fixtures import StoreBackend

T0 = 1_800_000_000.0
LEASE_S = 30.0


def silence(silence_id: str = "s1", *, starts_at: float = T0, ends_at: float = T0 + 3600,
            **match: tuple[str, ...]) -> Silence:
    return Silence(
        id=silence_id,
        match=match or {"template_id": ("123",)},
        starts_at=starts_at,
        ends_at=ends_at,
        comment="fixing tags",
        created_by="alice",
        created_at=starts_at,
    )


def job_event(job_id: str, batch_id: str = "b1", to_status: str = "failed",
              minute: int = 0) -> Event:
    return Event(
        id=f"{job_id}:pending:{to_status}",
        type=EventType.JOB_STATUS_CHANGED,
        detected_at=datetime(2027, 1, 15, 12, minute, tzinfo=UTC),
        from_status="pending",
        to_status=to_status,
        job=EventJob(
            id=job_id,
            batch_id=batch_id,
            status=to_status,
            template_file_id="123",
            output_file_id=None,
            output_type="pdf",
        ),
    )


def batch_event(batch_id: str) -> Event:
    return Event(
        id=f"batch:{batch_id}:done",
        type=EventType.BATCH_COMPLETED,
        detected_at=datetime(2027, 1, 15, 12, 30, tzinfo=UTC),
        batch=EventBatch(id=batch_id, counts={"completed": 2}),
    )


async def record(store: Store, *events: Event, now: float = T0,
                 notifiers: tuple[str, ...] = ("slack", "audit")) -> None:
    await store.commit(SnapshotChanges(), [RoutedEvent(e, notifiers) for e in events], now=now)


async def test_a_silence_is_stored_listed_and_kept_across_a_reopen(
    store_backend: StoreBackend,
) -> None:
    async with store_backend.build() as store:
        await store.add_silence(silence("s1", to_status=("failed", "completed_with_error")))
        await store.add_silence(replace(silence("s2"), created_at=T0 + 5))
    async with store_backend.build() as store:
        listed = await store.list_silences()
    assert [s.id for s in listed] == ["s2", "s1"]  # newest first
    assert listed[1] == silence("s1", to_status=("failed", "completed_with_error"))


async def test_a_second_silence_with_a_taken_id_is_refused(store: Store) -> None:
    await store.add_silence(silence("s1"))
    with pytest.raises(StoreError):
        await store.add_silence(silence("s1"))


async def test_list_silences_leaves_out_those_ended_by_the_time_given(store: Store) -> None:
    await store.add_silence(silence("old", ends_at=T0 + 10))
    await store.add_silence(silence("new", ends_at=T0 + 100))
    assert [s.id for s in await store.list_silences(ended_after=T0 + 10)] == ["new"]
    assert {s.id for s in await store.list_silences(ended_after=T0 + 9)} == {"old", "new"}


async def test_expiring_ends_a_silence_now_and_leaves_an_ended_one_alone(store: Store) -> None:
    await store.add_silence(silence("s1"))
    await store.add_silence(silence("later", starts_at=T0 + 600, ends_at=T0 + 1200))
    expired = await store.expire_silence("s1", T0 + 60)
    assert expired is not None and expired.ends_at == T0 + 60
    assert not expired.active_at(T0 + 60)
    again = await store.expire_silence("s1", T0 + 120)
    assert again is not None and again.ends_at == T0 + 60
    # One that has not started yet never starts.
    later = await store.expire_silence("later", T0 + 60)
    assert later is not None and later.ends_at == later.starts_at == T0 + 600
    assert await store.expire_silence("nope", T0) is None


async def test_a_silenced_row_is_settled_never_claimed_and_reads_silenced(store: Store) -> None:
    await record(store, job_event("j1"), job_event("j2"))
    claimed = await store.claim_due("slack", T0, 10, LEASE_S)
    assert len(claimed) == 2
    await store.mark_silenced("slack", {"j1:pending:failed": "s1"})
    # The unclaimed (pending) row of another notifier can be silenced too.
    await store.mark_silenced("audit", {"j1:pending:failed": "s1"})
    await store.mark_delivered("j2:pending:failed", "slack")
    assert await store.claim_due("slack", T0 + 3600, 10, LEASE_S) == []
    assert [e.event.id for e in await store.claim_due("audit", T0, 10, LEASE_S)] == [
        "j2:pending:failed"
    ]
    assert await store.outbox_counts() == {
        "slack": {OutboxState.PENDING: 0, OutboxState.CLAIMED: 0, OutboxState.DELIVERED: 2,
                  OutboxState.DEAD: 0},
        "audit": {OutboxState.PENDING: 0, OutboxState.CLAIMED: 1, OutboxState.DELIVERED: 1,
                  OutboxState.DEAD: 0},
    }
    (j2, j1) = await store.list_events(EventQuery())
    assert [(d.notifier, d.outcome, d.silence_id) for d in j1.deliveries] == [
        ("audit", "silenced", "s1"),
        ("slack", "silenced", "s1"),
    ]
    assert [(d.notifier, d.outcome) for d in j2.deliveries] == [
        ("audit", "claimed"),
        ("slack", "delivered"),
    ]


async def test_mark_silenced_leaves_delivered_and_dead_rows_as_they_are(store: Store) -> None:
    await record(store, job_event("j1"), job_event("j2"), notifiers=("slack",))
    await store.mark_delivered("j1:pending:failed", "slack")
    await store.mark_failed("j2:pending:failed", "slack", "gone", None)
    await store.mark_silenced("slack", {"j1:pending:failed": "s1", "j2:pending:failed": "s1"})
    outcomes = {r.event.id: [d.outcome for d in r.deliveries]
                for r in await store.list_events(EventQuery())}
    assert outcomes == {"j1:pending:failed": ["delivered"], "j2:pending:failed": ["dead"]}


async def test_list_events_filters_newest_first_and_pages_by_seq(store: Store) -> None:
    await record(store, job_event("j1", "b1"), job_event("j2", "b1", "completed", 1), now=T0)
    await record(store, job_event("j3", "b2"), batch_event("b1"), now=T0 + 100)

    async def listed(**kw: object) -> list[str]:
        return [r.event.id for r in await store.list_events(EventQuery(**kw))]  # type: ignore[arg-type]

    everything = await listed()
    assert everything == ["batch:b1:done", "j3:pending:failed", "j2:pending:completed",
                          "j1:pending:failed"]
    assert await listed(batch_id="b1") == ["batch:b1:done", "j2:pending:completed",
                                           "j1:pending:failed"]
    assert await listed(job_id="j2") == ["j2:pending:completed"]
    assert await listed(type="batch.completed") == ["batch:b1:done"]
    assert await listed(status="failed") == ["j3:pending:failed", "j1:pending:failed"]
    assert await listed(since=T0 + 50) == ["batch:b1:done", "j3:pending:failed"]
    first = await store.list_events(EventQuery(limit=3))
    assert [r.event.id for r in first] == everything[:3]
    assert first[0].recorded_at == T0 + 100
    assert await listed(before_seq=first[-1].seq) == everything[3:]
    assert await listed(batch_id="nope") == []


async def test_prune_forgets_silences_that_ended_before_the_cutoff(store: Store) -> None:
    await store.add_silence(silence("old", ends_at=T0 + 10))
    await store.add_silence(silence("current", ends_at=T0 + 1000))
    await store.prune(T0 + 500)
    assert [s.id for s in await store.list_silences()] == ["current"]
