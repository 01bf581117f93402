"""Wiring and lifecycle. Every component registers its own teardown on one AsyncExitStack as it
starts, so a failure half-way through start-up still closes what was opened. Stopping has three
steps: stop taking new work (scheduler, sweeps), drain deliveries within a deadline, close.

`reload()` (SIGHUP) swaps notifiers, routes and delivery settings as a unit, and Box
credentials (`box.auth`) in the running client; every other section holds open connections,
files or sockets and changes only on a restart."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import Callable, Iterable
from contextlib import AsyncExitStack
from datetime import UTC, datetime
from enum import Enum
from types import TracebackType
from typing import Any, Self

import structlog
from apscheduler.schedulers.asyncio import AsyncIOScheduler

from monitor.box.auth import Auth, CCGAuth, DeveloperTokenAuth, JWTAuth
from monitor.box.budget import Degradation, Plan, RequestBudget, plan_intervals
from monitor.box.client import BoxClient
from monitor.box.errors import BoxAuthError
from monitor.config import BoxConfig, CCGAuthConfig, Config, JWTAuthConfig
from monitor.errors import ConfigError, MonitorError
from monitor.looplag import LoopLagSampler
from monitor.metrics import Metrics
from monitor.notify.base import Notifier, NotifierRegistry
from monitor.notify.dispatcher import Dispatcher
from monitor.notify.router import Router
from monitor.poller import Poller
from monitor.store import open_store
from monitor.store.base import Store
from monitor.stuck import StuckPolicy
from monitor.web import WebServer, build_app

log = structlog.get_logger(__name__)

GAUGE_REFRESH_S = 5.0
PRUNE_EVERY_S = 3600.0
# What a reload may change; every other top-level section differs only through a restart.
LIVE_SECTIONS = frozenset({"notifiers", "routes", "delivery"})


class RunState(Enum):
    NEW = "new"
    RUNNING = "running"
    STOPPED = "stopped"


def make_auth(box: BoxConfig, metrics: Metrics | None) -> Auth:
    if isinstance(box.auth, CCGAuthConfig):
        return CCGAuth(
            f"{box.base_url}/oauth2/token",
            box.auth.client_id,
            box.auth.client_secret,
            box.auth.subject_type,
            box.auth.subject_id,
            timeout_s=box.timeout,
            metrics=metrics,
        )
    if isinstance(box.auth, JWTAuthConfig):
        try:
            return JWTAuth.from_config_file(
                f"{box.base_url}/oauth2/token",
                box.auth.config_file,
                user_id=box.auth.user_id,
                timeout_s=box.timeout,
                metrics=metrics,
            )
        except ValueError as exc:
            raise ConfigError([f"box.auth.config_file: {exc}"]) from None
    return DeveloperTokenAuth(box.auth.token)


def make_box_client(box: BoxConfig, metrics: Metrics | None) -> tuple[Auth, BoxClient]:
    """The client and its auth, which the caller closes (after a reload: `client.auth`)."""
    auth = make_auth(box, metrics)
    budget = RequestBudget(
        box.requests_per_minute, max_retry_after_s=box.max_retry_after, metrics=metrics
    )
    client = BoxClient(
        box.base_url,
        auth,
        metrics=metrics,
        timeout_s=box.timeout,
        max_attempts=box.max_attempts,
        max_retry_after_s=box.max_retry_after,
        page_size=box.page_size,
        budget=budget,
    )
    return auth, client


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
    ) -> None:
        self.config = config
        self.registry = registry or NotifierRegistry.from_entry_points()
        self.metrics = metrics or Metrics()
        self.clock = clock
        self.state = RunState.NEW
        self._stack = AsyncExitStack()
        self._stop = asyncio.Event()
        self._sweep_task: asyncio.Task[Any] | None = None
        self._active_task: asyncio.Task[Any] | None = None
        self._last_sweep_started = float("-inf")
        self._last_active_started = float("-inf")
        self.budget: RequestBudget | None = None
        poll = config.poll
        self.plan = Plan(poll.sweep_interval, poll.active_interval, Degradation.NORMAL)
        self._sweep_failures = 0
        self._next_sweep_at = 0.0
        self._last_error: str | None = None
        self.last_success_at: float | None = None
        self._notifiers: dict[str, Notifier] = {}
        # A reload swaps several parts; stopping waits for one in progress instead of racing it.
        self._reload_lock = asyncio.Lock()
        self._reload_tasks: set[asyncio.Task[bool]] = set()
        self.store: Store
        self.box: BoxClient
        self.poller: Poller
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
        await self.store.open()
        self._stack.push_async_callback(self.store.close)

        _, box = make_box_client(cfg.box, self.metrics)
        self.box = box
        self.budget = box.budget
        self._stack.push_async_callback(lambda: self.box.auth.aclose())  # the current one
        await self._stack.enter_async_context(box)

        self._notifiers = await self._open_notifiers(cfg)
        self.dispatcher = Dispatcher(self.store, self._notifiers, cfg.delivery, self.metrics)
        self.dispatcher.start()
        self._stack.push_async_callback(self._stop_delivery)

        self.poller = Poller(
            box,
            self.store,
            Router(cfg.routes),
            self.metrics,
            baseline=cfg.baseline,
            page_size=cfg.box.page_size,
            stuck=StuckPolicy(cfg.poll.stuck_after, dict(cfg.poll.stuck_after_by_template)),
            watch_ttl_s=cfg.poll.watch_ttl,
            on_commit=self.dispatcher.wake,
            clock=self.clock,
        )
        await self.poller.start()
        self.last_success_at = _float_or_none(await self.store.get_meta("last_sweep_at"))
        await self.poller.refresh_job_gauge()

        self.web = WebServer(
            build_app(
                self.metrics.registry,
                self.readiness,
                watch=self.poller.watch,
                api_token=cfg.http.api_token,
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

        # A tick skipped because the last sweep is still running is expected under load; the
        # sweep's own logs and metrics tell that story, APScheduler's warning would only repeat it.
        logging.getLogger("apscheduler").setLevel(logging.ERROR)
        scheduler = AsyncIOScheduler(timezone=UTC)
        scheduler.add_job(
            self._sweep_tick,
            "interval",
            seconds=cfg.poll.sweep_interval,
            id="sweep",
            max_instances=1,
            coalesce=True,
            next_run_time=datetime.now(UTC),
            misfire_grace_time=None,
        )
        scheduler.add_job(
            self._active_tick,
            "interval",
            seconds=cfg.poll.active_interval,
            id="active",
            max_instances=1,
            coalesce=True,
            misfire_grace_time=None,
        )
        self._update_plan()
        scheduler.start()
        self._stack.push_async_callback(self._stop_polling, scheduler)

    async def _stop_polling(self, scheduler: AsyncIOScheduler) -> None:
        scheduler.shutdown(wait=False)
        for task in (self._sweep_task, self._active_task):
            if task is not None and not task.done():
                # An unfinished poll has committed nothing; a commit, if started, is shielded.
                await _cancel(task)

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
                log.info("box_auth_reloaded", method=new.box.auth.method)
            old_notifiers, old_delivery = self._notifiers, self.config.delivery
            # Rows routed to a notifier now wait in the outbox until its worker starts below.
            self.poller.router = Router(new.routes)
            await self.dispatcher.stop(old_delivery.drain_timeout)
            await _close_all(old_notifiers.values())
            self._notifiers = notifiers
            self.dispatcher = Dispatcher(self.store, notifiers, new.delivery, self.metrics)
            self.dispatcher.start()
            self.poller.on_commit = self.dispatcher.wake
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

    # -- polling --------------------------------------------------------------------------

    def _update_plan(self) -> None:
        """Fit the intervals to the budget (stretch the sweep first, then active polls)."""
        poll = self.config.poll
        rate = self.budget.rate_rpm if self.budget is not None else float("inf")
        plan = plan_intervals(
            rate,
            len(self.poller.active),
            self.poller.last_sweep_requests,
            poll.sweep_interval,
            poll.active_interval,
        )
        if plan.level != self.plan.level:
            log.warning(
                "degradation_changed" if plan.level else "degradation_cleared",
                level=plan.level.name.lower(),
                sweep_interval_s=round(plan.sweep_interval_s, 1),
                active_interval_s=round(plan.active_interval_s, 1),
                budget_rpm=round(rate, 1),
            )
        self.plan = plan
        self.metrics.degradation.set(plan.level)
        self.metrics.effective_interval.labels("sweep").set(plan.sweep_interval_s)
        self.metrics.effective_interval.labels("active").set(plan.active_interval_s)

    def _due(self, last_started: float, interval_s: float, tick_s: float) -> bool:
        # Ticks come every `tick_s`; a stretched interval skips ticks until it has passed.
        return self.clock() - last_started >= interval_s - tick_s / 2

    async def _active_tick(self) -> None:
        self._update_plan()
        poll = self.config.poll
        interval_s = self.plan.active_interval_s
        if not self._due(self._last_active_started, interval_s, poll.active_interval):
            return
        self._last_active_started = self.clock()
        self._active_task = asyncio.current_task()
        try:
            await self.poller.poll_active()
        except asyncio.CancelledError:
            return
        except Exception:
            log.exception("active_round_failed")
        finally:
            self._active_task = None
            self.metrics.detection_lag.set(self.poller.detection_lag_s())

    async def _sweep_tick(self) -> None:
        if self.clock() < self._next_sweep_at:
            return  # backing off after failures
        poll = self.config.poll
        if not self._due(self._last_sweep_started, self.plan.sweep_interval_s, poll.sweep_interval):
            return  # degraded: the budget cannot hold the configured interval
        self._last_sweep_started = self.clock()
        self._sweep_task = asyncio.current_task()
        started = time.perf_counter()
        try:
            await self.poller.sweep()
        except asyncio.CancelledError:
            log.info("sweep_cancelled")  # stopping: nothing was committed, nothing is lost
            return
        except Exception as exc:
            self._sweep_failed(exc, time.perf_counter() - started)
        else:
            self._sweep_failures = 0
            self._next_sweep_at = 0.0
            self._last_error = None
            self.last_success_at = self.clock()
            self.metrics.polls.labels("sweep", "ok").inc()
        finally:
            self._sweep_task = None

    def _sweep_failed(self, exc: Exception, duration_s: float) -> None:
        interval = self.config.poll.sweep_interval
        self._sweep_failures += 1
        delay_s = min(self.config.poll.max_backoff, interval * 2 ** (self._sweep_failures - 1))
        if isinstance(exc, BoxAuthError):
            delay_s = interval  # the auth's own backoff spaces token requests; resume with it
        # run again at the first tick at or after the delay
        self._next_sweep_at = self.clock() + delay_s - interval / 2
        self._last_error = f"{type(exc).__name__}: {exc}"
        self.metrics.polls.labels("sweep", "error").inc()
        self.metrics.poll_duration.labels("sweep").observe(duration_s)
        log.error(
            "sweep_failed",
            error=self._last_error,
            failures=self._sweep_failures,
            next_try_in_s=round(delay_s, 1),
            exc_info=not isinstance(exc, MonitorError),
        )

    # -- health ---------------------------------------------------------------------------

    async def readiness(self) -> tuple[bool, dict[str, Any]]:
        details: dict[str, Any] = {}
        try:
            await self.store.ping()
            details["store"] = "ok"
        except Exception as exc:
            details["store"] = f"error: {type(exc).__name__}"
        max_age_s = 3 * max(self.config.poll.sweep_interval, self.plan.sweep_interval_s)
        if self.last_success_at is None:
            details["last_sweep"] = "none yet"
            fresh = False
        else:
            age_s = self.clock() - self.last_success_at
            details["last_sweep_age_s"] = round(age_s, 3)
            fresh = age_s <= max_age_s
        details["max_sweep_age_s"] = max_age_s
        auth = self.box.auth.status()
        details["auth"] = auth.detail
        if self._last_error is not None:
            details["last_error"] = self._last_error
        details["degradation"] = self.plan.level.name.lower()
        details["sweep_interval_s"] = round(self.plan.sweep_interval_s, 3)
        details["active_interval_s"] = round(self.plan.active_interval_s, 3)
        details["active_batches"] = len(self.poller.active)
        if self.budget is not None:
            details["budget_rate_per_minute"] = round(self.budget.rate_rpm, 1)
        return details["store"] == "ok" and fresh and auth.ok, details

    async def _refresh_gauges(self) -> None:
        while True:
            try:
                await self.poller.heartbeat()
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
