"""The poll schedule runs on the monotonic clock: a wall clock stepped back (NTP, an operator)
neither stalls the sweeps and active polls nor makes `/readyz` lie. In process, so the daemon's
wall clock can be stepped; the simulator and the webhook receiver are real, over sockets."""

from __future__ import annotations

import functools
import os
import time
from pathlib import Path

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families
from pydantic import SecretStr

from monitor.config import load_config
from monitor.daemon import Daemon
from monitor.simulator import SimulatorConfig, TimelineConfig, start_simulator
from tests.harness import TOKEN, DaemonProcess, SimControl, free_port, wait_until, write_config
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
            get = functools.partial(daemon.metrics.registry.get_sample_value,
                                    "box_docgen_polls_total")

            def sample(labels: dict[str, str]) -> float | None:
                return get({"account": "default", **labels})

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

            # unknown to Box: active until its watch expires
            daemon.units["default"].poller.watch("999999999")
            active_before = sample({"kind": "active", "outcome": "ok"}) or 0.0

            async def active_polled() -> bool:
                return (sample({"kind": "active", "outcome": "ok"}) or 0.0) >= active_before + 2

            await wait_until(active_polled, 20, "two active rounds after the step")
            assert "999999999" in daemon.units["default"].poller.active
            ready, details = await daemon.readiness()
            assert ready, details
            assert 0 <= details["last_sweep_age_s"] < 5
    finally:
        await session.close()
        await receiver.close()
        await sim.close()


LIBFAKETIME = next(Path("/usr/lib").glob("*/faketime/libfaketime.so.1"), Path("libfaketime.so.1"))


@pytest.mark.skipif(not LIBFAKETIME.exists() and not os.environ.get("CI"),
                    reason="Debian's faketime is not installed (.ci/run installs it)")
async def test_the_daemon_process_keeps_polling_when_its_own_wall_clock_goes_back_an_hour(
    tmp_path: Path,
) -> None:
    """The real process clock, not an injected one: libfaketime steps `time.time()` and
    `datetime.now()` of the daemon (APScheduler's clock too) back an hour while it runs; the
    monotonic clock is left alone, as NTP leaves it."""
    step_file = tmp_path / "faketime"
    step_file.write_text("+0\n")
    env = {"LD_PRELOAD": str(LIBFAKETIME), "FAKETIME_TIMESTAMP_FILE": str(step_file),
           "FAKETIME_NO_CACHE": "1", "FAKETIME_DONT_FAKE_MONOTONIC": "1"}
    sim = await start_simulator(SimulatorConfig(
        seed=4, developer_tokens=[SecretStr(TOKEN)],
        timeline=TimelineConfig(submitted_after_s=0.2, min_duration_s=1.0, max_duration_s=2.0),
    ))
    receiver = await WebhookReceiver().start()
    port = free_port()
    path = write_config(tmp_path / "config.yaml", box_url=sim.url, hook_url=receiver.url,
                        http_port=port)
    daemon = DaemonProcess(path, port, env=env)
    session = aiohttp.ClientSession()
    try:
        daemon.start()
        await daemon.wait_ready()

        async def sweeps() -> float:
            _, text = await daemon.get("/metrics")
            for family in text_string_to_metric_families(text):
                for sample in family.samples:
                    if (sample.name == "box_docgen_polls_total"
                            and sample.labels == {"account": "default", "kind": "sweep",
                                                  "outcome": "ok"}):
                        return sample.value
            return 0.0

        step_file.write_text("-1h\n")

        async def stepped() -> bool:
            return "wall_clock_stepped_back" in daemon.logs()

        await wait_until(stepped, 10, "the daemon to notice its clock went back")
        after_step = await sweeps()

        async def swept_again() -> bool:
            return await sweeps() >= after_step + 3

        await wait_until(swept_again, 15, "three sweeps after the wall clock went back an hour")
        batch = await SimControl(sim.url, session).start_batch(2)

        async def completed() -> bool:
            return f"{batch['batch_id']}:completed:2" in receiver.ids()

        await wait_until(completed, 20, "the batch's outcome delivered after the step")
        assert await daemon.stop() == 0
    finally:
        daemon.ensure_stopped()
        await session.close()
        await receiver.close()
        await sim.close()
