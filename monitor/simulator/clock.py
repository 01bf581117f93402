"""The simulator's clock: wall time plus an offset that tests push forward, so a job timeline
of minutes runs in no time at all. Every timeline and token expiry reads this clock."""

from __future__ import annotations

import time
from collections.abc import Callable


class SimClock:
    """Unix seconds as the simulator sees them. A frozen clock stands still until advanced."""

    def __init__(self, *, frozen: bool = False, wall: Callable[[], float] = time.time) -> None:
        self._wall = wall
        self._frozen_at_s: float | None = wall() if frozen else None
        self._offset_s = 0.0

    @property
    def frozen(self) -> bool:
        return self._frozen_at_s is not None

    def now(self) -> float:
        base_s = self._wall() if self._frozen_at_s is None else self._frozen_at_s
        return base_s + self._offset_s

    def advance(self, seconds: float) -> float:
        """Move time forward (never back: a job's history must not be undone) and return now."""
        if seconds < 0:
            raise ValueError(f"the clock only moves forward, not by {seconds} s")
        self._offset_s += seconds
        return self.now()
