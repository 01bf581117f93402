"""Which replica works which Box account: one `LeaseKeeper` per replica holds account leases in
the shared store and starts or stops each account's work (polling and delivery) with them.

Every third of `ttl_s` a round beats the replica registry (N live replicas), renews the leases
held, and takes free ones while it holds fewer than ceil(M / N) of the M accounts, so healthy
replicas share the accounts and a survivor takes over the leases of one that died once they
ran out. A replica holding more than its share gives one back per round (rebalanced).

Losing a lease stops that account's work at once: a renewal refused (someone took it), no
renewal for a whole TTL by this replica's own monotonic clock (expired: the store may already
have handed it on; a failed renewal steps down a round early rather than a round late), or a
fenced write refused anywhere (`LeaseLost`, heard through the store's listener). Each
step-down is one log line and a count by reason; the replica stays a standby. Correctness does
not rest on noticing quickly: the fence refuses every write of a lost lease. A clean `stop()`
releases every lease so a standby takes over at its next round.

Work that fails to start gives its lease back; in the first round (`start()`) the failure
propagates, so a replica that cannot work an account at all (another Box user's store, say)
refuses to start as a single process would."""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import socket
import time
import uuid
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Protocol

import structlog

from monitor.metrics import Metrics
from monitor.store.base import Fence, LeaseStore, StoreLifecycle

log = structlog.get_logger(__name__)

# Why this replica's role for an account changed (`box_docgen_lease_transitions_total`).
ACQUIRED = "acquired"
RELEASED = "released"  # a clean shutdown gave it up
REBALANCED = "rebalanced"  # held more than its share: given to a replica with fewer
LOST = "lost"  # a renewal found that another replica took it
EXPIRED = "expired"  # not renewed for a whole TTL (the store did not answer)
FENCED = "fenced"  # a write was refused by the fence


class AccountWork(Protocol):
    """An account's polling and delivery: started with the lease's fence when this replica
    gains it, stopped when it gives it up (`graceful`: drain deliveries) or loses it (not
    graceful: stop at once, nothing it does can commit anyway)."""

    async def start(self, fence: Fence) -> None: ...

    async def stop(self, *, graceful: bool) -> None: ...


class KeeperStore(LeaseStore, StoreLifecycle, Protocol):
    """What the keeper uses: the leases, and a reopen when the store refuses writes."""


def replica_id() -> str:
    """This process's name among replicas: host (the pod's name), pid and a random part, so
    a restarted process is a new replica."""
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


@dataclass(slots=True)
class _Held:
    fence: Fence
    renewed_at: float  # monotonic: when the last successful acquisition or renewal began


