"""End to end on PostgreSQL: the same scenario as `tests/test_e2e.py`, with the daemon's state
in a PostgreSQL schema of its own (the machine's server, see `tests/store_fixtures.py`)."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from pydantic import SecretStr

from monitor.simulator import SimulatorConfig, TimelineConfig
from tests.harness import TOKEN, World, wait_until, webhook_world
from tests.store_fixtures import PostgresBackend, postgres_admin
from tests.tcp_proxy import TcpProxy
from tests.test_e2e import start_batches, wait_all_delivered

pytestmark = pytest.mark.e2e


SIM_CONFIG = SimulatorConfig(
    seed=7, developer_tokens=[SecretStr(TOKEN)],
    timeline=TimelineConfig(submitted_after_s=0.3, min_duration_s=1.0, max_duration_s=4.0),
)


@pytest.fixture
async def world(tmp_path: Path, pg_backend: PostgresBackend) -> AsyncIterator[World]:
    async for w in webhook_world(tmp_path, SIM_CONFIG, World, state={"url": pg_backend.url}):
        yield w


@pytest.fixture
async def proxied_world(
    tmp_path: Path, pg_backend: PostgresBackend, pg_proxy: TcpProxy
) -> AsyncIterator[World]:
    """The daemon reaches PostgreSQL only through `pg_proxy`, which the test can cut."""
    url = pg_backend.url_through(pg_proxy.port)
    async for w in webhook_world(tmp_path, SIM_CONFIG, World, state={"url": url}):
        yield w


async def test_a_daemon_on_postgresql_killed_mid_scenario_delivers_every_change_once(
    world: World, pg_backend: PostgresBackend
) -> None:
    w = world
    await w.control.call("POST", "/_sim/seed", {"count": 300})  # history: the silent baseline
    w.daemon.start()
    await w.daemon.wait_ready()
    batch_ids = await start_batches(w, 10, 20)
    await w.receiver.wait_for(lambda r: len(r.ids()) >= 150, 30)
    w.daemon.kill()
    delivered_before = w.receiver.ids()
    w.daemon.start()
    await w.daemon.wait_ready()
    await wait_all_delivered(w, batch_ids)
    assert delivered_before <= w.receiver.ids()
    assert w.receiver.bad_signatures == 0
    historic = {j for j, v in (await w.control.jobs()).items() if v["batch_id"] not in batch_ids}
    assert not historic & {e["job"]["id"] for e in w.receiver.events().values() if "job" in e}
    assert await w.daemon.stop(signal.SIGTERM) == 0
    recorded = await postgres_admin(f'SELECT COUNT(*) FROM "{pg_backend.schema}".events')  # noqa: S608
    assert recorded == len(w.receiver.ids())  # the state really lived in PostgreSQL


async def test_postgresql_away_for_20_seconds_mid_scenario_loses_nothing(
    proxied_world: World, pg_proxy: TcpProxy
) -> None:
    """Polls and deliveries in flight when the connection goes fail and commit nothing; the
    daemon stays up and alive (an unreachable store is an outage to wait out, not a broken
    store to restart for), says it is not ready meanwhile, and once PostgreSQL is back every
    change arrives, each with one event id."""
    w = proxied_world
    w.daemon.start()
    await w.daemon.wait_ready()
    batch_ids = await start_batches(w, 10, 20)
    await w.receiver.wait_for(lambda r: len(r.ids()) >= 100, 30)
    await pg_proxy.cut()

    async def not_ready() -> bool:
        status, _ = await w.daemon.get("/readyz")
        return status == 503

    await wait_until(not_ready, 20, "/readyz to say the store is away")
    deadline = asyncio.get_running_loop().time() + 20  # the outage: jobs go on moving at Box
    while asyncio.get_running_loop().time() < deadline:
        status, body = await w.daemon.get("/healthz")
        assert status == 200, body
        await asyncio.sleep(0.5)
    assert w.daemon.proc is not None and w.daemon.proc.poll() is None  # still running
    await pg_proxy.restore()
    await w.daemon.wait_ready()
    await wait_all_delivered(w, batch_ids)
    assert '"store.retry"' in w.daemon.logs()
    assert await w.daemon.stop(signal.SIGTERM) == 0
