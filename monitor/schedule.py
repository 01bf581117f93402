"""When to poll: the sweep and active ticks, the intervals fitted to the request budget,
backoff after failed sweeps, degradation, and what `/readyz` says about polling.

APScheduler's `AsyncIOScheduler` ticks at the configured intervals (max_instances=1, coalesce,
the first sweep at once). Whether a tick does work is decided on the monotonic clock: a planned
interval longer than the tick (degradation) or a sweep backoff skips ticks. APScheduler 3 plans
its wake-ups on `datetime.now()`, so a wall clock stepped back (NTP, an operator) would hold every
job for the step's size: a small watch compares the wall clock with the monotonic one and, on a
backward step, makes the jobs due at once. The schedule registers its own teardown on the
daemon's exit stack."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from contextlib import AsyncExitStack
from datetime import UTC, datetime
from typing import Any

import structlog
from apscheduler.schedulers.asyncio import AsyncIOScheduler

from monitor.box.budget import Degradation, Plan, RequestBudget, plan_intervals
from monitor.box.errors import BoxAuthError
from monitor.config import PollConfig
from monitor.errors import MonitorError
from monitor.metrics import Metrics
from monitor.poller import Poller

log = structlog.get_logger(__name__)

#: How often the wall clock is compared with the monotonic one, and the step that counts.
CLOCK_CHECK_S = 1.0
CLOCK_STEP_S = 2.0


class PollSchedule:
    def __init__(
        self,
        poller: Poller,
        config: PollConfig,
        metrics: Metrics,
        *,
        budget: RequestBudget | None = None,
        last_success_at: float | None = None,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        webhooks_healthy: Callable[[], bool] | None = None,
    ) -> None:
        """`last_success_at` is the wall-clock time of the last committed sweep (stored by an
        earlier run), or None; `clock` is only used to turn it into an age. While
        `webhooks_healthy()`, active polls only reconcile: every
        `poll.active_interval_with_webhooks` at the most."""
        self.poller = poller
        self.config = config
        self.metrics = metrics
        self.budget = budget
        self.monotonic = monotonic
        self.webhooks_healthy = webhooks_healthy
        self.plan = Plan(config.sweep_interval, config.active_interval, Degradation.NORMAL)
        self.last_error: str | None = None
        self._last_success: float | None = None  # monotonic
        if last_success_at is not None:
            self._last_success = monotonic() - max(0.0, clock() - last_success_at)
        self._sweep_failures = 0
        self._next_sweep_at = float("-inf")
        self._last_sweep_started = float("-inf")
        self._last_active_started = float("-inf")
        self._last_discover_started = float("-inf")
        self._discover_requests = 1  # the head page, until a read says more
        self._sweep_task: asyncio.Task[Any] | None = None
        self._active_task: asyncio.Task[Any] | None = None
        self._discover_task: asyncio.Task[Any] | None = None
        self._clock_watch: asyncio.Task[None] | None = None

    async def start(self, stack: AsyncExitStack) -> None:
        """Start ticking (the first sweep at once); `stack` stops it before what it uses."""
        # A tick skipped because the last sweep is still running is expected under load; the
        # sweep's own logs and metrics tell that story, APScheduler's warning would only repeat it.
        logging.getLogger("apscheduler").setLevel(logging.ERROR)
        scheduler = AsyncIOScheduler(timezone=UTC)
        common: dict[str, Any] = {"max_instances": 1, "coalesce": True, "misfire_grace_time": None}
        scheduler.add_job(
            self._sweep_tick,
            "interval",
            seconds=self.config.sweep_interval,
            id="sweep",
            next_run_time=datetime.now(UTC),
            **common,
        )
        scheduler.add_job(
            self._active_tick, "interval", seconds=self.config.active_interval, id="active",
            **common,
        )
        scheduler.add_job(
            self._discover_tick, "interval", seconds=self.discover_interval_s, id="discover",
            **common,
        )
        self.update_plan()
        scheduler.start()
        self._clock_watch = asyncio.create_task(self._follow_clock_steps(scheduler))
        stack.push_async_callback(self._stop, scheduler)

    async def _stop(self, scheduler: AsyncIOScheduler) -> None:
        scheduler.shutdown(wait=False)
        # An unfinished poll has committed nothing; a commit, if started, is shielded.
        for task in (self._clock_watch, self._sweep_task, self._active_task, self._discover_task):
            if task is not None and not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    @staticmethod
    async def _follow_clock_steps(scheduler: AsyncIOScheduler) -> None:
        """On a backward wall-clock step, make every job due now instead of after the step;
        the ticks' own monotonic checks still decide whether any work is due."""
        loop = asyncio.get_running_loop()
        offset_s = time.time() - loop.time()
        while True:
            await asyncio.sleep(CLOCK_CHECK_S)
            now_offset_s = time.time() - loop.time()
            if now_offset_s < offset_s - CLOCK_STEP_S:
                log.warning("wall_clock_stepped_back", step_s=round(offset_s - now_offset_s, 1))
                for job in scheduler.get_jobs():
                    job.modify(next_run_time=datetime.now(UTC))
            offset_s = now_offset_s

    # -- the plan ---------------------------------------------------------------------------

    def update_plan(self) -> None:
        """Fit the intervals to the budget (stretch the sweep first, then active polls)."""
        poll = self.config
        rate = self.budget.rate_rpm if self.budget is not None else float("inf")
        # Discovery's reads, spread over active rounds, count like that many more batches
        # (none while the rounds read the head themselves).
        discover_per_round = 0.0 if self._rounds_read_head() else (
            self._discover_requests * poll.active_interval / self.discover_interval_s
        )
        plan = plan_intervals(
            rate,
            self.poller.batches_per_round + discover_per_round,
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

    @property
    def discover_interval_s(self) -> float:
        """The configured discover interval (default: the active interval)."""
        configured = self.config.discover_interval
        return configured if configured is not None else self.config.active_interval

    def _rounds_read_head(self) -> bool:
        """Active rounds read the listing's head themselves (a head window in the last
        round or so): discovery would read it again for nothing."""
        since_s = self.monotonic() - self.poller.window_read_at
        return since_s < 1.5 * self.active_interval_s()

    def _due(self, last_started: float, interval_s: float, tick_s: float) -> bool:
        # Ticks come every `tick_s`; a stretched interval skips ticks until it has passed.
        return self.monotonic() - last_started >= interval_s - tick_s / 2

    def active_interval_s(self) -> float:
        """The planned active interval, stretched while Box webhooks are healthy."""
        interval_s = self.plan.active_interval_s
        if self._stretched():
            interval_s = self.config.active_interval_with_webhooks
        return interval_s

    def _stretched(self) -> bool:
        return (
            self.webhooks_healthy is not None
            and self.config.active_interval_with_webhooks > self.plan.active_interval_s
            and self.webhooks_healthy()
        )

    # -- ticks ------------------------------------------------------------------------------

    async def _active_tick(self) -> None:
        self.update_plan()
        interval_s = self.active_interval_s()
        self.metrics.effective_interval.labels("active").set(interval_s)
        tick_s = self.config.active_interval
        # Webhooks healthy: every tick polls the batches no poll has seen for the stretched
        # interval (hinted polls keep most of them fresh); else a round every interval.
        fresh_s = interval_s - tick_s / 2 if self._stretched() else 0.0
        if not fresh_s and not self._due(self._last_active_started, interval_s, tick_s):
            return
        self._last_active_started = self.monotonic()
        self._active_task = asyncio.current_task()
        try:
            await self.poller.poll_active(fresh_s=fresh_s)
        except asyncio.CancelledError:
            return  # stopping: nothing half-done was committed
        except Exception:
            log.exception("active_round_failed")
        finally:
            self._active_task = None
            self.metrics.detection_lag.set(self.poller.detection_lag_s())

    async def _discover_tick(self) -> None:
        """Read the head of the listing; stretched as much as the active interval is."""
        self.metrics.discovery_lag.set(self.poller.discovery_lag_s())
        tick_s = self.discover_interval_s
        stretch = self.plan.active_interval_s / self.config.active_interval
        if self._rounds_read_head() or not self._due(
            self._last_discover_started, tick_s * max(1.0, stretch), tick_s
        ):
            return
        self._last_discover_started = self.monotonic()
        self._discover_task = asyncio.current_task()
        started = time.perf_counter()
        try:
            result = await self.poller.discover()
        except asyncio.CancelledError:
            return  # stopping: what was recorded is committed, the rest waits for a next read
        except Exception as exc:
            self.metrics.polls.labels("discover", "error").inc()
            self.metrics.poll_duration.labels("discover").observe(time.perf_counter() - started)
            if not isinstance(exc, BoxAuthError):  # the auth logs each refused token once
                log.warning("discovery_failed", error=f"{type(exc).__name__}: {exc}")
        else:
            if result.requests:
                self._discover_requests = result.requests
                self.metrics.polls.labels("discover", "ok").inc()
        finally:
            self._discover_task = None
            self.metrics.discovery_lag.set(self.poller.discovery_lag_s())

    async def _sweep_tick(self) -> None:
        if self.monotonic() < self._next_sweep_at:
            return  # backing off after failures
        interval_s = self.plan.sweep_interval_s
        if not self._due(self._last_sweep_started, interval_s, self.config.sweep_interval):
            return  # degraded: the budget cannot hold the configured interval
        self._last_sweep_started = self.monotonic()
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
            self._next_sweep_at = float("-inf")
            self.last_error = None
            self._last_success = self.monotonic()
            self.metrics.polls.labels("sweep", "ok").inc()
        finally:
            self._sweep_task = None

    def _sweep_failed(self, exc: Exception, duration_s: float) -> None:
        interval = self.config.sweep_interval
        self._sweep_failures += 1
        delay_s = min(self.config.max_backoff, interval * 2 ** (self._sweep_failures - 1))
        if isinstance(exc, BoxAuthError):
            delay_s = interval  # the auth's own backoff spaces token requests; resume with it
        # run again at the first tick at or after the delay
        self._next_sweep_at = self.monotonic() + delay_s - interval / 2
        self.last_error = f"{type(exc).__name__}: {exc}"
        self.metrics.polls.labels("sweep", "error").inc()
        self.metrics.poll_duration.labels("sweep").observe(duration_s)
        if isinstance(exc, BoxAuthError):
            return  # the auth logs each refused token request once, for every poll
        log.error(
            "sweep_failed",
            error=self.last_error,
            failures=self._sweep_failures,
            next_try_in_s=round(delay_s, 1),
            exc_info=not isinstance(exc, MonitorError),
        )

    # -- readiness --------------------------------------------------------------------------

    def status(self) -> tuple[bool, dict[str, Any]]:
        """(ready, details) for `/readyz`: ready while the last sweep is fresh enough."""
        details: dict[str, Any] = {}
        max_age_s = 3 * max(self.config.sweep_interval, self.plan.sweep_interval_s)
        if self._last_success is None:
            details["last_sweep"] = "none yet"
            fresh = False
        else:
            age_s = self.monotonic() - self._last_success
            details["last_sweep_age_s"] = round(age_s, 3)
            fresh = age_s <= max_age_s
        details["max_sweep_age_s"] = max_age_s
        if self.last_error is not None:
            details["last_error"] = self.last_error
        details["degradation"] = self.plan.level.name.lower()
        details["sweep_interval_s"] = round(self.plan.sweep_interval_s, 3)
        details["active_interval_s"] = round(self.active_interval_s(), 3)
        if self.webhooks_healthy is not None:
            details["box_webhooks"] = "healthy" if self.webhooks_healthy() else "not healthy"
        details["active_batches"] = len(self.poller.active)
        details["discovery_lag_s"] = round(self.poller.discovery_lag_s(), 3)
        if self.budget is not None:
            details["budget_rate_per_minute"] = round(self.budget.rate_rpm, 1)
        return fresh, details
