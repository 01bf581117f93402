"""End-to-end helpers: the daemon as a real subprocess, a config writer, and a client for the
simulator's control API. Every wait is bounded."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import yaml
from prometheus_client.parser import text_string_to_metric_families

from monitor.simulator import RunningSimulator, SimulatorConfig, start_simulator
from tests.receiver import WebhookReceiver

TOKEN = "e2e-token"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def write_config(path: Path, *, box_url: str, hook_url: str, http_port: int,
                 **overrides: Any) -> Path:
    config: dict[str, Any] = {
        "box": {"base_url": box_url, "auth": {"method": "developer_token", "token": TOKEN},
                "timeout": "3s"},
        "poll": {"sweep_interval": "500ms", "max_backoff": "2s"},
        "state": {"url": f"sqlite:///{path.parent / 'state.db'}"},
        "baseline": "silent",
        "notifiers": [{"name": "sink", "type": "webhook", "url": hook_url, "secret": "s3cret"}],
        "routes": [{"match": {}, "notify": ["sink"]}],
        "http": {"listen": f"127.0.0.1:{http_port}"},
        "log": {"level": "info", "format": "json"},
    }
    for key, value in overrides.items():
        config[key] = value
    path.write_text(yaml.safe_dump(config))
    return path


async def wait_until(predicate: Callable[[], Awaitable[bool]], timeout_s: float,
                     what: str, interval_s: float = 0.1) -> None:
    deadline = time.monotonic() + timeout_s
    while not await predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        await asyncio.sleep(interval_s)


class DaemonProcess:
    """`docgen-monitor run --config FILE` in a subprocess, its logs in files beside the config."""

    def __init__(self, config_path: Path, http_port: int,
                 env: dict[str, str] | None = None) -> None:
        self.config_path = config_path
        self.env = env or {}
        self.base_url = f"http://127.0.0.1:{http_port}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.runs = 0

    @property
    def log_path(self) -> Path:
        return self.config_path.parent / f"daemon-{self.runs}.log"

    def start(self) -> None:
        self.runs += 1
        log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "monitor.cli", "run", "--config", str(self.config_path)],
            stdout=log, stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **self.env},
        )
        log.close()

    async def get(self, path: str) -> tuple[int, str]:
        async with aiohttp.ClientSession() as session, session.get(
            self.base_url + path, timeout=aiohttp.ClientTimeout(total=3)
        ) as resp:
            return resp.status, await resp.text()

    async def wait_ready(self, timeout_s: float = 30.0) -> None:
        async def ready() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"daemon exited {self.proc.returncode}:\n{self.logs()}")
            try:
                status, _ = await self.get("/readyz")
            except aiohttp.ClientError:
                return False
            return status == 200

        await wait_until(ready, timeout_s, "daemon /readyz")

    async def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 20.0) -> int:
        """Signal the daemon and wait for its exit code without blocking the event loop, which
        still serves the receiver and the simulator the daemon talks to while it drains."""
        assert self.proc is not None
        self.proc.send_signal(sig)
        try:
            return await asyncio.to_thread(self.proc.wait, timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            logs = self.logs()
            raise AssertionError(f"daemon did not stop within {timeout_s}s:\n{logs}") from None

    async def loop_stall_s(self) -> tuple[float, float, int]:
        """From /metrics: bounds (lower, upper) of the longest event-loop stall the lag
        histogram saw, and its number of samples. A stall is known to a bucket's width."""
        status, text = await self.get("/metrics")
        assert status == 200, text
        buckets: list[tuple[float, float]] = []
        for family in text_string_to_metric_families(text):
            if family.name == "box_docgen_event_loop_lag_seconds":
                buckets = [(float(s.labels["le"]), s.value) for s in family.samples
                           if s.name.endswith("_bucket")]
        assert buckets, "no box_docgen_event_loop_lag_seconds in /metrics"
        total = buckets[-1][1]
        lower = 0.0
        for le, count in buckets:
            if count >= total:
                return lower, le, int(total)
            lower = le
        return lower, float("inf"), int(total)

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait()

    def logs(self) -> str:
        return "\n".join((self.config_path.parent / f"daemon-{i}.log").read_text(errors="replace")
                         for i in range(1, self.runs + 1))

    def ensure_stopped(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


class SimControl:
    """The simulator's /_sim control API."""

    def __init__(self, base_url: str, session: aiohttp.ClientSession) -> None:
        self.base_url = base_url
        self.session = session

    async def call(self, method: str, path: str, body: Any = None) -> Any:
        async with self.session.request(method, self.base_url + path, json=body) as resp:
            assert resp.status < 300, f"{method} {path}: {resp.status} {await resp.text()}"
            return await resp.json() if resp.status != 204 else None

    async def start_batch(self, jobs: int, **kw: Any) -> dict[str, Any]:
        result: dict[str, Any] = await self.call("POST", "/_sim/batches", {"jobs": jobs, **kw})
        return result

    async def jobs(self) -> dict[str, dict[str, Any]]:
        body = await self.call("GET", "/_sim/jobs")
        return {j["id"]: j for j in body["entries"]}

    async def fault(self, **kw: Any) -> None:
        await self.call("POST", "/_sim/faults", kw)

    async def clear_faults(self) -> None:
        await self.call("DELETE", "/_sim/faults")


async def command_passes(argv: list[str], timeout_s: float = 10.0) -> bool:
    """Run a check command (a container HEALTHCHECK, say); True when it exits 0."""
    proc = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
    return await asyncio.wait_for(proc.wait(), timeout_s) == 0


async def run_until_healthy(argv: list[str], check: list[str], log_path: Path,
                            timeout_s: float = 30.0, cwd: Path | None = None) -> int:
    """Start `argv`, wait until `check` passes while it runs, then SIGTERM it; its exit code."""
    with log_path.open("wb") as log:
        proc = await asyncio.create_subprocess_exec(*argv, stdout=log, stderr=subprocess.STDOUT,
                                                    cwd=cwd)
    try:
        async def healthy() -> bool:
            if proc.returncode is not None:
                logs = await asyncio.to_thread(log_path.read_text)
                raise AssertionError(f"{argv[0]} exited {proc.returncode}:\n{logs}")
            return await command_passes(check)

        await wait_until(healthy, timeout_s, f"{' '.join(check)} to pass", interval_s=0.3)
    finally:
        if proc.returncode is None:
            proc.terminate()
        await asyncio.wait_for(proc.wait(), 20)
    assert proc.returncode is not None
    return proc.returncode


@dataclass
class World:
    """A simulator, a signature-checking webhook receiver, and a daemon (not yet started)
    configured to watch the one and deliver to the other."""

    sim: RunningSimulator
    control: SimControl
    receiver: WebhookReceiver
    daemon: DaemonProcess
    config_path: Path


W = TypeVar("W", bound=World)


async def webhook_world(
    tmp_path: Path,
    sim_config: SimulatorConfig,
    world_type: type[W],
    *,
    box: dict[str, Any] | None = None,
    http: dict[str, Any] | None = None,
    **overrides: Any,
) -> AsyncIterator[W]:
    """Build a `world_type` over real sockets, and close everything it opened afterwards.
    `box` and `http` add keys to those sections; other `overrides` replace whole sections of
    the daemon's config (see `write_config`)."""
    receiver = await WebhookReceiver().start()
    sim = await start_simulator(sim_config)
    session = aiohttp.ClientSession()
    port = free_port()
    config_path = write_config(tmp_path / "config.yaml", box_url=sim.url,
                               hook_url=receiver.url, http_port=port,
                               http={"listen": f"127.0.0.1:{port}", **(http or {})}, **overrides)
    if box:
        data = yaml.safe_load(config_path.read_text())
        data["box"].update(box)
        config_path.write_text(yaml.safe_dump(data))
    daemon = DaemonProcess(config_path, port)
    try:
        yield world_type(sim, SimControl(sim.url, session), receiver, daemon, config_path)
    finally:
        daemon.ensure_stopped()
        await session.close()
        await sim.close()
        await receiver.close()
