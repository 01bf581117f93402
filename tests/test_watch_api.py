"""The watch API against a running daemon (a subprocess, real sockets): only Box ids are
accepted, the number of watched batches Box does not list yet is capped, and such watches never
slow the polling of real active batches."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from yarl import URL

from monitor.poller import WATCH_POLLS_PER_ROUND
from tests.harness import wait_until
from tests.test_e2e_active import API_TOKEN, World, make_world

pytestmark = pytest.mark.e2e

HEADERS = {"Authorization": f"Bearer {API_TOKEN}"}


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    async for w in make_world(tmp_path):
        yield w


async def post_watch(session: aiohttp.ClientSession, world: World, raw_id: str) -> int:
    """POST the watch route with `raw_id` put into the path exactly as given (no normalising)."""
    url = URL(f"{world.daemon.base_url}/api/v1/watch/batches/{raw_id}", encoded=True)
    async with session.post(url, headers=HEADERS) as resp:
        return resp.status


async def readyz(world: World) -> dict[str, object]:
    import json

    _, body = await world.daemon.get("/readyz")
    return dict(json.loads(body))


@pytest.mark.parametrize("raw_id", [
    ".", "..", "%2E", "%2E%2E", "..%2F..%2Fadmin", "%2E%2E%2F%2E%2E%2Fadmin", "", "12a", "-1",
    "1" * 21, "%E2%80%AE123", "%20123", "%D9%A3",  # ARABIC-INDIC DIGIT THREE: a digit, not a Box id
])
async def test_the_watch_api_answers_400_to_anything_but_a_box_id(
    world: World, raw_id: str
) -> None:
    world.daemon.start()
    await world.daemon.wait_ready()
    async with aiohttp.ClientSession() as session:
        assert await post_watch(session, world, raw_id) == 400
        assert await post_watch(session, world, "12345") == 202
    assert (await readyz(world))["active_batches"] == 1  # only the Box id got in
    assert await world.daemon.stop() == 0


async def test_unknown_watches_are_capped_and_never_slow_a_real_active_batch(
    world: World,
) -> None:
    """1,000 watches (the default `http.max_watched_batches`) of ids Box does not know: the
    next one is 429, the plan keeps the configured active interval and a real batch watched
    before them is followed to its outcome within a few active intervals."""
    batch = await world.start_and_watch_a_batch(history=10)
    async with aiohttp.ClientSession() as session:
        statuses = await asyncio.gather(
            *(post_watch(session, world, str(9_000_000_000 + i)) for i in range(1000)))
        assert set(statuses) == {202}
        assert await post_watch(session, world, "8999999999") == 429
        assert await post_watch(session, world, batch["batch_id"]) == 202  # followed already
    refused = await asyncio.to_thread(world.watch, "8999999999")
    assert refused.returncode == 1 and "429" in refused.stderr

    polled_unknown = world.sim.state.stats.count("batch_jobs", 404)

    async def unknown_polled_twice_per_slot() -> bool:
        return world.sim.state.stats.count("batch_jobs", 404) >= \
            polled_unknown + 2 * WATCH_POLLS_PER_ROUND

    await wait_until(unknown_polled_twice_per_slot, 15, "two active rounds after the watches")
    ready = await readyz(world)
    assert ready["degradation"] == "normal" and ready["active_interval_s"] == 1.0, ready
    await world.advance(60)  # the real batch's jobs reach their outcome
    await world.receiver.wait_for(
        lambda r: len(world.of("batch.completed", batch["batch_id"])) == 1, 10)
    assert await world.daemon.stop() == 0
