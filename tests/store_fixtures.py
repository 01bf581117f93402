"""Store backends for the contract suite (`tests/test_store_contract.py`) and the `store`
fixtures in `tests/conftest.py`.

A backend knows how to build stores on one test's database and how to count the connections
they left open; everything backend-specific (paths, SQL, threads) stays here, so the contract
suite speaks only the `Store` interface. Each backend is a class in `BACKENDS`.

PostgreSQL: the server at `DOCGEN_MONITOR_TEST_POSTGRES_URL` (default: the machine's,
127.0.0.1:5432, database `test`, user `postgres`); each test gets its own schema, dropped after.
Where that server does not answer its tests skip, except under CI (`CI=true`), where they fail:
CI must never pass without them."""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import os
import threading
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, ClassVar, TypeVar
from urllib.parse import urlsplit

import asyncpg
import pytest

from monitor.store import open_store
from monitor.store.base import Store
from monitor.store.postgres import PostgresStore
from monitor.store.sqlite import SQLiteStore

_T = TypeVar("_T")

LEAK_WAIT_S = 2.0


_S = TypeVar("_S", SQLiteStore, PostgresStore)


def of_another_build(store_class: type[_S], schema_delta: int) -> type[_S]:
    """`store_class` as a build that knows `schema_delta` more (each step a new table) or fewer
    schema versions than this one; `store_class` itself for 0."""
    migrations = store_class.migrations
    if schema_delta < 0:
        migrations = migrations[:schema_delta]
    elif schema_delta > 0:
        migrations += tuple(
            (f"CREATE TABLE from_the_future_{i} (x INTEGER)",) for i in range(schema_delta)
        )
    if migrations is store_class.migrations:
        return store_class
    name = f"{store_class.__name__}OfAnotherBuild"
    return type(name, (store_class,), {"migrations": migrations})


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

    @property
    @abstractmethod
    def url(self) -> str:
        """The URL of this test's database."""

    @abstractmethod
    def url_beside(self, name: str) -> str:
        """The URL of a second database beside it (another file or schema), cleaned up with
        this one."""

    def build_at(self, url: str) -> Store:
        """A new, unopened store at `url` (this backend's kind)."""
        store = open_store(url)
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
        return of_another_build(SQLiteStore, schema_delta)(str(self.path))

    @property
    def url(self) -> str:
        return f"sqlite:///{self.path}"

    def url_beside(self, name: str) -> str:
        return f"sqlite:///{self.path.with_name(f'monitor.{name}.db')}"

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


POSTGRES_URL = os.environ.get(
    "DOCGEN_MONITOR_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
)


def run_sync(make: Callable[[], Awaitable[_T]]) -> _T:
    """Run a coroutine to completion on its own loop in another thread: for the synchronous
    parts of `StoreBackend` while a test's loop is running in this one."""
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, make()).result()  # type: ignore[arg-type]


async def postgres_admin(sql: str, *args: Any) -> Any:
    """One statement on a connection of its own to the test server (schemas, leak counts)."""
    conn = await asyncpg.connect(POSTGRES_URL, timeout=5)
    try:
        return await conn.fetchval(sql, *args)
    finally:
        await conn.close()


@functools.cache
def postgres_unreachable() -> str | None:
    """Why the test server does not answer, or None when it does (asked once a session)."""
    try:
        run_sync(lambda: postgres_admin("SELECT 1"))
    except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
        return f"PostgreSQL at {POSTGRES_URL} does not answer: {exc}"
    return None


def require_postgres() -> None:
    """Skip the calling test when the server is away; fail it under CI."""
    if (reason := postgres_unreachable()) is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{reason} (CI=true: .ci/run must start it)")
        pytest.skip(reason)


class PostgresBackend(StoreBackend):
    """One test's schema on the test server; its connections are told apart from everyone
    else's by their application_name, which is the schema's name."""

    name = "postgres"

    def __init__(self, tmp_path: Path) -> None:
        super().__init__()
        require_postgres()
        self.schema = f"test_{uuid.uuid4().hex[:16]}"
        self._url = self._schema_url(self.schema)
        self._beside: list[str] = []

    def _schema_url(self, schema: str) -> str:
        sep = "&" if "?" in POSTGRES_URL else "?"
        return f"{POSTGRES_URL}{sep}schema={schema}&application_name={self.schema}"

    @property
    def url(self) -> str:
        return self._url

    def url_beside(self, name: str) -> str:
        schema = f"{self.schema}_{name}"
        self._beside.append(schema)
        return self._schema_url(schema)

    @property
    def server(self) -> tuple[str, int]:
        """The test server's host and port."""
        parts = urlsplit(POSTGRES_URL)
        return parts.hostname or "127.0.0.1", parts.port or 5432

    def url_through(self, port: int, password: str | None = None) -> str:
        """This schema's URL with the server at 127.0.0.1:`port` (a proxy), and a password."""
        parts = urlsplit(self.url)
        secret = f":{password}" if password else ""
        return parts._replace(
            netloc=f"{parts.username or 'postgres'}{secret}@127.0.0.1:{port}"
        ).geturl()

    @property
    def schema_version(self) -> int:
        return len(PostgresStore.migrations)

    def _build(self, schema_delta: int) -> Store:
        return of_another_build(PostgresStore, schema_delta)(self.url)

    def prepare_empty(self) -> None:
        run_sync(lambda: postgres_admin(f'CREATE SCHEMA IF NOT EXISTS "{self.schema}"'))

    def open_connections(self) -> int:
        async def count() -> int:
            deadline = time.monotonic() + LEAK_WAIT_S
            while True:  # a closed connection's backend may take a moment to exit
                n = int(await postgres_admin(
                    "SELECT COUNT(*) FROM pg_stat_activity WHERE application_name = $1",
                    self.schema,
                ))
                if n == 0 or time.monotonic() > deadline:
                    return n
                await asyncio.sleep(0.05)

        return run_sync(count)

    async def aclose(self) -> None:
        await super().aclose()
        for schema in (self.schema, *self._beside):
            await postgres_admin(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


BACKENDS: list[Callable[[Path], StoreBackend]] = [SQLiteBackend, PostgresBackend]
