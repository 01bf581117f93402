"""A store handle's fence and the listener told when a fenced write is refused; both backends
keep them the same way (the check itself is each backend's SQL)."""

from __future__ import annotations

from collections.abc import Callable

import structlog

from monitor.errors import LeaseLost
from monitor.store.base import Fence

_log = structlog.get_logger(__name__)


class Fencing:
    def __init__(self) -> None:
        self._fence: Fence | None = None
        self._lost_listener: Callable[[Fence], None] | None = None

    def set_fence(self, fence: Fence | None) -> None:
        self._fence = fence

    def on_lease_lost(self, listener: Callable[[Fence], None] | None) -> None:
        self._lost_listener = listener

    def _lease_lost(self, fence: Fence) -> LeaseLost:
        """The error a refused write raises; the listener hears of it first, so the keeper
        steps down even when the writer's caller swallows store errors."""
        if self._lost_listener is not None:
            try:
                self._lost_listener(fence)
            except Exception:
                _log.exception("store.lease_lost_listener_failed", account=fence.account)
        return LeaseLost(fence.account, fence.owner, fence.epoch)
