"""A wall clock for what is stored and compared across restarts (outbox due times, group
flushes) that never runs backwards while the process lives.

Due times in the outbox are wall-clock seconds because they must survive a restart; compared
with a raw `time.time()`, a clock stepped back an hour (NTP, an operator) would hold every retry
for that hour. This clock advances with the monotonic clock and follows the wall clock only
forwards, so a backward step costs nothing and a forward step makes rows due a little early."""

from __future__ import annotations

import time
from collections.abc import Callable


class SteadyWallClock:
    def __init__(
        self,
        wall: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._wall = wall
        self._monotonic = monotonic
        self._offset_s = wall() - monotonic()

    def __call__(self) -> float:
        """Wall-clock seconds: the monotonic clock plus the largest wall offset seen."""
        mono = self._monotonic()
        self._offset_s = max(self._offset_s, self._wall() - mono)
        return mono + self._offset_s
