"""Wiring and lifecycle. Every component registers its own teardown on one AsyncExitStack as it
starts, so a failure half-way through start-up still closes what was opened. Stopping has three
steps: stop taking new work (scheduler, sweeps), drain deliveries within a deadline, close.

`reload()` (SIGHUP) swaps notifiers, routes and delivery settings as a unit, and Box
credentials (`box.auth`) in the running client; every other section holds open connections,
files or sockets and changes only on a restart."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections.abc import Callable, Iterable
from contextlib import AsyncExitStack
from enum import Enum
from types import TracebackType
from typing import Any, Self

import structlog

from monitor.box.auth import Auth
from monitor.box.budget import RequestBudget
from monitor.box.client import BoxClient
from monitor.box.connect import make_auth, make_box_client
from monitor.box.errors import BoxError
from monitor.config import BoxConfig, Config, JWTAuthConfig
from monitor.errors import ConfigError
from monitor.identity import IdentityGuard
from monitor.looplag import LoopLagSampler
from monitor.metrics import Metrics
from monitor.notify.base import Notifier, NotifierRegistry
from monitor.notify.dispatcher import Dispatcher
from monitor.notify.router import Router
from monitor.poller import Poller
from monitor.recorder import META_BASELINE_AT, META_LAST_SWEEP_AT, Recorder
from monitor.schedule import PollSchedule
from monitor.store import open_store
from monitor.store.base import Store
from monitor.stuck import StuckPolicy
from monitor.ui import PollingHealth, StatusPage, StatusSources
from monitor.web import WebServer, build_app

log = structlog.get_logger(__name__)

GAUGE_REFRESH_S = 5.0
#: Consecutive failed commits after which the store is closed and opened again.
STORE_WRITE_FAILURES_BEFORE_REOPEN = 3
PRUNE_EVERY_S = 3600.0
# What a reload may change; every other top-level section differs only through a restart.
LIVE_SECTIONS = frozenset({"notifiers", "routes", "delivery"})


class RunState(Enum):
    NEW = "new"
    RUNNING = "running"
    STOPPED = "stopped"


def _restart_only(old: Config, new: Config) -> list[str]:
    """The settings `new` changes that only a restart applies (`box` key by key: its `auth`
    is live)."""
    fixed = [
        name
        for name in type(new).model_fields
        if name not in LIVE_SECTIONS and getattr(new, name) != getattr(old, name)
    ]
    if "box" in fixed:
        fixed.remove("box")
        fixed += [
            f"box.{key}"
            for key in type(new.box).model_fields
            if key != "auth" and getattr(new.box, key) != getattr(old.box, key)
        ]
    return fixed


def _auth_changed(old: BoxConfig, new: BoxConfig) -> bool:
    """A JWT `config_file` may hold new keys under the same path: it is read again."""
    return new.auth != old.auth or isinstance(new.auth, JWTAuthConfig)


class Daemon:
    """The running monitor: `async with Daemon(config) as d: await d.wait_stopped()`."""

    def __init__(
        self,
        config: Config,
        *,
        registry: NotifierRegistry | None = None,
        metrics: Metrics | None = None,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        adopt_identity: bool = False,
        accept_mass_vanish: bool = False,
    ) -> None:
        """`clock` (wall) stamps what is stored and shown; `monotonic` times every interval,
        deadline and backoff (a wall-clock step must not stall polling)."""
        self.config = config
        self.adopt_identity = adopt_identity
        self.accept_mass_vanish = accept_mass_vanish
        self.registry = registry or NotifierRegistry.from_entry_points()
        self.metrics = metrics or Metrics()
        self.clock = clock
        self.monotonic = monotonic
        self.state = RunState.NEW
        self._stack = AsyncExitStack()
        self._stop = asyncio.Event()
        self.budget: RequestBudget | None = None
        self._notifiers: dict[str, Notifier] = {}
        self._dead_reason: str | None = None  # why /healthz fails
        self._store_reopened = False
        # A reload swaps several parts; stopping waits for one in progress instead of racing it.
        self._reload_lock = asyncio.Lock()
        self._reload_tasks: set[asyncio.Task[bool]] = set()
        self.store: Store
        self.box: BoxClient
        self.recorder: Recorder
        self.identity: IdentityGuard
        self.poller: Poller
        self.schedule: PollSchedule
        self.dispatcher: Dispatcher
        self.web: WebServer

    # -- lifecycle ------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        if self.state is not RunState.NEW:
            raise RuntimeError(f"cannot start a daemon that is {self.state.value}")
        try:
            await self._start()
        except BaseException:
            await self._stack.aclose()
            self.state = RunState.STOPPED
            raise
        self.state = RunState.RUNNING
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.state is RunState.RUNNING:
            log.info("daemon_stopping")
            async with self._reload_lock:
                self.state = RunState.STOPPED
                await self._stack.aclose()
            log.info("daemon_stopped")

    async def _start(self) -> None:
        cfg = self.config
        lag = LoopLagSampler(self.metrics.event_loop_lag)
        lag.start()
        self._stack.push_async_callback(lag.stop)
        self.store = open_store(cfg.state.url)
        self._stack.enter_context(self.store.replica_lock())  # SQLite: one replica at a time
        await self.store.open()
        self._stack.push_async_callback(self.store.close)

        _, box = make_box_client(cfg.box, self.metrics)
        self.box = box
        self.budget = box.budget
        self._stack.push_async_callback(lambda: self.box.auth.aclose())  # the current one
        await self._stack.enter_async_context(box)

        self.identity = IdentityGuard(
            box, self.store, self.metrics, adopt=self.adopt_identity, clock=self.clock
        )
        await self._check_identity()

        self._notifiers = await self._open_notifiers(cfg)
        self.dispatcher = Dispatcher(self.store, self._notifiers, cfg.delivery, self.metrics)
        self.dispatcher.start()
        self._stack.push_async_callback(self._stop_delivery)

        self.recorder = Recorder(
            self.store,
            Router(cfg.routes),
            self.metrics,
            baseline=cfg.baseline,
            stuck=StuckPolicy(cfg.poll.stuck_after, dict(cfg.poll.stuck_after_by_template)),
            wake=self.dispatcher.wake,
            clock=self.clock,
        )
        self.poller = Poller(
            box,
            self.store,
            self.recorder,
            self.metrics,
            page_size=cfg.box.page_size,
            watch_ttl_s=cfg.poll.watch_ttl,
            max_watched=cfg.http.max_watched_batches,
            vanish_confirm_max=cfg.poll.vanish_confirm_max,
            identity=self.identity,
            accept_mass_vanish=self.accept_mass_vanish,
            clock=self.clock,
            monotonic=self.monotonic,
        )
        await self.poller.start()
        await self.recorder.refresh_job_gauge()
        self.schedule = PollSchedule(
            self.poller,
            cfg.poll,
            self.metrics,
            budget=self.budget,
            last_success_at=_float_or_none(await self.store.get_meta(META_LAST_SWEEP_AT)),
            clock=self.clock,
            monotonic=self.monotonic,
        )

        self.web = WebServer(
            build_app(
                self.metrics.registry,
                self.readiness,
                watch=self.poller.watch,
                api_token=cfg.http.api_token,
                live=self.liveness,
                ui=self._status_page(),
                store=self.store,
            ),
            cfg.http.host,
            cfg.http.port,
        )
        await self.web.start()
        self._stack.push_async_callback(self.web.close)
        log.info("http_listening", url=self.web.url)

        gauges = asyncio.create_task(self._refresh_gauges(), name="gauges")
        self._stack.push_async_callback(_cancel, gauges)
        if cfg.delivery.retention > 0:
            pruner = asyncio.create_task(self._prune_forever(cfg.delivery.retention), name="prune")
            self._stack.push_async_callback(_cancel, pruner)

        await self.schedule.start(self._stack)

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

    def request_stop(self) -> None:
        self._stop.set()

    async def wait_stopped(self) -> None:
        await self._stop.wait()

    def install_signal_handlers(self, reload: Callable[[], Config] | None = None) -> None:
        """SIGTERM and SIGINT stop; SIGHUP calls `reload` for a new config and applies it."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop)
        if reload is not None:
            loop.add_signal_handler(signal.SIGHUP, self._reload_soon, reload)

    # -- delivery and live reconfiguration ------------------------------------------------

    async def _open_notifiers(self, config: Config) -> dict[str, Notifier]:
        """Every notifier of `config`, started; if one fails, those already started close."""
        opened: dict[str, Notifier] = {}
        try:
            for spec in config.notifiers:
                notifier = self.registry.create(spec, timeout_s=config.delivery.timeout)
                await notifier.start()
                opened[spec.name] = notifier
        except BaseException:
            await _close_all(opened.values())
            raise
        return opened

    async def _stop_delivery(self) -> None:
        await self.dispatcher.stop(self.config.delivery.drain_timeout)
        await _close_all(self._notifiers.values())

    def _reload_soon(self, load: Callable[[], Config]) -> None:
        task = asyncio.create_task(self._reload_from(load), name="reload")
        self._reload_tasks.add(task)
        task.add_done_callback(self._reload_tasks.discard)

    async def _reload_from(self, load: Callable[[], Config]) -> bool:
        log.info("config_reload_requested")
        try:
            new = load()
        except ConfigError as exc:
            log.error("config_reload_rejected", problems=exc.problems, kept="running config")
            return False
        except Exception:
            log.exception("config_reload_failed", kept="running config")
            return False
        return await self.reload(new)

    async def reload(self, new: Config) -> bool:
        """Apply `new` if it differs only in notifiers, routes, delivery and `box.auth`: build
        the new auth, start the new notifiers, route by the new rules, drain the old
        dispatcher, start a new one, and give the Box client the new auth. Anything refused or
        failing leaves the running configuration exactly as it was."""
        async with self._reload_lock:
            if self.state is not RunState.RUNNING:
                log.warning("config_reload_ignored", reason=f"daemon is {self.state.value}")
                return False
            fixed = _restart_only(self.config, new)
            if fixed:
                log.error(
                    "config_reload_refused",
                    reason="these settings change only on a restart",
                    settings=fixed,
                    kept="running config",
                )
                return False
            auth: Auth | None = None
            try:
                if _auth_changed(self.config.box, new.box):
                    auth = make_auth(new.box, self.metrics)
                notifiers = await self._open_notifiers(new)
            except Exception as exc:
                if auth is not None:
                    await auth.aclose()
                problem = "; ".join(exc.problems) if isinstance(exc, ConfigError) else exc
                log.error(
                    "config_reload_failed",
                    error=f"{type(exc).__name__}: {problem}",
                    kept="running config",
                )
                return False
            if auth is not None:
                await self.box.replace_auth(auth)
                self.identity.forget()  # new credentials may act for someone else
                log.info("box_auth_reloaded", method=new.box.auth.method)
            old_notifiers, old_delivery = self._notifiers, self.config.delivery
            # Rows routed to a notifier now wait in the outbox until its worker starts below.
            self.recorder.set_router(Router(new.routes))
            await self.dispatcher.stop(old_delivery.drain_timeout)
            await _close_all(old_notifiers.values())
            self._notifiers = notifiers
            self.dispatcher = Dispatcher(self.store, notifiers, new.delivery, self.metrics)
            self.dispatcher.start()
            self.recorder.set_wake(self.dispatcher.wake)
            self.config = new
            for name in old_notifiers.keys() - notifiers.keys():
                for gauge in (self.metrics.outbox_pending, self.metrics.outbox_dead):
                    with contextlib.suppress(KeyError):
                        gauge.remove(name)
            log.info(
                "config_reloaded",
                notifiers=sorted(notifiers),
                added=sorted(notifiers.keys() - old_notifiers.keys()),
                removed=sorted(old_notifiers.keys() - notifiers.keys()),
                routes=len(new.routes),
            )
            return True

    # -- health ---------------------------------------------------------------------------

    def polling_health(self) -> PollingHealth:
        """What the status page says about polling: `/readyz`'s view, the budget, Box's errors
        (answers other than 2xx, and none at all; a 404 is how Box confirms a job is gone)."""
        fresh, details = self.schedule.status()
        auth = self.box.auth.status()
        requests = errors = 0
        for family in self.metrics.api_requests.collect():
            for sample in family.samples:
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
            self.dispatcher.wake()
        return count

    async def _baseline_at(self) -> float | None:
        return _float_or_none(await self.store.get_meta(META_BASELINE_AT))

    def _status_page(self) -> StatusPage:
        sources = StatusSources(
            store=self.store,
            polling=self.polling_health,
            active=self.poller.followed,
            notifiers=lambda: list(self._notifiers),
            retry_dead=self.retry_dead,
            baseline_at=self._baseline_at,
            clock=self.clock,
            add_silence=self.store.add_silence,
            expire_silence=lambda silence_id: self.store.expire_silence(silence_id, self.clock()),
        )
        return StatusPage(
            sources,
            ui_token=self.config.http.ui_token,
            api_token=self.config.http.api_token,
            monotonic=self.monotonic,
        )

    async def readiness(self) -> tuple[bool, dict[str, Any]]:
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
        still fail the daemon reports itself not alive, so the supervisor restarts it. A
        commit that succeeds again clears it."""
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
                log.exception("store_check_failed")
            try:
                await self.recorder.heartbeat()
                self.metrics.detection_lag.set(self.poller.detection_lag_s())
                self.metrics.active_batches.set(len(self.poller.active))
                if self.budget is not None:
                    self.metrics.budget_available.set(self.budget.available)
                    self.metrics.budget_rate.set(self.budget.rate_rpm)
                await self.dispatcher.refresh_gauges()
            except Exception:
                log.exception("gauge_refresh_failed")
            await asyncio.sleep(GAUGE_REFRESH_S)

    async def _prune_forever(self, retention_s: float) -> None:
        """Delivered history older than the retention goes, hourly, so the store stays bounded."""
        while True:
            try:
                pruned = await self.store.prune(self.clock() - retention_s)
                if pruned:
                    log.info("outbox_pruned", events=pruned, retention_s=retention_s)
            except Exception:
                log.exception("prune_failed")
            await asyncio.sleep(PRUNE_EVERY_S)


async def _close_all(notifiers: Iterable[Notifier]) -> None:
    for notifier in notifiers:
        try:
            await notifier.close()
        except Exception:
            log.exception("notifier_close_failed", notifier=notifier.name)


async def _cancel(task: asyncio.Task[Any]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


def _float_or_none(value: str | None) -> float | None:
    return float(value) if value is not None else None
