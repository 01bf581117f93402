"""Shared fixtures. Each section belongs to one axis; add yours in its own section."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from monitor.store.base import Store

try:  # `python -m pytest` from the repository root, as the README says
    from tests.receiver import WebhookReceiver
    from tests.store_fixtures import BACKENDS, PostgresBackend, StoreBackend
    from tests.tcp_proxy import TcpProxy
except ModuleNotFoundError:  # plain `pytest`: only tests/ itself is on sys.path
    from receiver import WebhookReceiver  # type: ignore[no-redef]
    from store_fixtures import (  # type: ignore[no-redef]
        BACKENDS,
        PostgresBackend,
        StoreBackend,
    )
    from tcp_proxy import TcpProxy  # type: ignore[no-redef]

# -- store: backends for the contract suite -------------------------------------------------
# `store_backend` is the factory: it builds stores on this test's database, closes everything
# it built, then fails the test if any connection is still open. `store` is one opened store.


@pytest.fixture(params=BACKENDS, ids=lambda make: make.name)  # type: ignore[attr-defined]
async def store_backend(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[StoreBackend]:
    backend: StoreBackend = request.param(tmp_path)
    yield backend
    await backend.aclose()
    assert backend.open_connections() == 0, f"{backend.name}: a connection was left open"


@pytest.fixture
async def store(store_backend: StoreBackend) -> Store:
    store = store_backend.build()
    await store.open()
    return store


# -- end of store section -------------------------------------------------------------------


# -- postgres: one schema of the test server, and a way to take the server away -------------
# `pg_backend` is one test's schema (dropped after; the test fails if a connection of it is
# left open). `pg_proxy` relays to the test server until the test cuts it.


@pytest.fixture
async def pg_backend(tmp_path: Path) -> AsyncIterator[PostgresBackend]:
    backend = PostgresBackend(tmp_path)
    yield backend
    await backend.aclose()
    assert backend.open_connections() == 0, "postgres: a connection was left open"


@pytest.fixture
async def pg_proxy(pg_backend: PostgresBackend) -> AsyncIterator[TcpProxy]:
    proxy = TcpProxy(*pg_backend.server)
    await proxy.start()
    yield proxy
    await proxy.aclose()


# -- end of postgres section ----------------------------------------------------------------


# -- webhook receiver: a real, signature-checking receiver on loopback (tests/receiver.py) ----


@pytest.fixture
async def receiver() -> AsyncIterator[WebhookReceiver]:
    r = await WebhookReceiver().start()
    yield r
    await r.close()


# -- end of webhook receiver section --------------------------------------------------------
