"""The request budget: a rate halved by each 429 that climbs back with time, a retry-after
(bounded by `max_retry_after_s`) that pauses every caller, active polls first, and the
degradation plan (pure). Time is an injected clock."""

from __future__ import annotations

import asyncio

import pytest
from structlog.testing import capture_logs

from monitor.box.budget import (
    MAX_SWEEP_STRETCH,
    PLAN_HEADROOM,
    RECOVERY_DOUBLING_S,
    Degradation,
    Priority,
    RequestBudget,
    plan_intervals,
)
from monitor.metrics import Metrics

DEFAULT = {"account": "default"}  # the account a `Metrics()` serves


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_a_429_halves_the_rate_and_it_doubles_back_every_ten_seconds() -> None:
    """Recovery follows the clock, not the number of successes: replaces the old additive
    increase of 1 request/min per success, which took minutes to climb back."""
    clock = Clock()
    budget = RequestBudget(600, clock=clock)
    await budget.on_rate_limited(None)
    assert budget.rate_rpm == 300
    await budget.on_rate_limited(None)
    assert budget.rate_rpm == 150
    clock.now += RECOVERY_DOUBLING_S
    assert budget.rate_rpm == pytest.approx(300)
    clock.now += RECOVERY_DOUBLING_S / 2
    assert budget.rate_rpm == pytest.approx(300 * 2**0.5)
    clock.now += RECOVERY_DOUBLING_S
    assert budget.rate_rpm == 600  # never above the ceiling
    clock.now += 3600
    assert budget.rate_rpm == 600


async def test_the_rate_never_falls_below_a_floor() -> None:
    budget = RequestBudget(600, clock=Clock())
    for _ in range(50):
        await budget.on_rate_limited(None)
    assert budget.rate_rpm == pytest.approx(30)


async def test_after_a_429_storm_the_budget_is_back_at_its_rate_within_60_s() -> None:
    """A storm of 429s (each with a retry-after) drives the rate to its floor; 60 s after the
    last one the budget grants its configured rate again, and the refilled bucket holds it."""
    clock = Clock()
    budget = RequestBudget(600, clock=clock)
    for _ in range(40):
        await budget.on_rate_limited(1)
        clock.now += 0.5
    storm_ended = clock.now
    assert budget.rate_rpm == pytest.approx(30)
    clock.now = storm_ended + 30
    assert 0.15 * 600 < budget.rate_rpm < 600
    clock.now = storm_ended + 60
    assert budget.rate_rpm == 600
    assert budget.available == pytest.approx(600 / 60 * 2)  # a full burst of 2 s


async def test_a_huge_retry_after_pauses_for_max_retry_after_only() -> None:
    """`retry-after: 1e9` (or 3600) pauses every caller for `max_retry_after_s`, not for
    its value; the cut is logged and counted."""
    clock = Clock()
    metrics = Metrics()
    budget = RequestBudget(6000, metrics=metrics, clock=clock)
    assert budget.max_retry_after_s == 120  # the default
    with capture_logs() as logs:
        await budget.on_rate_limited(1e9)
    assert budget.blocked_until == clock.now + 120
    clamped = [e for e in logs if e["event"] == "box_retry_after_clamped"]
    assert [(e["retry_after_s"], e["max_retry_after_s"]) for e in clamped] == [(1e9, 120)]
    sample = metrics.registry.get_sample_value("box_docgen_retry_after_clamped_total", DEFAULT)
    assert sample == 1
    clock.now += 121
    assert budget.available > 0
    await asyncio.wait_for(budget.acquire(), 2)


async def test_a_retry_after_within_the_maximum_is_honoured_as_given() -> None:
    clock = Clock()
    metrics = Metrics()
    budget = RequestBudget(6000, max_retry_after_s=30, metrics=metrics, clock=clock)
    with capture_logs() as logs:
        await budget.on_rate_limited(30)
    assert budget.blocked_until == clock.now + 30
    assert [e for e in logs if e["event"] == "box_retry_after_clamped"] == []
    assert metrics.registry.get_sample_value("box_docgen_retry_after_clamped_total", DEFAULT) == 0


async def test_retry_after_pauses_every_caller_not_only_the_one_that_got_it() -> None:
    clock = Clock()
    budget = RequestBudget(6000, clock=clock)
    await budget.on_rate_limited(30)
    assert budget.available == 0
    waiters = [asyncio.create_task(budget.acquire(p)) for p in (Priority.ACTIVE, Priority.SWEEP)]
    await asyncio.sleep(0.05)
    assert not any(w.done() for w in waiters)
    clock.now += 31
    async with budget._changed:  # wake the waiters now rather than at their timed recheck
        budget._changed.notify_all()
    await asyncio.wait_for(asyncio.gather(*waiters), 2)
    assert budget.used == 2


async def test_an_active_poll_goes_before_a_waiting_sweep() -> None:
    budget = RequestBudget(30)  # one token every 2 s, a burst of one
    await budget.acquire(Priority.SWEEP)  # the bucket is now empty
    order: list[str] = []

    async def take(priority: Priority, name: str) -> None:
        await budget.acquire(priority)
        order.append(name)

    sweep = asyncio.create_task(take(Priority.SWEEP, "sweep"))
    await asyncio.sleep(0)
    active = asyncio.create_task(take(Priority.ACTIVE, "active"))
    await asyncio.wait_for(asyncio.gather(sweep, active), 10)
    assert order == ["active", "sweep"]


async def test_granted_requests_are_counted_in_metrics() -> None:
    metrics = Metrics()
    budget = RequestBudget(6000, metrics=metrics)
    for _ in range(3):
        await budget.acquire()
    assert metrics.registry.get_sample_value("box_docgen_request_budget_used_total", DEFAULT) == 3


def test_a_budget_that_holds_the_intervals_plans_them_unchanged() -> None:
    plan = plan_intervals(600, active_batches=10, sweep_requests=100,
                          sweep_interval_s=60, active_interval_s=5)
    # 10 * 12 + 100 = 220 requests a minute, well within 480
    assert (plan.sweep_interval_s, plan.active_interval_s, plan.level) == (
        60, 5, Degradation.NORMAL)


def test_the_sweep_is_stretched_first() -> None:
    plan = plan_intervals(600, active_batches=30, sweep_requests=300,
                          sweep_interval_s=60, active_interval_s=5)
    assert plan.level is Degradation.SWEEP_STRETCHED
    assert plan.active_interval_s == 5
    active_rpm = 30 * 12
    assert 300 * 60 / plan.sweep_interval_s + active_rpm == pytest.approx(600 * PLAN_HEADROOM)


def test_then_the_active_interval() -> None:
    plan = plan_intervals(600, active_batches=100, sweep_requests=100,
                          sweep_interval_s=60, active_interval_s=5)
    assert plan.level is Degradation.ACTIVE_STRETCHED
    assert plan.sweep_interval_s == 60 * MAX_SWEEP_STRETCH
    total_rpm = 100 * 60 / plan.active_interval_s + 100 * 60 / plan.sweep_interval_s
    assert total_rpm == pytest.approx(600 * PLAN_HEADROOM)


def test_the_plan_recovers_when_the_load_falls() -> None:
    degraded = plan_intervals(100, 50, 10, 60, 5)
    recovered = plan_intervals(100, 2, 10, 60, 5)
    assert degraded.level is Degradation.ACTIVE_STRETCHED
    assert recovered.level is Degradation.NORMAL