class LeaseKeeper:
    """Holds this replica's share of the account leases and runs their work."""

    def __init__(
        self,
        store: KeeperStore,
        work: Mapping[str, AccountWork],
        metrics: Metrics,
        *,
        ttl_s: float,
        replica: str | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self.work = dict(work)
        self.metrics = metrics
        self.ttl_s = ttl_s
        self.replica = replica or replica_id()
        self.monotonic = monotonic
        self.live_replicas = 1
        #: Why the store refuses this replica's writes while it answers reads (a read-only
        #: state file): a restart is the way out (`/healthz`). None while it can write.
        self.unwritable: str | None = None
        self._reopened = False
        self._held: dict[str, _Held] = {}
        self._lock = asyncio.Lock()  # rounds and step-downs never interleave
        self._task: asyncio.Task[None] | None = None
        self._step_downs: set[asyncio.Task[None]] = set()
        # Where this replica starts looking for a free account: replicas start at different
        # ones, so at start-up they do not all race for the first.
        accounts = sorted(self.work)
        start = zlib.crc32(self.replica.encode()) % max(len(accounts), 1)
        self._order = accounts[start:] + accounts[:start]
        for account in accounts:
            metrics.leader.labels(account).set(0)

    @property
    def leading(self) -> list[str]:
        """The accounts this replica holds the lease of, sorted."""
        return sorted(self._held)

    @property
    def round_s(self) -> float:
        return self.ttl_s / 3

    def fence_of(self, account: str) -> Fence | None:
        held = self._held.get(account)
        return None if held is None else held.fence

    async def start(self) -> None:
        """Run the first round now (a lone replica leads before this returns), then every
        third of the TTL."""
        await self.run_round(first=True)
        self._task = asyncio.create_task(self._run(), name="lease-keeper")

    async def stop(self) -> None:
        """Stop every account's work, release its lease, and leave the registry."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        for task in list(self._step_downs):
            with contextlib.suppress(Exception):
                await task
        async with self._lock:  # every account at once: each drains within the deadline
            await asyncio.gather(*(self._give_up(a, RELEASED) for a in list(self._held)))
            try:
                await self.store.leave(self.replica)
            except Exception as exc:
                log.warning("lease_leave_failed", replica=self.replica, error=str(exc))

    def lease_lost(self, fence: Fence) -> None:
        """The store's listener: a write under `fence` was refused. Stops the account's work
        soon after (this runs inside the refused write's caller)."""
        held = self._held.get(fence.account)
        if held is None or held.fence != fence:
            return
        task = asyncio.get_running_loop().create_task(
            self._step_down_if(fence, FENCED), name=f"step-down-{fence.account}"
        )
        self._step_downs.add(task)
        task.add_done_callback(self._step_downs.discard)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.round_s)
            try:
                await self.run_round()
            except Exception:
                log.exception("lease_round_failed", replica=self.replica)

    async def run_round(self, *, first: bool = False) -> None:
        """One round: beat, renew, give back beyond the share, take free accounts. In the
        `first`, work that fails to start raises (after giving its lease back)."""
        async with self._lock:
            try:
                self.live_replicas = await self.store.heartbeat(self.replica, self.ttl_s)
            except Exception as exc:
                log.warning("lease_heartbeat_failed", replica=self.replica, error=str(exc))
                await self._renew_all()  # only stepping down when they run out
                await self._check_writable(exc)
                return
            self.unwritable, self._reopened = None, False
            await self._renew_all()
            share = math.ceil(len(self.work) / max(self.live_replicas, 1))
            if len(self._held) > share:
                await self._give_up(sorted(self._held)[-1], REBALANCED)
            for account in self._order:
                if len(self._held) >= share:
                    break
                if account not in self._held:
                    await self._try_acquire(account, first)
            await self._export_epochs()

    async def _check_writable(self, error: Exception) -> None:
        """A store that answers but refuses the heartbeat cannot be written (an unreachable
        one is an outage to wait out): it is closed and opened again, once; if it still
        refuses, this replica reports itself not alive."""
        try:
            await self.store.ping()
        except Exception:
            return
        if not self._reopened:
            self._reopened = True
            log.error("store_reopening", error=str(error))
            try:
                await self.store.close()
                await self.store.open()
            except Exception as exc:
                log.warning("store_reopen_failed", error=str(exc))
            return
        if self.unwritable is None:
            self.unwritable = f"state store cannot be written: {error}"
            log.error("store_unwritable", reason=self.unwritable, action="restart the daemon")

    async def _renew_all(self) -> None:
        for account, held in list(self._held.items()):
            began = self.monotonic()
            if began - held.renewed_at >= self.ttl_s:
                await self._step_down(account, EXPIRED)
                continue
            try:
                renewed = await self.store.renew_lease(held.fence, self.ttl_s)
            except Exception as exc:
                log.warning(
                    "lease_renew_failed", account=account, epoch=held.fence.epoch, error=str(exc)
                )
                if self.monotonic() + self.round_s >= held.renewed_at + self.ttl_s:
                    await self._step_down(account, EXPIRED)  # it runs out before next round
                continue
            if renewed:
                held.renewed_at = began
            else:
                await self._step_down(account, LOST)

    async def _try_acquire(self, account: str, fatal: bool) -> None:
        began = self.monotonic()
        try:
            fence = await self.store.acquire_lease(account, self.replica, self.ttl_s)
        except Exception as exc:
            log.warning("lease_acquire_failed", account=account, error=str(exc))
            return
        if fence is None:
            return
        self._held[account] = _Held(fence, began)
        self.metrics.leader.labels(account).set(1)
        self.metrics.lease_epoch.labels(account).set(fence.epoch)
        self.metrics.lease_transitions.labels(account, ACQUIRED).inc()
        log.info("lease_acquired", account=account, replica=self.replica, epoch=fence.epoch)
        try:
            await self.work[account].start(fence)
        except Exception:
            await self._give_up(account, RELEASED)
            if fatal:
                raise
            log.exception("account_start_failed", account=account, epoch=fence.epoch)

    async def _export_epochs(self) -> None:
        try:
            leases = await self.store.leases()
        except Exception as exc:
            log.warning("lease_read_failed", error=str(exc))
            return
        for account, lease in leases.items():
            if account in self.work:
                self.metrics.lease_epoch.labels(account).set(lease.epoch)

    async def _step_down_if(self, fence: Fence, reason: str) -> None:
        async with self._lock:
            held = self._held.get(fence.account)
            if held is not None and held.fence == fence:
                await self._step_down(fence.account, reason)

    async def _step_down(self, account: str, reason: str) -> None:
        """The lease is gone or may be: stop the work at once, become a standby for it."""
        held = self._held.pop(account)
        self.metrics.leader.labels(account).set(0)
        self.metrics.lease_transitions.labels(account, reason).inc()
        log.warning(
            "lease_lost",
            account=account,
            replica=self.replica,
            epoch=held.fence.epoch,
            reason=reason,
            role="standby",
        )
        await self._stop_work(account, graceful=False)
        if reason == EXPIRED:  # the store may still count it held: free it if it answers
            await self._release(held.fence)

    async def _release(self, fence: Fence) -> None:
        try:
            await self.store.release_lease(fence)
        except Exception as exc:  # it runs out after its TTL instead
            log.warning("lease_release_failed", account=fence.account, error=str(exc))

    async def _give_up(self, account: str, reason: str) -> None:
        """Stop the work (draining it), then release the lease for the next taker."""
        held = self._held.pop(account)
        self.metrics.leader.labels(account).set(0)
        self.metrics.lease_transitions.labels(account, reason).inc()
        await self._stop_work(account, graceful=True)
        await self._release(held.fence)
        log.info(
            "lease_released", account=account, replica=self.replica, epoch=held.fence.epoch,
            reason=reason,
        )

    async def _stop_work(self, account: str, *, graceful: bool) -> None:
        try:
            await self.work[account].stop(graceful=graceful)
        except Exception:
            log.exception("account_stop_failed", account=account)
        self.metrics.forget_holder_gauges(account)  # the holder exports them
