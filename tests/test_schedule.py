"""The poll schedule runs on the monotonic clock: a wall clock stepped back (NTP, an operator)
neither stalls the sweeps and active polls nor makes `/readyz` lie. In process, so the daemon's
wall clock can be stepped; the simulator and the webhook receiver are real, over sockets."""

from __future__ import annotations

import functools
import time
from pathlib import Path

import aiohttp
import pytest
from pydantic import SecretStr

from monitor.config import load_config
from monitor.daemon import Daemon
from monitor.simulator import SimulatorConfig, TimelineConfig, start_simulator
from tests.harness import TOKEN, SimControl, wait_until, write_config
from tests.receiver import WebhookReceiver

pytestmark = pytest.mark.e2e

HOUR_S = 3600.0


class SteppedWallClock:
    """The real wall clock plus an offset a test changes at will (a clock step)."""

    def __init__(self) -> None:
        self.offset_s = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset_s


async def test_a_backward_wall_clock_step_of_an_hour_does_not_stall_polling(
    tmp_path: Path,
) -> None:
    sim = await start_simulator(SimulatorConfig(
        seed=3, developer_tokens=[SecretStr(TOKEN)],
        timeline=TimelineConfig(submitted_after_s=0.2, min_duration_s=1.0, max_duration_s=2.0),
    ))
    receiver = await WebhookReceiver().start()
    path = write_config(tmp_path / "config.yaml", box_url=sim.url, hook_url=receiver.url,
                        http_port=0)
    session = aiohttp.ClientSession()
    wall = SteppedWallClock()
    try:
        async with Daemon(load_config(path), clock=wall) as daemon:
            sample = functools.partial(daemon.metrics.registry.get_sample_value,
                                       "box_docgen_polls_total")

            def sweeps() -> float:
                return sample({"kind": "sweep", "outcome": "ok"}) or 0.0

            async def swept(n: float) -> bool:
                return sweeps() >= n

            await wait_until(lambda: swept(1), 10, "the first sweep")
            wall.offset_s = -HOUR_S
            after_step = sweeps()
            await wait_until(lambda: swept(after_step + 3), 10,
                             "three sweeps after the wall clock went back an hour")

            control = SimControl(sim.url, session)
            batch = await control.start_batch(3)

            async def completed() -> bool:
                return f"{batch['batch_id']}:completed:3" in receiver.ids()

            await wait_until(completed, 15, "the batch's outcome delivered after the step")

            daemon.poller.watch("999999999")  # unknown to Box: active until its watch expires
            active_before = sample({"kind": "active", "outcome": "ok"}) or 0.0

            async def active_polled() -> bool:
                return (sample({"kind": "active", "outcome": "ok"}) or 0.0) >= active_before + 2

            await wait_until(active_polled, 20, "two active rounds after the step")
            assert "999999999" in daemon.poller.active
            ready, details = await daemon.readiness()
            assert ready, details
            assert 0 <= details["last_sweep_age_s"] < 5
    finally:
        await session.close()
        await receiver.close()
        await sim.close()
