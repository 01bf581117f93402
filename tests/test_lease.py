"""LeaseKeeper: replicas share the accounts, take over those of a replica that died, step down
when a lease is lost, and release on a clean stop. Every keeper works on a real store (both
backends); rounds are driven by the test (`run_round`), so nothing waits for a timer, and a
keeper's own clock (monotonic) is injected where a test is about it."""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

import pytest
import structlog

from monitor.errors import LeaseLost
from monitor.lease import LeaseKeeper
from monitor.metrics import Metrics
from monitor.model import SnapshotChanges
from monitor.store.base import Fence, Store

if TYPE_CHECKING:
    from tests.store_fixtures import StoreBackend

TTL_S = 15.0  # the default; no test here waits for it


class Work:
    """An account's work as the keeper sees it: what it was started with, whether it runs."""

    def __init__(self) -> None:
        self.fence: Fence | None = None
        self.running = False
        self.stops: list[bool] = []  # graceful or not, per stop

    async def start(self, fence: Fence) -> None:
        self.fence, self.running = fence, True

    async def stop(self, *, graceful: bool) -> None:
        self.running = False
        self.stops.append(graceful)


class Replica:
    def __init__(
        self, store: Store, name: str, accounts: list[str], ttl_s: float = TTL_S,
        monotonic: object = time.monotonic,
    ) -> None:
        self.store = store
        self.metrics = Metrics()
        self.work = {a: Work() for a in accounts}
        self.keeper = LeaseKeeper(
            store, self.work, self.metrics, ttl_s=ttl_s, replica=name,
            monotonic=monotonic,  # type: ignore[arg-type]
        )
        store.on_lease_lost(self.keeper.lease_lost)

    def value(self, name: str, **labels: str) -> float | None:
        return self.metrics.registry.get_sample_value(name, labels)


async def replicas(
    store_backend: StoreBackend, n: int, accounts: list[str], **kw: object
) -> list[Replica]:
    out = []
    for i in range(n):
        store = store_backend.build()
        await store.open()
        out.append(Replica(store, f"r{i}", accounts, **kw))  # type: ignore[arg-type]
    return out


async def settle(rs: list[Replica], rounds: int = 3) -> None:
    for _ in range(rounds):
        for r in rs:
            await r.keeper.run_round()


async def test_a_lone_replica_leads_every_account_from_its_first_round(
    store_backend: StoreBackend,
) -> None:
    [r] = await replicas(store_backend, 1, ["acme", "globex"])
    await r.keeper.start()
    try:
        assert r.keeper.leading == ["acme", "globex"]
        assert all(w.running and w.fence is not None for w in r.work.values())
        assert r.value("box_docgen_leader", account="acme") == 1
        assert r.value("box_docgen_lease_epoch", account="acme") == 1
        assert r.value("box_docgen_lease_transitions_total", account="acme", reason="acquired") == 1
    finally:
        await r.keeper.stop()


async def test_replicas_spread_the_accounts_at_most_ceil_m_over_n_each(
    store_backend: StoreBackend,
) -> None:
    accounts = ["a1", "a2", "a3"]
    rs = await replicas(store_backend, 2, accounts)
    await rs[0].keeper.run_round()  # alone at first: takes all three
    assert rs[0].keeper.leading == accounts
    await settle(rs)
    held = [r.keeper.leading for r in rs]
    assert sorted(a for h in held for a in h) == accounts  # each exactly once
    assert sorted(len(h) for h in held) == [1, 2]
    assert sum(
        r.value("box_docgen_lease_transitions_total", account=a, reason="rebalanced") or 0
        for r in rs for a in accounts
    ) == 1
    # The account given back was drained (graceful stop), never left running on both.
    for a in accounts:
        assert sum(r.work[a].running for r in rs) == 1


async def test_two_accounts_on_three_replicas_go_to_two_different_replicas(
    store_backend: StoreBackend,
) -> None:
    rs = await replicas(store_backend, 3, ["acme", "globex"])
    for r in rs:
        await r.store.heartbeat(r.keeper.replica, TTL_S)  # all three are up
    await settle(rs)
    held = [r.keeper.leading for r in rs]
    assert sorted(len(h) for h in held) == [0, 1, 1]
    assert sorted(a for h in held for a in h) == ["acme", "globex"]


