"""`docgen-monitor demo --state postgresql://... --replicas 2`: the demo's simulator watched by
several replicas on one PostgreSQL, each a `docgen-monitor run` process of its own, so that a
failover can be watched for real: `kill -9` the leader's pid and a standby takes over.

The replicas' configuration is the demo's (`monitor.demo.demo_config`) with the state URL read
from the environment (`${DOCGEN_DEMO_STATE_URL}`), so its password is never written to disk;
`ha.lease_ttl` keeps its default. Which replica leads is read from each one's
`box_docgen_leader` gauge and printed whenever it changes."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import tempfile
from pathlib import Path

import aiohttp
import yaml
from prometheus_client.parser import text_string_to_metric_families

from monitor.config import url_without_password
from monitor.demo import demo_settings, demo_simulator_config
from monitor.simulator import start_simulator

STATE_URL_VAR = "DOCGEN_DEMO_STATE_URL"
WATCH_EVERY_S = 1.0


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def replica_config(box_url: str, http_port: int) -> str:
    """The demo's configuration as YAML, its state URL from `${DOCGEN_DEMO_STATE_URL}`."""
    settings = demo_settings(box_url, f"${{{STATE_URL_VAR}}}", http_port)
    settings["log"] = {"level": "warning"}  # as the in-process demo: events, not chatter
    return yaml.safe_dump(settings, sort_keys=False)


async def _leading(session: aiohttp.ClientSession, port: int) -> bool | None:
    """Whether the replica at `port` leads an account; None while it does not answer."""
    try:
        async with session.get(f"http://127.0.0.1:{port}/metrics") as resp:
            text = await resp.text()
    except (aiohttp.ClientError, TimeoutError):
        return None
    return any(
        sample.value == 1
        for family in text_string_to_metric_families(text)
        if family.name == "box_docgen_leader"
        for sample in family.samples
    )


async def run_ha_demo(state_url: str, replicas: int, duration_s: float | None) -> int:
    async with await start_simulator(demo_simulator_config()) as sim:
        with tempfile.TemporaryDirectory(prefix="docgen-monitor-demo-") as tmp:
            ports = [_free_port() for _ in range(replicas)]
            procs: list[asyncio.subprocess.Process] = []
            env = {**os.environ, STATE_URL_VAR: state_url}
            try:
                for i, port in enumerate(ports, start=1):
                    config = Path(tmp) / f"replica-{i}.yaml"
                    config.write_text(replica_config(sim.url, port))
                    procs.append(await asyncio.create_subprocess_exec(
                        sys.executable, "-m", "monitor.cli", "run", "--config", str(config),
                        env=env,
                    ))
                print(f"docgen-monitor demo: simulated Box at {sim.url}", flush=True)
                print(f"state: {url_without_password(state_url)}", flush=True)
                for i, (proc, port) in enumerate(zip(procs, ports, strict=True), start=1):
                    print(f"replica {i}: pid {proc.pid}, metrics "
                          f"http://127.0.0.1:{port}/metrics", flush=True)
                print("kill -9 the leader's pid to watch a standby take over "
                      "(within about 20 s); Ctrl-C to stop", flush=True)
                await _watch_leaders(procs, ports, duration_s)
            finally:
                for proc in procs:
                    if proc.returncode is None:
                        proc.terminate()
                for proc in procs:
                    with contextlib.suppress(ProcessLookupError):
                        await proc.wait()
    print("docgen-monitor demo: stopped", file=sys.stderr)
    return 0


async def _watch_leaders(
    procs: list[asyncio.subprocess.Process], ports: list[int], duration_s: float | None
) -> None:
    """Print the leading replica whenever it changes, until the duration or a signal."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if duration_s is not None:
        loop.call_later(duration_s, stop.set)
    shown: list[int] | None = None
    timeout = aiohttp.ClientTimeout(total=WATCH_EVERY_S)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        while not stop.is_set():
            roles = [await _leading(session, port) for port in ports]
            leaders = [i for i, leads in enumerate(roles, start=1) if leads]
            if leaders != shown:
                shown = leaders
                who = ", ".join(f"replica {i} (pid {procs[i - 1].pid})" for i in leaders)
                print(f"leader: {who or 'none yet'}", flush=True)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), WATCH_EVERY_S)
