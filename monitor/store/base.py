"""The state store interface: the job snapshot and the delivery outbox, committed together.

Every backend (SQLite now, PostgreSQL later) implements `Store` and passes the same contract
suite in `tests/test_store_contract.py`. Dialect differences stay inside the backend."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from types import TracebackType
from typing import Self

from monitor.model import Event, JobState, SnapshotChanges


class OutboxState(StrEnum):
    PENDING = "pending"
    CLAIMED = "claimed"
    DELIVERED = "delivered"
    DEAD = "dead"


@dataclass(frozen=True, slots=True)
class RoutedEvent:
    """An event and the notifiers the router chose for it: one outbox row per notifier."""

    event: Event
    notifiers: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class OutboxEntry:
    """One (event, notifier) row of the outbox."""

    event: Event
    notifier: str
    state: OutboxState
    attempts: int
    next_attempt_at: float  # unix seconds
    last_error: str | None


class Store(ABC):
    """Async, single-process view of the durable state. Open with `async with`."""

    async def __aenter__(self) -> Self:
        await self.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    @abstractmethod
    async def open(self) -> None:
        """Connect and migrate the schema to the current version."""

    @abstractmethod
    async def close(self) -> None:
        """Close every connection; idempotent."""

    @abstractmethod
    async def ping(self) -> None:
        """Raise if the store cannot answer a trivial query (readiness)."""

    # -- snapshot ---------------------------------------------------------------------------

    @abstractmethod
    async def load_snapshot(self) -> dict[str, JobState]:
        """Every job in the snapshot, by job id."""

    @abstractmethod
    async def load_batches(self, batch_ids: Iterable[str]) -> dict[str, JobState]:
        """The snapshot rows of every job in the given batches, by job id."""

    @abstractmethod
    async def status_counts(self) -> dict[str, int]:
        """Number of snapshot jobs per status."""

    @abstractmethod
    async def commit(
        self,
        changes: SnapshotChanges,
        events: Sequence[RoutedEvent],
        meta: Mapping[str, str] | None = None,
        now: float | None = None,
    ) -> int:
        """In ONE transaction: apply `changes`, append each event to the events table and one
        pending outbox row per (event, notifier), and set `meta` keys. An event whose id is
        already stored is skipped (never a second row for one change). Returns the number of
        outbox rows added."""

    @abstractmethod
    async def get_meta(self, key: str) -> str | None:
        """A value set by `commit(meta=...)`, or None."""

    # -- outbox -----------------------------------------------------------------------------

    @abstractmethod
    async def claim_due(
        self, notifier: str, now: float, limit: int, lease_s: float
    ) -> list[OutboxEntry]:
        """Mark up to `limit` due rows of `notifier` as claimed until `now + lease_s` and return
        them, oldest event first. Due: pending with `next_attempt_at <= now`, or claimed with an
        expired lease (a crashed sender's work)."""

    @abstractmethod
    async def mark_delivered(self, event_id: str, notifier: str) -> None:
        """The receiver accepted the event."""

    @abstractmethod
    async def mark_failed(
        self, event_id: str, notifier: str, error: str, next_attempt_at: float | None
    ) -> None:
        """One more failed attempt; pending again at `next_attempt_at`, or dead when None."""

    @abstractmethod
    async def next_due_at(self, notifier: str) -> float | None:
        """Earliest `next_attempt_at` (or lease expiry) among undelivered rows, or None."""

    @abstractmethod
    async def outbox_counts(self) -> dict[str, dict[OutboxState, int]]:
        """Rows per notifier and state."""

    @abstractmethod
    async def list_outbox(
        self, state: OutboxState, notifier: str | None = None, limit: int = 1000
    ) -> list[OutboxEntry]:
        """Rows in `state`, oldest first, optionally for one notifier."""

    @abstractmethod
    async def requeue_dead(
        self, now: float, event_id: str | None = None, notifier: str | None = None
    ) -> int:
        """Make dead rows pending again with attempts reset; returns how many."""

    @abstractmethod
    async def drop_dead(self, event_id: str | None = None, notifier: str | None = None) -> int:
        """Delete dead rows; returns how many."""