async def test_a_standby_takes_over_the_lease_of_a_replica_that_died(
    store_backend: StoreBackend,
) -> None:
    # A short TTL: this test is about a lease running out, which the store judges by its clock.
    a, b = await replicas(store_backend, 2, ["acme"], ttl_s=0.3)
    await a.keeper.run_round()
    await b.keeper.run_round()
    assert a.keeper.leading == ["acme"] and b.keeper.leading == []
    # a dies: no more rounds. b takes over once the lease ran out.
    deadline = time.monotonic() + 5
    while b.keeper.leading != ["acme"]:
        assert time.monotonic() < deadline, "b never took over"
        await asyncio.sleep(0.1)
        await b.keeper.run_round()
    assert b.work["acme"].fence == Fence("acme", "r1", 2)
    # a wakes: its writes are refused, and it steps down.
    a.store.set_fence(a.work["acme"].fence)
    with pytest.raises(LeaseLost):
        await a.store.commit(SnapshotChanges(), [])
    await asyncio.sleep(0)
    for task in list(a.keeper._step_downs):
        await task
    assert a.keeper.leading == [] and not a.work["acme"].running
    assert a.work["acme"].stops == [False]  # at once, no drain
    assert a.value("box_docgen_lease_transitions_total", account="acme", reason="fenced") == 1
    assert a.value("box_docgen_leader", account="acme") == 0


async def test_a_clean_stop_releases_so_a_standby_takes_over_at_its_next_round(
    store_backend: StoreBackend,
) -> None:
    a, b = await replicas(store_backend, 2, ["acme"])
    await a.keeper.run_round()
    await b.keeper.run_round()
    await a.keeper.stop()
    assert a.work["acme"].stops == [True]
    await b.keeper.run_round()
    assert b.keeper.leading == ["acme"]
    assert (await b.store.heartbeat("r1", TTL_S)) == 1  # a left the registry


async def test_a_refused_renewal_steps_down_as_lost(store_backend: StoreBackend) -> None:
    a, b = await replicas(store_backend, 2, ["acme"])
    await a.keeper.run_round()
    acme = a.metrics.for_account("acme")  # what the work exported while it led
    acme.jobs.labels("pending").set(3)
    acme.active_batches.set(2)
    fence = a.keeper.fence_of("acme")
    assert fence is not None
    await a.store.release_lease(fence)  # as if it ran out and...
    assert await b.store.acquire_lease("acme", "r1", TTL_S) is not None  # ...b took it
    with structlog.testing.capture_logs() as logs:
        await a.keeper.run_round()
    assert a.keeper.leading == [] and not a.work["acme"].running
    assert a.value("box_docgen_lease_transitions_total", account="acme", reason="lost") == 1
    # Only holders export job and batch gauges, so a sum over replicas is right.
    assert a.value("box_docgen_jobs", account="acme", status="pending") is None
    assert a.value("box_docgen_active_batches", account="acme") is None
    [line] = [e for e in logs if e["event"] == "lease_lost"]
    assert line["account"] == "acme" and line["reason"] == "lost" and line["role"] == "standby"


async def test_a_lease_not_renewed_for_a_whole_ttl_steps_down_as_expired(
    store_backend: StoreBackend,
) -> None:
    """By this replica's own clock: a paused or cut-off leader stops without asking the store."""
    now = [1000.0]
    [a] = await replicas(store_backend, 1, ["acme"], monotonic=lambda: now[0])
    await a.keeper.run_round()
    now[0] += TTL_S / 3
    await a.keeper.run_round()
    assert a.keeper.leading == ["acme"]
    now[0] += TTL_S  # the last renewal began a whole TTL ago
    await a.keeper.run_round()
    assert a.value("box_docgen_lease_transitions_total", account="acme", reason="expired") == 1
    assert a.work["acme"].stops == [False]  # stopped at once...
    # ...and released: the store answers again, so the same round takes it with a new epoch.
    assert a.keeper.leading == ["acme"] and a.work["acme"].running
    assert a.work["acme"].fence == Fence("acme", "r0", 2)
