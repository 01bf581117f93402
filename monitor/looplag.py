"""Event loop lag: how late the loop wakes a task that asked to sleep. Anything that blocks the
loop (CPU-bound bookkeeping, a synchronous call) stalls every task at once - polling, delivery,
`/healthz` - and shows here while it happens, as `box_docgen_event_loop_lag_seconds`."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable

from prometheus_client import Histogram

INTERVAL_S = 0.5


class LoopLagSampler:
    """Sleeps `interval_s` on the monotonic clock, over and over, and observes the overshoot.
    `worst_s` keeps the longest seen (for benchmarks and tests)."""

    def __init__(
        self,
        histogram: Histogram,
        interval_s: float = INTERVAL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.histogram = histogram
        self.interval_s = interval_s
        self.clock = clock
        self.worst_s = 0.0
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="event-loop-lag")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self) -> None:
        while True:
            started = self.clock()
            await asyncio.sleep(self.interval_s)
            lag_s = max(self.clock() - started - self.interval_s, 0.0)
            self.histogram.observe(lag_s)
            self.worst_s = max(self.worst_s, lag_s)
