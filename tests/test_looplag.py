"""The event loop lag sampler sees a stall while it happens."""

from __future__ import annotations

import asyncio
import time

from monitor.looplag import INTERVAL_S, LoopLagSampler
from monitor.metrics import Metrics
from tests.harness import wait_until

LAG = "box_docgen_event_loop_lag_seconds"


def lag_samples(metrics: Metrics, le: str | None = None) -> float:
    name, labels = (f"{LAG}_bucket", {"le": le}) if le else (f"{LAG}_count", {})
    return metrics.registry.get_sample_value(name, labels) or 0.0


async def test_the_lag_histogram_sees_a_deliberate_blocking_call() -> None:
    """A 0.3 s synchronous call shows as one sample above 0.25 s; quiet samples stay small.
    (A stall shows as the part that overruns the sampler's sleep, so the test samples every
    50 ms; the daemon samples every 0.5 s and sees the stalls that matter, longer ones.)"""
    metrics = Metrics()
    sampler = LoopLagSampler(metrics.event_loop_lag, interval_s=0.05)
    sampler.start()
    try:
        async def quiet() -> bool:
            return lag_samples(metrics) >= 3

        await wait_until(quiet, 5, "three quiet samples", interval_s=0.01)
        before = lag_samples(metrics)
        time.sleep(0.3)  # noqa: ASYNC251 - the stall under test

        async def seen() -> bool:
            return lag_samples(metrics) > before

        await wait_until(seen, 5, "the sample after the stall", interval_s=0.01)
    finally:
        await sampler.stop()
    assert lag_samples(metrics) - lag_samples(metrics, "0.25") == 1
    assert lag_samples(metrics, "0.1") >= 3
    assert 0.25 <= sampler.worst_s < 5


async def test_the_daemon_samples_every_half_second_and_stop_ends_the_task() -> None:
    metrics = Metrics()
    sampler = LoopLagSampler(metrics.event_loop_lag)
    assert sampler.interval_s == INTERVAL_S == 0.5
    sampler.start()
    await sampler.stop()
    await sampler.stop()  # idempotent
    assert not [t for t in asyncio.all_tasks() if t.get_name() == "event-loop-lag"]
