"""One Box account's monitoring, as a unit that starts and stops on its own: its credentials,
request budget and token (`BoxClient`), its state store (snapshot, outbox, threads, identity),
its active set and `PollSchedule`, `Poller`, `Recorder`, `Dispatcher`, notifier instances and
identity check. The daemon runs one unit per configured account and shares the rest (the
notifier registry, the web server, the metrics registry).

`start()` and `stop()` may alternate any number of times: a replica that holds an account's
lease runs its unit (`start(fence)`: every write of its store checks the lease's epoch) and
stops it when the lease moves (`stop(graceful=False)`: no drain, nothing could commit anyway);
`AccountUnit` is the `AccountWork` of `monitor.lease`. Notifier *instances* belong to the unit
(their configuration is shared) because a notifier keeps its state (Slack threads, pending
edits, email group marks) in the account's store, and a unit must start and stop alone."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Iterable
from contextlib import AsyncExitStack
from dataclasses import dataclass
from enum import Enum
from typing import Any

import structlog

from monitor.box.auth import Auth
from monitor.box.budget import RequestBudget
from monitor.box.client import BoxClient
from monitor.box.connect import make_auth, make_box_client
from monitor.box.errors import BoxError
from monitor.box.webhooks import SignatureKeys, Verifier
from monitor.config import (
    AccountConfig,
    BoxConfig,
    Config,
    JWTAuthConfig,
)
from monitor.hints import BoxHints
from monitor.identity import IdentityGuard
from monitor.logging import log_failure
from monitor.metrics import Metrics
from monitor.notify.base import Notifier, NotifierRegistry
from monitor.notify.dispatcher import Dispatcher
from monitor.notify.router import Router
from monitor.poller import Poller
from monitor.recorder import META_BASELINE_AT, META_LAST_SWEEP_AT, Recorder
from monitor.schedule import PollSchedule
from monitor.store import open_store
from monitor.store.base import Fence, SilenceReader, SnapshotReader, Store
from monitor.store.registry import account_url
from monitor.stuck import StuckPolicy
from monitor.template_rates import policy_of
from monitor.ui import PollingHealth

log = structlog.get_logger(__name__)

GAUGE_REFRESH_S = 5.0
#: Consecutive failed commits after which the store is closed and opened again.
STORE_WRITE_FAILURES_BEFORE_REOPEN = 3
PRUNE_EVERY_S = 3600.0


class RunState(Enum):
    NEW = "new"
    RUNNING = "running"
    STOPPED = "stopped"


def account_path(config: Config, name: str) -> str:
    """The prefix of an account's settings' paths in `config`: empty for the top-level `box:`
    (`box.timeout`), else `accounts[i].` (`accounts[1].box.timeout`)."""
    if config.accounts is None:
        return ""
    index = next((i for i, a in enumerate(config.accounts) if a.name == name), name)
    return f"accounts[{index}]."


def auth_changed(old: BoxConfig, new: BoxConfig) -> bool:
    """A JWT `config_file` may hold new keys under the same path: it is read again."""
    return new.auth != old.auth or isinstance(new.auth, JWTAuthConfig)


@dataclass(slots=True)
class PreparedReload:
    """What a reload built for one unit before anything is swapped: its new auth (None when
    unchanged) and its new notifiers, started. `discard()` closes them when the reload fails."""

    account: AccountConfig
    config: Config
    auth: Auth | None
    notifiers: dict[str, Notifier]

    async def discard(self) -> None:
        if self.auth is not None:
            await self.auth.aclose()
        await close_all(self.notifiers.values())


class AccountUnit:
    """The monitoring of one Box account (see the module docstring)."""

    def __init__(
        self,
        account: AccountConfig,
        config: Config,
        *,
        registry: NotifierRegistry,
        metrics: Metrics,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        adopt_identity: bool = False,
        accept_mass_vanish: bool = False,
        silences: SilenceReader | None = None,
    ) -> None:
        """`account` has its poll and routes settled (`Config.account_configs`); `config`
        gives what every account shares (state, delivery, notifiers, baseline, http);
        `silences` is where silences are read (None: this account's store, which is then
        `state.url` itself)."""
        self.name = account.name
        self.account = account
        self.config = config
        self.registry = registry
        self.metrics = metrics
        self.clock = clock
        self.monotonic = monotonic
        self.adopt_identity = adopt_identity
        self.accept_mass_vanish = accept_mass_vanish
        self.silences = silences
        self.state = RunState.NEW
        self._stack: AsyncExitStack | None = None
        self._notifiers: dict[str, Notifier] = {}
        self._dead_reason: str | None = None
        self._store_reopened = False
        self._graceful = True
        #: Told of a write the fence refused (the lease keeper steps down at once).
        self.lease_lost_listener: Callable[[Fence], None] | None = None
        self.budget: RequestBudget | None = None
        # One handle for the unit's life (opened on each start, closed on each stop); the
        # status page reads the daemon's per-account reader instead, open on a standby too.
        self.store: Store = open_store(self.state_url)
        self.box: BoxClient
        self.identity: IdentityGuard
        self.recorder: Recorder
        self.poller: Poller
        self.schedule: PollSchedule
        self.dispatcher: Dispatcher
        self.hints: BoxHints | None = None  # Box webhooks, when `box.webhook` has a key

    @property
    def state_url(self) -> str:
        """This account's store: `state.url` itself for `default`, else one derived from it."""
        return account_url(self.config.state.url, self.name)

    @property
    def running(self) -> bool:
        return self.state is RunState.RUNNING

    def _log_context(self) -> contextlib.AbstractContextManager[Any]:
        """Every log line of the unit, and of the tasks it starts, names the account."""
        return structlog.contextvars.bound_contextvars(account=self.name)

    # -- lifecycle ----------------------------------------------------------------------------

    async def start(self, fence: Fence | None = None) -> None:
        """Open the store, check the identity, start delivery and polling; with a `fence`,
        every write of the store checks that lease first. A failure part-way closes what was
        opened and leaves the unit stopped (it may be started again)."""
        if self.state is RunState.RUNNING:
            raise RuntimeError(f"account {self.name} is already running")
        self._stack = AsyncExitStack()
        self._dead_reason = None
        self._store_reopened = False
        self._graceful = True
        with self._log_context():
            try:
                await self._start(self._stack, fence)
            except BaseException:
                await self._stack.aclose()
                self._stack = None
                self.state = RunState.STOPPED
                raise
        self.state = RunState.RUNNING
        log.info("account_started", account=self.name)

    async def stop(self, *, graceful: bool = True) -> None:
        """Stop polling, drain delivery within `delivery.drain_timeout` (not `graceful`: at
        once, a lease lost), close. Idempotent."""
        if self.state is not RunState.RUNNING or self._stack is None:
            return
        self.state = RunState.STOPPED
        self._graceful = graceful
        stack, self._stack = self._stack, None
        with self._log_context():
            await stack.aclose()
        log.info("account_stopped", account=self.name)

    async def _start(self, stack: AsyncExitStack, fence: Fence | None) -> None:
        cfg, account = self.config, self.account
        poll = account.poll or cfg.poll
        if self.state_url != cfg.state.url:  # the daemon holds the base store's
            stack.enter_context(self.store.replica_lock())  # SQLite: one replica at a time
        self.store.share_leases_of(cfg.state.url)  # fenced by the leases every account shares
        self.store.set_fence(fence)
        self.store.on_lease_lost(self.lease_lost_listener)
        await self.store.open()
        stack.push_async_callback(self.store.close)

        _, box = make_box_client(account.box, self.metrics, account_path(cfg, self.name) + "box")
        self.box = box
        self.budget = box.budget
        stack.push_async_callback(lambda: self.box.auth.aclose())  # the current one
        await stack.enter_async_context(box)

        self.identity = IdentityGuard(
            box, self.store, self.metrics, adopt=self.adopt_identity, clock=self.clock
        )
        await self._check_identity()

        self._notifiers = await self.open_notifiers(cfg)
        self.dispatcher = Dispatcher(
            self.store, self._notifiers, cfg.delivery, self.metrics, silences=self.silences
        )
        self.dispatcher.start()
        stack.push_async_callback(self._stop_delivery)

        self.recorder = Recorder(
            self.store,
            Router(account.routes if account.routes is not None else cfg.routes),
            self.metrics,
            baseline=cfg.baseline,
            stuck=StuckPolicy(poll.stuck_after, dict(poll.stuck_after_by_template)),
            rates=policy_of(cfg.template_failures),
            wake=self.dispatcher.wake,
            clock=self.clock,
            account=self.name,
        )
        self.poller = Poller(
            box,
            self.store,
            self.recorder,
            self.metrics,
            page_size=account.box.page_size,
            watch_ttl_s=poll.watch_ttl,
            max_watched=cfg.http.max_watched_batches,
            vanish_confirm_max=poll.vanish_confirm_max,
            identity=self.identity,
            accept_mass_vanish=self.accept_mass_vanish,
            clock=self.clock,
            monotonic=self.monotonic,
        )
        await self.poller.start()
        await self.recorder.refresh_job_gauge()
        self.hints = self._box_hints(stack)
        self.schedule = PollSchedule(
            self.poller,
            poll,
            self.metrics,
            budget=self.budget,
            last_success_at=_float_or_none(await self.store.get_meta(META_LAST_SWEEP_AT)),
            clock=self.clock,
            monotonic=self.monotonic,
            webhooks_healthy=self.hints.healthy if self.hints is not None else None,
        )
        gauges = asyncio.create_task(self._refresh_gauges(), name=f"gauges:{self.name}")
        stack.push_async_callback(cancel, gauges)
        if cfg.delivery.retention > 0:
            pruner = asyncio.create_task(
                self._prune_forever(cfg.delivery.retention), name=f"prune:{self.name}"
            )
            stack.push_async_callback(cancel, pruner)
        await self.schedule.start(stack)

    def _box_hints(self, stack: AsyncExitStack) -> BoxHints | None:
        """Box's webhooks as hints to poll (`monitor/hints.py`), when a signature key is set;
        gone with the unit's stop (`hints` is None while it is stopped)."""
        hook = self.account.box.webhook
        if not hook.enabled or hook.primary_key is None:
            return None
        hints = BoxHints(
            self.poller,
            Verifier(SignatureKeys(hook.primary_key, hook.secondary_key), clock=self.clock),
            self.metrics,
            healthy_within_s=hook.healthy_within,
            monotonic=self.monotonic,
        )
        stack.push_async_callback(self._close_hints, hints)
        return hints

    async def _close_hints(self, hints: BoxHints) -> None:
        self.hints = None
        await hints.close()

    async def _check_identity(self) -> None:
        """Whose jobs the credentials see, against the store's record: another identity stops
        the start (`IdentityMismatch`). Box unreachable now: the first sweep asks again before
        it commits anything."""
        try:
            identity = await self.identity.verify()
        except BoxError as exc:
            log.warning("identity_unverified", error=str(exc), next_try="before the first sweep")
            return
        log.info("box_identity", user_id=identity.user_id, enterprise_id=identity.enterprise_id)

    # -- delivery and live reconfiguration ----------------------------------------------------

    async def open_notifiers(self, config: Config) -> dict[str, Notifier]:
        """This unit's instance of every notifier of `config`, started; if one fails, those
        already started close."""
        opened: dict[str, Notifier] = {}
        try:
            for spec in config.notifiers:
                notifier = self.registry.create(spec, timeout_s=config.delivery.timeout)
                notifier.show_account = len(config.account_configs) > 1
                await notifier.start()
                opened[spec.name] = notifier
        except BaseException:
            await close_all(opened.values())
            raise
        return opened

    async def _stop_delivery(self) -> None:
        await self.dispatcher.stop(self.config.delivery.drain_timeout if self._graceful else 0.0)
        await close_all(self._notifiers.values())
        self._notifiers = {}

    async def prepare_reload(self, account: AccountConfig, config: Config) -> PreparedReload:
        """Build what a reload to (`account`, `config`) needs, changing nothing yet. A unit
        that is not running needs nothing built: it starts with the new settings."""
        if not self.running:
            return PreparedReload(account, config, None, {})
        auth: Auth | None = None
        if auth_changed(self.account.box, account.box):
            auth = make_auth(account.box, self.metrics, account_path(config, self.name) + "box")
        try:
            notifiers = await self.open_notifiers(config)
        except BaseException:
            if auth is not None:
                await auth.aclose()
            raise
        return PreparedReload(account, config, auth, notifiers)

    async def apply_reload(self, prepared: PreparedReload) -> None:
        """Swap in what `prepare_reload` built: new auth, routes, notifiers and dispatcher."""
        new, account = prepared.config, prepared.account
        if not self.running:
            self.account, self.config = account, new
            return
        with self._log_context():
            if prepared.auth is not None:
                await self.box.replace_auth(prepared.auth)
                self.identity.forget()  # new credentials may act for someone else
                log.info("box_auth_reloaded", method=account.box.auth.method)
            old_notifiers, old_delivery = self._notifiers, self.config.delivery
            # Rows routed to a notifier now wait in the outbox until its worker starts below.
            routes = account.routes if account.routes is not None else new.routes
            self.recorder.set_router(Router(routes))
            await self.dispatcher.stop(old_delivery.drain_timeout)
            await close_all(old_notifiers.values())
            self._notifiers = prepared.notifiers
            self.dispatcher = Dispatcher(
                self.store, prepared.notifiers, new.delivery, self.metrics,
                silences=self.silences,
            )
            self.dispatcher.start()
            self.recorder.set_wake(self.dispatcher.wake)
            self.account, self.config = account, new
            for name in old_notifiers.keys() - prepared.notifiers.keys():
                for gauge in (self.metrics.outbox_pending, self.metrics.outbox_dead):
                    with contextlib.suppress(KeyError):
                        gauge.remove(name)

    # -- the HTTP API and the status page ------------------------------------------------------

    def watch(self, batch_id: str) -> bool:
        """Put `batch_id` into the active set; False when there is no room for it."""
        return self.poller.watch(batch_id)

    def followed(self) -> dict[str, bool]:
        """The active set (batch id -> came through `watch`); empty while stopped."""
        return self.poller.followed() if self.running else {}

    def polling_health(self) -> PollingHealth | None:
        """What the status page says about polling: `/readyz`'s view, the budget, Box's errors
        (answers other than 2xx, and none at all; a 404 is how Box confirms a job is gone).
        None while the unit is stopped: a standby has no figures of its own to show."""
        if not self.running:
            return None
        fresh, details = self.schedule.status()
        auth = self.box.auth.status()
        requests = errors = 0
        for sample in self.metrics.api_requests.samples():
            if sample.name.endswith("_total"):
                requests += int(sample.value)
                if not sample.labels.get("code", "").startswith(("2", "404")):
                    errors += int(sample.value)
        budget = self.budget
        return PollingHealth(
            ready=fresh and auth.ok and self.poller.refusal is None,
            last_sweep_age_s=details.get("last_sweep_age_s"),
            max_sweep_age_s=details["max_sweep_age_s"],
            degradation=details["degradation"],
            sweep_interval_s=details["sweep_interval_s"],
            active_interval_s=details["active_interval_s"],
            last_error=details.get("last_error"),
            auth=auth.detail,
            refusal=self.poller.refusal,
            budget_rate_per_minute=budget.rate_rpm if budget is not None else None,
            budget_ceiling_per_minute=budget.ceiling_rpm if budget is not None else None,
            budget_available=budget.available if budget is not None else None,
            budget_used=budget.used if budget is not None else None,
            box_requests=requests,
            box_errors=errors,
        )

    async def retry_dead(self, notifier: str, event_id: str | None) -> int:
        """Put dead letters of `notifier` (one event, or all) back in the queue, due now."""
        count = await self.store.requeue_dead(self.clock(), event_id=event_id, notifier=notifier)
        if count:
            log.info("dead_letters_retried", notifier=notifier, event_id=event_id, count=count)
            if self.running:
                self.dispatcher.wake()
        return count


    # -- health -------------------------------------------------------------------------------

    async def readiness(self) -> tuple[bool, dict[str, Any]]:
        if not self.running:
            return False, {"state": self.state.value}
        try:
            await self.store.ping()
            store = "ok"
        except Exception as exc:
            store = f"error: {type(exc).__name__}"
        polling, details = self.schedule.status()
        auth = self.box.auth.status()
        details = {"store": store, "auth": auth.detail, **details}
        if self.poller.refusal is not None:
            details["refused"] = self.poller.refusal
        ready = store == "ok" and polling and auth.ok and self.poller.refusal is None
        return ready, details

    def liveness(self) -> str | None:
        """None while alive; the reason when a restart is the only way out (`/healthz`)."""
        return self._dead_reason

    async def _check_store(self) -> None:
        """A store that keeps refusing commits is closed and opened again, once; if writes
        still fail the unit reports itself not alive, so the supervisor restarts the daemon.
        A commit that succeeds again clears it."""
        failures = self.recorder.write_failures
        if failures == 0:
            self._dead_reason = None
            self._store_reopened = False
            return
        if failures < STORE_WRITE_FAILURES_BEFORE_REOPEN or self._dead_reason is not None:
            return
        if not self._store_reopened:
            self._store_reopened = True
            log.error("store_reopening", failures=failures, error=self.recorder.last_write_error)
            try:
                await self.store.close()
                await self.store.open()
                await self.recorder.heartbeat()
            except Exception as exc:
                self._dead_reason = f"state store cannot be written: {exc}"
            else:
                log.info("store_reopened")
                return
        else:
            self._dead_reason = f"state store cannot be written: {self.recorder.last_write_error}"
        log.error("store_unwritable", reason=self._dead_reason, action="restart the daemon")

    async def _refresh_gauges(self) -> None:
        while True:
            try:
                await self._check_store()
            except Exception:
                log_failure(log, "store_check_failed")
            try:
                await self.recorder.heartbeat()
                self.metrics.detection_lag.set(self.poller.detection_lag_s())
                self.metrics.active_batches.set(len(self.poller.active))
                if self.budget is not None:
                    self.metrics.budget_available.set(self.budget.available)
                    self.metrics.budget_rate.set(self.budget.rate_rpm)
                await self.dispatcher.refresh_gauges()
            except Exception:
                log_failure(log, "gauge_refresh_failed")
            await asyncio.sleep(GAUGE_REFRESH_S)

    async def _prune_forever(self, retention_s: float) -> None:
        """Delivered history older than the retention goes, hourly, so the store stays bounded."""
        while True:
            try:
                pruned = await self.store.prune(self.clock() - retention_s)
                if pruned:
                    log.info("outbox_pruned", events=pruned, retention_s=retention_s)
            except Exception:
                log_failure(log, "prune_failed")
            await asyncio.sleep(PRUNE_EVERY_S)


async def baseline_at(store: SnapshotReader) -> float | None:
    """When the baseline was recorded in `store` (the status page's history starts there)."""
    return _float_or_none(await store.get_meta(META_BASELINE_AT))


async def close_all(notifiers: Iterable[Notifier]) -> None:
    for notifier in notifiers:
        try:
            await notifier.close()
        except Exception:
            log.exception("notifier_close_failed", notifier=notifier.name)


async def cancel(task: asyncio.Task[Any]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


def _float_or_none(value: str | None) -> float | None:
    return float(value) if value is not None else None
