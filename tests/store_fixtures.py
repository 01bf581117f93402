"""Store backends for the contract suite (`tests/test_store_contract.py`) and the `store`
fixtures in `tests/conftest.py`.

A backend knows how to build stores on one test's database and how to count the connections
they left open; everything backend-specific (paths, SQL, threads) stays here, so the contract
suite speaks only the `Store` interface. A PostgreSQL backend joins by adding its class to
`BACKENDS`."""

from __future__ import annotations

import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path
from typing import ClassVar

from monitor.store.base import Store
from monitor.store.sqlite import SQLiteStore

LEAK_WAIT_S = 2.0


class StoreBackend(ABC):
    """Builds stores on one test's (initially absent) database and closes whatever it built."""

    name: ClassVar[str]

    def __init__(self) -> None:
        self.built: list[Store] = []

    @property
    @abstractmethod
    def schema_version(self) -> int:
        """The schema version this build migrates to."""

    @abstractmethod
    def _build(self, schema_delta: int) -> Store: ...

    def build(self, *, schema_delta: int = 0) -> Store:
        """A new, unopened store on this test's database, as a build that knows `schema_delta`
        more (newer build) or fewer (older build) schema versions than this one."""
        store = self._build(schema_delta)
        self.built.append(store)
        return store

    @abstractmethod
    def prepare_empty(self) -> None:
        """Make this test's database exist and hold nothing at all."""

    @abstractmethod
    def open_connections(self) -> int:
        """Connections opened during this test that are still open."""

    async def aclose(self) -> None:
        for store in self.built:
            await store.close()


class SQLiteBackend(StoreBackend):
    name = "sqlite"

    def __init__(self, tmp_path: Path) -> None:
        super().__init__()
        # Parent directory absent on purpose: opening must create it.
        self.path = tmp_path / "state" / "monitor.db"
        self._threads_before = set(self._worker_threads())

    @property
    def schema_version(self) -> int:
        return len(SQLiteStore.migrations)

    def _build(self, schema_delta: int) -> Store:
        migrations = SQLiteStore.migrations
        if schema_delta < 0:
            migrations = migrations[:schema_delta]
        elif schema_delta > 0:
            migrations += tuple(
                (f"CREATE TABLE from_the_future_{i} (x INTEGER)",) for i in range(schema_delta)
            )
        if migrations is SQLiteStore.migrations:
            return SQLiteStore(str(self.path))
        build = type("SQLiteStoreOfAnotherBuild", (SQLiteStore,), {"migrations": migrations})
        return build(str(self.path))

    def prepare_empty(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_bytes(b"")

    @staticmethod
    def _worker_threads() -> list[threading.Thread]:
        # aiosqlite runs each connection on its own thread; it ends when the connection closes.
        return [t for t in threading.enumerate() if "_connection_worker_thread" in t.name]

    def open_connections(self) -> int:
        deadline = time.monotonic() + LEAK_WAIT_S
        left = [t for t in self._worker_threads() if t not in self._threads_before]
        for thread in left:  # a closed connection's thread may take a moment to finish
            thread.join(max(deadline - time.monotonic(), 0.0))
        return sum(thread.is_alive() for thread in left)


BACKENDS: list[Callable[[Path], StoreBackend]] = [SQLiteBackend]
