"""One request budget for every Box call: a token bucket whose rate adapts to Box's answers.

Box allows about 1,000 requests per minute per user, shared with the customer's own application,
so the monitor draws every request from one bucket (`requests_per_minute`), token requests
included. A 429 halves the rate (multiplicative decrease) and its `retry-after`, cut to
`max_retry_after_s`, pauses every caller, not only the one that got it. Once the pause is over
the rate doubles every `RECOVERY_DOUBLING_S` without a 429 until it is back at the configured
ceiling: from the floor in under 45 s, whether or not requests are being made meanwhile.
Active polls outrank sweeps: a sweep request waits while any active poll is waiting.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import IntEnum

from monitor.box._http import DEFAULT_MAX_RETRY_AFTER_S, clamp_retry_after
from monitor.metrics import Metrics

__all__ = ["RECOVERY_DOUBLING_S", "Plan", "Priority", "RequestBudget", "plan_intervals"]

#: The rate never drops below this fraction of the ceiling, so polling never stops for good.
_MIN_RATE_FRACTION = 0.05
#: Without a 429 the rate doubles this often until it is back at the ceiling (from the floor,
#: 5 %, that is log2(20) * 10 s = 43 s).
RECOVERY_DOUBLING_S = 10.0
#: A 429 multiplies the rate by this (multiplicative decrease).
_DECREASE_FACTOR = 0.5
#: Tokens the bucket holds at most: a short burst, at most this many seconds of the rate.
_BURST_S = 2.0


class Priority(IntEnum):
    """Lower value goes first."""

    ACTIVE = 0
    SWEEP = 1


class RequestBudget:
    """Shared by every task that calls Box. `acquire` before a request; report a 429 with
    `on_rate_limited`."""

    def __init__(
        self,
        requests_per_minute: float,
        *,
        max_retry_after_s: float = DEFAULT_MAX_RETRY_AFTER_S,
        metrics: Metrics | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if requests_per_minute <= 0:
            raise ValueError(f"requests_per_minute must be positive, got {requests_per_minute}")
        if max_retry_after_s < 0:
            raise ValueError(f"max_retry_after_s must be >= 0, got {max_retry_after_s}")
        self.ceiling_rpm = float(requests_per_minute)
        self.max_retry_after_s = max_retry_after_s
        self._clock = clock
        self._metrics = metrics
        # The rate right after the last decrease, and when it starts to climb back.
        self._reduced_rpm = self.ceiling_rpm
        self._recovers_from = float("-inf")
        self._tokens = self._capacity()
        self._refilled_at = clock()
        self.blocked_until = 0.0
        self.used = 0  # requests granted since start
        self.rate_limited = 0  # 429s reported
        self._waiting = {p: 0 for p in Priority}
        self._changed = asyncio.Condition()

    # -- what callers use -------------------------------------------------------------------

    async def acquire(self, priority: Priority = Priority.SWEEP) -> None:
        """Wait until a request may be sent: the pause is over, a token is there, and nobody of
        a higher priority is waiting."""
        self._waiting[priority] += 1
        try:
            while True:
                delay_s = self._try_take(priority)
                if delay_s is None:
                    return
                async with self._changed:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._changed.wait(), delay_s)
        finally:
            self._waiting[priority] -= 1
            await self._notify()

    async def on_rate_limited(self, retry_after_s: float | None) -> None:
        """Box said 429: slow down, and if it said how long to wait (at most
        `max_retry_after_s`), everyone waits."""
        self.rate_limited += 1
        self._refill()
        now = self._clock()
        retry_after_s = clamp_retry_after(
            retry_after_s, self.max_retry_after_s, endpoint=None, metrics=self._metrics
        )
        if retry_after_s is not None:
            self.blocked_until = max(self.blocked_until, now + retry_after_s)
        floor = self.ceiling_rpm * _MIN_RATE_FRACTION
        self._reduced_rpm = max(floor, self.rate_rpm * _DECREASE_FACTOR)
        self._recovers_from = max(now, self.blocked_until)
        self._tokens = min(self._tokens, self._capacity())
        await self._notify()

    # -- what metrics and the scheduler read ------------------------------------------------

    @property
    def rate_rpm(self) -> float:
        """The rate now: reduced by 429s, doubling every `RECOVERY_DOUBLING_S` since."""
        elapsed_s = self._clock() - self._recovers_from
        if elapsed_s <= 0:
            return self._reduced_rpm
        doublings = elapsed_s / RECOVERY_DOUBLING_S
        if doublings >= math.log2(self.ceiling_rpm / self._reduced_rpm):
            return self.ceiling_rpm
        return float(self._reduced_rpm * 2.0**doublings)

    @property
    def available(self) -> float:
        """Tokens in the bucket now (0 while paused by a retry-after)."""
        self._refill()
        return 0.0 if self._clock() < self.blocked_until else self._tokens

    # -- internals --------------------------------------------------------------------------

    def _capacity(self) -> float:
        return max(1.0, self.rate_rpm / 60.0 * _BURST_S)

    def _refill(self) -> None:
        now = self._clock()
        elapsed = max(0.0, now - self._refilled_at)
        self._refilled_at = now
        self._tokens = min(self._capacity(), self._tokens + elapsed * self.rate_rpm / 60.0)

    def _try_take(self, priority: Priority) -> float | None:
        """None when a token was taken; else how long to wait before looking again."""
        now = self._clock()
        if now < self.blocked_until:
            return self.blocked_until - now
        if any(self._waiting[p] for p in Priority if p < priority):
            return 1.0  # woken as soon as the higher-priority waiter leaves
        self._refill()
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            self.used += 1
            if self._metrics is not None:
                self._metrics.budget_used.inc()
            return None
        return (1.0 - self._tokens) * 60.0 / self.rate_rpm

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()


#: The share of the budget the schedule plans to use; the rest absorbs retries and bursts.
PLAN_HEADROOM = 0.8
#: The sweep is stretched up to this many times its interval before active polls slow down.
MAX_SWEEP_STRETCH = 10.0


class Degradation(IntEnum):
    NORMAL = 0
    SWEEP_STRETCHED = 1
    ACTIVE_STRETCHED = 2


@dataclass(frozen=True, slots=True)
class Plan:
    sweep_interval_s: float
    active_interval_s: float
    level: Degradation


def plan_intervals(
    rate_rpm: float,
    active_batches: float,
    sweep_requests: int,
    sweep_interval_s: float,
    active_interval_s: float,
) -> Plan:
    """The intervals the budget can hold. Degrades in a stated order: first the sweep is
    stretched (up to `MAX_SWEEP_STRETCH` times), then the active interval. Pure."""
    usable_rpm = rate_rpm * PLAN_HEADROOM
    active_rpm = active_batches * 60.0 / active_interval_s
    sweep_rpm = max(1, sweep_requests) * 60.0 / sweep_interval_s
    if active_rpm + sweep_rpm <= usable_rpm:
        return Plan(sweep_interval_s, active_interval_s, Degradation.NORMAL)
    slowest_sweep_s = sweep_interval_s * MAX_SWEEP_STRETCH
    slowest_sweep_rpm = sweep_rpm / MAX_SWEEP_STRETCH
    if active_rpm + slowest_sweep_rpm <= usable_rpm:
        stretched_s = max(1, sweep_requests) * 60.0 / (usable_rpm - active_rpm)
        return Plan(stretched_s, active_interval_s, Degradation.SWEEP_STRETCHED)
    left_rpm = max(usable_rpm - slowest_sweep_rpm, usable_rpm * 0.5)
    stretched_active_s = active_batches * 60.0 / left_rpm
    return Plan(slowest_sweep_s, stretched_active_s, Degradation.ACTIVE_STRETCHED)
