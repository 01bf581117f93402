"""`docgen-monitor demo`: the simulator with a steady stream of batches, the daemon watching it
with the console notifier and a temporary store. No Box account, no files to write."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
import tempfile
from pathlib import Path
from typing import Any

from pydantic import SecretStr

from monitor.config import Config
from monitor.daemon import Daemon
from monitor.notify.base import NotifierRegistry
from monitor.simulator import SimulatorConfig, start_simulator
from monitor.simulator.config import SteadyStreamConfig, TimelineConfig

DEMO_TOKEN = "demo-token"  # noqa: S105 - the simulator's own throwaway token


def demo_settings(box_url: str, state_url: str, http_port: int) -> dict[str, Any]:
    """The demo's configuration, as a file would hold it (`demo --replicas` writes it out)."""
    return {
        "box": {
            "base_url": box_url,
            "auth": {"method": "developer_token", "token": DEMO_TOKEN},
            "timeout": "5s",
        },
        "poll": {"sweep_interval": "2s"},
        "state": {"url": state_url},
        "baseline": "silent",
        "notifiers": [{"name": "console", "type": "console"}],
        "routes": [{"match": {}, "notify": ["console"]}],
        "http": {"listen": f"127.0.0.1:{http_port}"},
    }


def demo_config(box_url: str, state_dir: Path, http_port: int) -> Config:
    return Config.model_validate(
        demo_settings(box_url, f"sqlite:///{state_dir / 'state.db'}", http_port)
    )


def demo_simulator_config() -> SimulatorConfig:
    """A batch of 4 jobs every 4 s, each job done within 10 s."""
    return SimulatorConfig(
        seed=7,
        developer_tokens=[SecretStr(DEMO_TOKEN)],
        timeline=TimelineConfig(submitted_after_s=1.0, min_duration_s=2.0, max_duration_s=8.0),
        stream=SteadyStreamConfig(every_s=4.0, jobs_per_batch=4),
    )


async def run_demo(duration_s: float | None, http_port: int, registry: NotifierRegistry) -> int:
    with tempfile.TemporaryDirectory(prefix="docgen-monitor-demo-") as tmp:
        async with (
            await start_simulator(demo_simulator_config()) as sim,
            Daemon(demo_config(sim.url, Path(tmp), http_port), registry=registry) as daemon,
        ):
            print(f"docgen-monitor demo: simulated Box at {sim.url}", flush=True)
            print(f"status page: {daemon.web.url}/", flush=True)
            print(
                f"metrics: {daemon.web.url}/metrics   readiness: {daemon.web.url}/readyz",
                flush=True,
            )
            print("events appear below as batches move (Ctrl-C to stop)", flush=True)
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, daemon.request_stop)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(daemon.wait_stopped(), duration_s)
    print("docgen-monitor demo: stopped", file=sys.stderr)
    return 0
