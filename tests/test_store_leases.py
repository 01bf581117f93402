"""The `LeaseStore` contract (leases, replicas, fencing), part of the store contract suite: every
backend passes it unchanged (`store_backend` runs each test over SQLite and PostgreSQL).

Two handles on one database stand for two replicas. A TTL of 0 makes a lease expired at once
(expiry is the store's clock), so no test waits for one to run out."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import pytest
import structlog

from monitor.config import DeliveryConfig, NotifierSpec
from monitor.errors import LeaseLost, MonitorError, StoreError
from monitor.metrics import Metrics
from monitor.model import SnapshotChanges
from monitor.notify.base import NotifierRegistry
from monitor.notify.dispatcher import Dispatcher
from monitor.store.base import Fence, Lease, OutboxState, Store
from tests.harness import wait_until
from tests.receiver import WebhookReceiver
from tests.test_store_contract import LEASE_S, T0, emit, job, routed

if TYPE_CHECKING:
    from tests.store_fixtures import StoreBackend

HELD_S = 60.0  # a lease that stays live for the whole test
EXPIRED_S = 0.0  # a lease that is expired at once


async def replicas(store_backend: StoreBackend) -> tuple[Store, Store]:
    """Two opened handles on one database: replica a and replica b."""
    a, b = store_backend.build(), store_backend.build()
    await a.open()
    await b.open()
    return a, b


async def test_a_free_lease_is_acquired_with_epoch_1_and_a_held_one_is_refused(
    store_backend: StoreBackend,
) -> None:
    a, b = await replicas(store_backend)
    fence = await a.acquire_lease("acme", "a", HELD_S)
    assert fence == Fence("acme", "a", 1)
    assert await b.acquire_lease("acme", "b", HELD_S) is None
    assert await a.acquire_lease("acme", "a", HELD_S) is None  # held, even by the caller
    assert await b.leases() == {"acme": Lease("acme", "a", 1, live=True)}


async def test_an_expired_lease_is_taken_over_with_the_next_epoch(
    store_backend: StoreBackend,
) -> None:
    a, b = await replicas(store_backend)
    old = await a.acquire_lease("acme", "a", EXPIRED_S)
    assert (await b.leases())["acme"].live is False
    new = await b.acquire_lease("acme", "b", HELD_S)
    assert old == Fence("acme", "a", 1) and new == Fence("acme", "b", 2)
    assert await a.renew_lease(old, HELD_S) is False  # the old holder cannot come back
    assert await b.renew_lease(new, HELD_S) is True


async def test_a_holder_renews_an_expired_lease_nobody_took(store: Store) -> None:
    """Fencing is by epoch: an expired lease still belongs to its holder until taken."""
    fence = await store.acquire_lease("acme", "a", EXPIRED_S)
    assert fence is not None
    assert await store.renew_lease(fence, HELD_S) is True
    assert (await store.leases())["acme"] == Lease("acme", "a", 1, live=True)


async def test_a_released_lease_is_free_at_once_and_a_stale_release_changes_nothing(
    store_backend: StoreBackend,
) -> None:
    a, b = await replicas(store_backend)
    first = await a.acquire_lease("acme", "a", HELD_S)
    assert first is not None
    await a.release_lease(first)
    assert (await b.leases())["acme"] == Lease("acme", None, 1, live=False)
    second = await b.acquire_lease("acme", "b", HELD_S)
    assert second == Fence("acme", "b", 2)
    await a.release_lease(first)  # stale: b keeps it
    assert (await a.leases())["acme"] == Lease("acme", "b", 2, live=True)


async def test_leases_of_accounts_are_independent(store: Store) -> None:
    assert await store.acquire_lease("acme", "a", HELD_S) == Fence("acme", "a", 1)
    assert await store.acquire_lease("globex", "b", HELD_S) == Fence("globex", "b", 1)
    assert sorted(await store.leases()) == ["acme", "globex"]


async def test_heartbeats_count_live_replicas_and_leaving_stops_counting_at_once(
    store_backend: StoreBackend,
) -> None:
    a, b = await replicas(store_backend)
    assert await a.heartbeat("a", HELD_S) == 1
    assert await b.heartbeat("b", HELD_S) == 2
    assert await a.heartbeat("a", HELD_S) == 2  # a renewal is not a new replica
    await b.leave("b")
    assert await a.heartbeat("a", HELD_S) == 1
    assert await b.heartbeat("b", EXPIRED_S) == 1  # b's beat ran out: only a counts
    assert await a.heartbeat("a", HELD_S) == 1


# -- fencing ----------------------------------------------------------------------------------


async def test_lease_lost_is_a_store_error_under_monitor_error() -> None:
    exc = LeaseLost("acme", "a", 3)
    assert isinstance(exc, StoreError) and isinstance(exc, MonitorError)
    assert "acme" in str(exc) and "epoch 3" in str(exc)


async def test_a_fenced_holder_commits_claims_and_marks(store: Store) -> None:
    fence = await store.acquire_lease("acme", "a", HELD_S)
    store.set_fence(fence)
    await store.commit(SnapshotChanges(upserts=(job("j1"),)), [routed("e1", "slack")], now=T0)
    [claimed] = await store.claim_due("slack", T0, 10, LEASE_S)
    await store.mark_delivered(claimed.event.id, "slack")
    assert (await store.outbox_counts())["slack"][OutboxState.DELIVERED] == 1
    assert set(await store.load_snapshot()) == {"j1"}


async def test_after_a_takeover_the_old_holder_commits_claims_and_marks_nothing(
    store_backend: StoreBackend,
) -> None:
    a, b = await replicas(store_backend)
    old = await a.acquire_lease("acme", "a", EXPIRED_S)
    assert old is not None
    a.set_fence(old)
    await emit(a, "e1")  # while a holds it
    [claimed] = await a.claim_due("slack", T0, 10, LEASE_S)
    lost: list[Fence] = []
    a.on_lease_lost(lost.append)
    new = await b.acquire_lease("acme", "b", HELD_S)
    assert new is not None and new.epoch == old.epoch + 1

    with pytest.raises(LeaseLost) as refused:
        await a.commit(SnapshotChanges(upserts=(job("j1"),)), [routed("e2", "slack")], now=T0)
    assert (refused.value.account, refused.value.owner, refused.value.epoch) == ("acme", "a", 1)
    with pytest.raises(LeaseLost):
        await a.mark_delivered(claimed.event.id, "slack")
    with pytest.raises(LeaseLost):
        await a.claim_due("slack", T0 + 2 * LEASE_S, 10, LEASE_S)
    with pytest.raises(LeaseLost):
        await a.mark_failed(claimed.event.id, "slack", "boom", None)
    assert lost == [old] * 4

    assert await b.load_snapshot() == {}
    counts = (await b.outbox_counts())["slack"]
    assert counts[OutboxState.CLAIMED] == 1 and counts[OutboxState.DELIVERED] == 0
    assert [e.event.id for e in await b.list_outbox(OutboxState.PENDING)] == []


async def test_a_new_leader_releases_the_old_leaders_claims_and_delivers_them(
    store_backend: StoreBackend,
) -> None:
    a, b = await replicas(store_backend)
    old = await a.acquire_lease("acme", "a", EXPIRED_S)
    a.set_fence(old)
    await emit(a, "e1", "e2")
    assert len(await a.claim_due("slack", T0, 10, LEASE_S)) == 2
    b.set_fence(await b.acquire_lease("acme", "b", HELD_S))
    assert await b.release_claims("slack", T0 + 1) == 2  # at once, not after the claim's lease
    again = await b.claim_due("slack", T0 + 1, 10, LEASE_S)
    assert [e.event.id for e in again] == ["e1", "e2"]
    await b.mark_delivered_many("slack", ["e1", "e2"])
    assert (await b.outbox_counts())["slack"][OutboxState.DELIVERED] == 2


async def test_lease_operations_are_never_fenced(store_backend: StoreBackend) -> None:
    """A replica that lost one lease still beats, reads leases and takes a free one."""
    a, b = await replicas(store_backend)
    old = await a.acquire_lease("acme", "a", EXPIRED_S)
    a.set_fence(old)
    assert await b.acquire_lease("acme", "b", HELD_S) is not None
    assert await a.heartbeat("a", HELD_S) == 1
    assert await a.acquire_lease("globex", "a", HELD_S) == Fence("globex", "a", 1)
    assert (await a.leases())["acme"].owner == "b"


async def test_reads_are_not_fenced(store_backend: StoreBackend) -> None:
    a, b = await replicas(store_backend)
    a.set_fence(await a.acquire_lease("acme", "a", EXPIRED_S))
    await emit(a, "e1")
    await b.acquire_lease("acme", "b", HELD_S)
    assert [e.event.id for e in await a.list_outbox(OutboxState.PENDING)] == ["e1"]


async def test_a_refused_write_cancelled_meanwhile_still_commits_nothing(
    store_backend: StoreBackend,
) -> None:
    a, b = await replicas(store_backend)
    a.set_fence(await a.acquire_lease("acme", "a", EXPIRED_S))
    await b.acquire_lease("acme", "b", HELD_S)
    write = asyncio.ensure_future(
        a.commit(SnapshotChanges(upserts=(job("j1"),)), [routed("e1", "slack")], now=T0)
    )
    await asyncio.sleep(0)
    write.cancel()
    with pytest.raises((asyncio.CancelledError, LeaseLost)):
        await write
    await a.close()  # waits for the shielded write
    assert await b.load_snapshot() == {}


async def test_an_account_store_beside_the_base_is_fenced_by_the_bases_leases(
    store_backend: StoreBackend,
) -> None:
    """An account's own state (another file or schema) is fenced by the lease row every
    replica takes in the base store."""
    base, other = await replicas(store_backend)
    account_url = store_backend.url_beside("acme")
    mine, theirs = store_backend.build_at(account_url), store_backend.build_at(account_url)
    for handle in (mine, theirs):
        handle.share_leases_of(store_backend.url)
        await handle.open()
    old = await base.acquire_lease("acme", "a", EXPIRED_S)
    mine.set_fence(old)
    await emit(mine, "e1")  # fenced by the base's row, which `mine` holds
    new = await other.acquire_lease("acme", "b", HELD_S)
    theirs.set_fence(new)
    with pytest.raises(LeaseLost):
        await emit(mine, "e2")
    await emit(theirs, "e3")
    assert [e.event.id for e in await theirs.list_outbox(OutboxState.PENDING)] == ["e1", "e3"]
    assert await base.list_outbox(OutboxState.PENDING) == []  # the base's own state is apart


async def test_sharing_its_own_leases_changes_nothing(store_backend: StoreBackend) -> None:
    store = store_backend.build()
    store.share_leases_of(store_backend.url)
    await store.open()
    store.set_fence(await store.acquire_lease("acme", "a", HELD_S))
    await emit(store, "e1")
    assert len(await store.list_outbox(OutboxState.PENDING)) == 1


async def test_a_dispatcher_fenced_out_logs_one_line_without_a_traceback(
    store_backend: StoreBackend,
) -> None:
    """Replica a's dispatcher finds its lease taken at its next claim: an expected turn of
    events (its lease keeper stops the account's work), one warning naming the lease, not an
    error with a traceback; b's outbox is untouched."""
    a, b = await replicas(store_backend)
    old = await a.acquire_lease("acme", "a", EXPIRED_S)
    assert old is not None
    a.set_fence(old)
    await emit(a, "e1", notifiers=("sink",))
    assert await b.acquire_lease("acme", "b", HELD_S) is not None
    receiver = await WebhookReceiver().start()
    notifier = NotifierRegistry.from_entry_points().create(
        NotifierSpec.model_validate({"name": "sink", "type": "webhook", "url": receiver.url}),
        timeout_s=5.0,
    )
    dispatcher = Dispatcher(a, {"sink": notifier}, DeliveryConfig(), Metrics())
    try:
        with structlog.testing.capture_logs() as logs:
            dispatcher.start()
            await wait_until(
                lambda: _true(any(x["event"] == "delivery_loop_failed" for x in logs)), 10,
                "the fenced claim")
            await dispatcher.stop(2)
    finally:
        await notifier.close()
        await receiver.close()
    [line, *_] = [x for x in logs if x["event"] == "delivery_loop_failed"]
    assert line["log_level"] == "warning" and "exc_info" not in line
    assert "lost the lease of account 'acme'" in line["error"]
    assert receiver.deliveries == []
    assert (await b.outbox_counts())["sink"][OutboxState.PENDING] == 1


async def _true(value: bool) -> bool:
    return value
