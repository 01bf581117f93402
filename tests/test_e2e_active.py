"""End to end over real sockets, the daemon as a subprocess: the watch API and CLI, detection
within the active interval, degradation and recovery in /metrics and /readyz, and late events
after a stop. The simulator's clock is frozen: jobs move only when the test advances it."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from monitor.simulator import SimulatorConfig, TimelineConfig
from tests import harness
from tests.harness import wait_until

pytestmark = pytest.mark.e2e

TERMINAL = {"completed", "completed_with_error", "failed"}
API_TOKEN = "watch-token"
ACTIVE_INTERVAL_S = 1.0


class World(harness.World):
    async def advance(self, seconds: float) -> None:
        await self.control.call("POST", "/_sim/clock/advance", {"seconds": seconds})

    def watch(self, batch_id: str, token: str = API_TOKEN) -> subprocess.CompletedProcess[str]:
        config = self.config_path
        if token != API_TOKEN:
            config = self.config_path.with_name("wrong.yaml")
            config.write_text(self.config_path.read_text().replace(API_TOKEN, token))
        return subprocess.run(
            [sys.executable, "-m", "monitor.cli", "watch", batch_id, "--config", str(config)],
            capture_output=True, text=True, timeout=30, check=False,
        )

    def of(self, type_: str, batch_id: str | None = None) -> list[dict[str, Any]]:
        return [e for e in self.receiver.events().values() if e["type"] == type_
                and (batch_id is None or (e.get("job") or e.get("batch") or {}).get(
                    "batch_id", (e.get("batch") or {}).get("id")) == batch_id)]

    async def start_and_watch_a_batch(self, history: int, jobs: int = 3) -> dict[str, Any]:
        """Seed `history` jobs, start the daemon, start a batch of `jobs`, watch it through the
        CLI and wait until every job of it was announced."""
        await self.control.call("POST", "/_sim/seed", {"count": history})
        self.daemon.start()
        await self.daemon.wait_ready()
        batch = await self.control.start_batch(jobs)
        assert (await asyncio.to_thread(self.watch, batch["batch_id"])).returncode == 0
        await self.receiver.wait_for(
            lambda r: len(self.of("job.discovered", batch["batch_id"])) == jobs, 10)
        return batch

    async def metric(self, name: str, absent: float | None = None) -> float:
        """A sample of /metrics; `absent` when it is not there (else that fails the test)."""
        _, text = await self.daemon.get("/metrics")
        for line in text.splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
        if absent is not None:
            return absent
        raise AssertionError(f"{name} not in /metrics")


async def make_world(
    tmp_path: Path, poll: dict[str, Any] | None = None, **box: Any
) -> AsyncIterator[World]:
    sim_config = SimulatorConfig(
        seed=3, developer_tokens=[SecretStr("e2e-token")], frozen_clock=True,
        timeline=TimelineConfig(submitted_after_s=10, min_duration_s=20, max_duration_s=40),
    )
    async for w in harness.webhook_world(
        tmp_path, sim_config, World, box=box, http={"api_token": API_TOKEN},
        poll={"sweep_interval": "1h", "active_interval": f"{ACTIVE_INTERVAL_S}s",
              "max_backoff": "2s", **(poll or {})},
    ):
        yield w


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    async for w in make_world(tmp_path):
        yield w


@pytest.fixture
async def tight_world(tmp_path: Path) -> AsyncIterator[World]:
    # A 60/min budget: 3 active batches at the 1 s interval exceed it. Discovery is read every
    # 5 s here (its default is the active interval, 1 s in these tests, which alone would take
    # the whole budget): this test is about active polls degrading and recovering.
    async for w in make_world(tmp_path, poll={"discover_interval": "5s"},
                              requests_per_minute=60):
        yield w


async def test_a_watched_batch_is_detected_within_the_active_interval(world: World) -> None:
    await world.control.call("POST", "/_sim/seed", {"count": 50})
    world.daemon.start()
    await world.daemon.wait_ready()
    batch = await world.control.start_batch(3)
    refused = await asyncio.to_thread(world.watch, batch["batch_id"], "wrong-token")
    assert refused.returncode == 1 and "401" in refused.stderr
    done = await asyncio.to_thread(world.watch, batch["batch_id"])
    assert done.returncode == 0, done.stderr
    await world.receiver.wait_for(
        lambda r: len(world.of("job.discovered", batch["batch_id"])) == 3, 10)
    listings = world.sim.state.stats.count("list_jobs")

    await world.advance(60)  # every job reaches its outcome now
    changed_at = time.time()
    await world.receiver.wait_for(
        lambda r: len(world.of("batch.completed", batch["batch_id"])) == 1, 10)
    finals = [e for e in world.of("job.status_changed", batch["batch_id"])
              if e["to_status"] in TERMINAL]
    assert len(finals) == 3
    for event in finals:
        detected = datetime.fromisoformat(event["detected_at"]).timestamp()
        assert detected - changed_at <= ACTIVE_INTERVAL_S + 0.5, event
    # No sweep was needed: the listing was read only at its head (discovery, one page each
    # active interval), never in full.
    heads = world.sim.state.stats.count("list_jobs") - listings
    assert heads <= (time.time() - changed_at) / ACTIVE_INTERVAL_S + 2
    assert await world.metric('box_docgen_active_batches{account="default"}') == 0
    assert await world.metric('box_docgen_request_budget_used_total{account="default"}') >= 3
    assert await world.daemon.stop() == 0


async def test_changes_made_while_the_daemon_was_stopped_arrive_late_once(world: World) -> None:
    batch = await world.start_and_watch_a_batch(history=20)
    assert await world.daemon.stop() == 0
    stopped_at = time.time()

    await world.advance(60)
    world.daemon.start()
    await world.daemon.wait_ready()
    await world.receiver.wait_for(
        lambda r: len(world.of("batch.completed", batch["batch_id"])) == 1, 15)
    late = [e for e in world.receiver.events().values() if e.get("late")]
    assert {e["type"] for e in late} >= {"job.status_changed", "batch.completed"}
    for event in late:
        last_running = datetime.fromisoformat(event["last_running_at"]).timestamp()
        assert last_running <= stopped_at
    on_time = [e for e in world.receiver.events().values() if not e.get("late")]
    assert {e["type"] for e in on_time} == {"job.discovered"}
    assert len(world.of("job.discovered")) == 3  # the history and the batch: nothing again
    assert await world.daemon.stop() == 0


async def test_degradation_and_recovery_show_in_metrics_and_readiness(
    tight_world: World,
) -> None:
    world = tight_world
    world.daemon.start()
    await world.daemon.wait_ready()
    batches = [await world.control.start_batch(2) for _ in range(3)]
    for b in batches:
        assert (await asyncio.to_thread(world.watch, b["batch_id"])).returncode == 0

    async def level_is(level: float) -> bool:
        return await world.metric('box_docgen_degradation_level{account="default"}') == level

    await wait_until(lambda: level_is(2), 10, "degradation to the active interval")
    _, ready = await world.daemon.get("/readyz")
    assert json.loads(ready)["degradation"] == "active_stretched"
    assert await world.metric(
        'box_docgen_effective_interval_seconds{account="default",kind="active"}') > 1

    await world.advance(60)  # the batches finish; the active set empties
    await world.receiver.wait_for(lambda r: len(world.of("batch.completed")) == 3, 30)
    await wait_until(lambda: level_is(0), 10, "recovery")
    _, ready = await world.daemon.get("/readyz")
    assert json.loads(ready)["degradation"] == "normal"
    assert await world.daemon.stop() == 0


async def test_a_new_batch_is_announced_within_two_active_intervals_without_a_sweep(
    world: World,
) -> None:
    """Nobody watches it and the next sweep is an hour away: discovery reads the head of the
    listing (one page of the three the history fills) every interval, so the batch's jobs are
    announced within two active intervals and the batch is followed from then on."""
    await world.control.call("POST", "/_sim/seed", {"count": 2500})
    world.daemon.start()
    await world.daemon.wait_ready()
    listings = world.sim.state.stats.count("list_jobs")
    started = time.monotonic()
    batch = await world.control.start_batch(5)
    await world.receiver.wait_for(
        lambda r: len(world.of("job.discovered", batch["batch_id"])) == 5, 10)
    took_s = time.monotonic() - started
    assert took_s <= 2 * ACTIVE_INTERVAL_S + 1.0, took_s  # two intervals, plus delivery
    heads = world.sim.state.stats.count("list_jobs") - listings
    assert 1 <= heads <= took_s / ACTIVE_INTERVAL_S + 2  # one page a read, never the history
    await world.advance(60)
    await world.receiver.wait_for(
        lambda r: len(world.of("batch.completed", batch["batch_id"])) == 1, 10)
    lag_s = await world.metric('box_docgen_discovery_lag_seconds{account="default"}')
    assert lag_s <= 2 * ACTIVE_INTERVAL_S
    assert await world.metric('box_docgen_listing_newest_first{account="default"}') == 1
    assert await world.daemon.stop() == 0


@pytest.fixture
async def budget_world(tmp_path: Path) -> AsyncIterator[World]:
    # 300/min: twelve batches polled one by one every 1 s would take 720/min and degrade.
    async for w in make_world(tmp_path, requests_per_minute=300):
        yield w


async def test_many_active_batches_cost_one_read_of_the_head_a_round(budget_world: World) -> None:
    """Twelve new batches of five jobs fit on the listing's first page: once each has been
    seen, an active round reads that page instead of twelve batch polls (discovery, which would
    read the same page, waits), so the budget holds the 1 s interval, and every job's outcome
    is still announced within it."""
    world = budget_world
    await world.control.call("POST", "/_sim/seed", {"count": 1500})
    world.daemon.start()
    await world.daemon.wait_ready()
    batches = [await world.control.start_batch(5) for _ in range(12)]
    await world.receiver.wait_for(lambda r: len(world.of("job.discovered")) == 60, 10)

    async def windows() -> float:
        return await world.metric(
            'box_docgen_polls_total{account="default",kind="window",outcome="ok"}', absent=0)

    await wait_until(lambda: _at_least(windows, 3), 10, "three head windows")
    stats = world.sim.state.stats
    heads, polls = stats.count("list_jobs"), stats.count("batch_jobs")
    discovers = await world.metric(
        'box_docgen_polls_total{account="default",kind="discover",outcome="ok"}')
    started = time.monotonic()
    await world.advance(15)  # past submitted_after_s: every job moves
    await world.receiver.wait_for(
        lambda r: sum(1 for e in world.of("job.status_changed")
                      if e["to_status"] == "submitted") == 60, 10)
    took_s = time.monotonic() - started
    assert took_s <= 2 * ACTIVE_INTERVAL_S + 1.0, took_s
    await wait_until(lambda: _at_least(windows, 6), 10, "three more windows")
    rounds_s = time.monotonic() - started
    assert stats.count("batch_jobs") - polls <= 2  # a failure or a stale batch at most
    assert stats.count("list_jobs") - heads <= rounds_s / ACTIVE_INTERVAL_S + 2
    assert await world.metric(
        'box_docgen_polls_total{account="default",kind="discover",outcome="ok"}') == discovers
    _, ready = await world.daemon.get("/readyz")
    assert json.loads(ready)["degradation"] == "normal"
    await world.advance(60)
    await world.receiver.wait_for(lambda r: len(world.of("batch.completed")) == len(batches), 15)
    assert await world.metric('box_docgen_active_batches{account="default"}') == 0
    assert await world.daemon.stop() == 0


async def _at_least(read: Any, value: float) -> bool:
    return bool(await read() >= value)
