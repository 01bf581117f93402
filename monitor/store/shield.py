"""Writes the caller's cancellation cannot tear: each runs in a task of its own behind
`asyncio.shield`, so the caller sees CancelledError at once while the transaction still commits
or rolls back whole, and `close()` can wait for every write still in flight."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

import structlog

_T = TypeVar("_T")
_log = structlog.get_logger(__name__)


class ShieldedWrites:
    def __init__(self) -> None:
        self._in_flight: set[asyncio.Task[Any]] = set()

    async def _shielded(self, write: Coroutine[Any, Any, _T]) -> _T:
        task = asyncio.ensure_future(write)
        self._in_flight.add(task)
        task.add_done_callback(self._in_flight.discard)
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            task.add_done_callback(self._log_abandoned_failure)
            raise

    async def _writes_done(self) -> None:
        """Return once no shielded write is in flight (new ones are the caller's to refuse)."""
        while self._in_flight:
            await asyncio.wait(set(self._in_flight))

    def _log_abandoned_failure(self, task: asyncio.Task[Any]) -> None:
        # Its caller was cancelled, so nobody else will hear that this write failed.
        if not task.cancelled() and (exc := task.exception()) is not None:
            _log.error("store.write_failed_after_cancel", store=repr(self), error=str(exc))
