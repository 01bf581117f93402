"""Benchmark: token requests while Box refuses the daemon's credentials (run by hand).

    python bench/auth_refused.py --batches 20 --window 60

A simulator in this process (frozen clock, so batches stay active) and the daemon as a
subprocess with the default settings. A first run with the right CCG secret records the
baseline and finds `--batches` active batches; the daemon stops and starts again with a wrong
secret on the same state file, as after a rotated secret and a restart. Reported: requests to
`POST /oauth2/token` (the simulator's own counts) over `--window` seconds, per minute.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import yaml
from pydantic import SecretStr

from monitor.simulator import SimulatorConfig, TimelineConfig, start_simulator

CLIENT_ID = "bench-client"
SECRET = "bench-secret"  # noqa: S105 - the local simulator's throwaway secret
ENTERPRISE = "bench-enterprise"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def config(sim_url: str, state_dir: Path, http_port: int, secret: str) -> dict[str, Any]:
    return {
        "box": {
            "base_url": sim_url,
            "auth": {
                "method": "ccg",
                "client_id": CLIENT_ID,
                "client_secret": secret,
                "subject_id": ENTERPRISE,
            },
        },
        "state": {"url": f"sqlite:///{state_dir}/state.db"},
        "notifiers": [{"name": "out", "type": "console"}],
        "routes": [{"match": {}, "notify": ["out"]}],
        "http": {"listen": f"127.0.0.1:{http_port}"},
        "log": {"level": "warning", "format": "json"},
    }


async def metric(session: aiohttp.ClientSession, url: str, name: str) -> float | None:
    try:
        async with session.get(f"{url}/metrics") as resp:
            text = await resp.text()
    except aiohttp.ClientError:
        return None
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return None


async def token_requests(session: aiohttp.ClientSession, sim_url: str) -> int:
    async with session.get(f"{sim_url}/_sim/stats") as resp:
        stats = await resp.json()
    return sum(stats["requests"].get("token", {}).values())


def start_daemon(path: Path, log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "monitor.cli", "run", "--config", str(path)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )


async def run(args: argparse.Namespace) -> None:
    sim_config = SimulatorConfig(
        seed=5,
        client_id=CLIENT_ID,
        client_secret=SecretStr(SECRET),
        enterprise_id=ENTERPRISE,
        frozen_clock=True,
        timeline=TimelineConfig(submitted_after_s=10, min_duration_s=20, max_duration_s=40),
    )
    sim = await start_simulator(sim_config)
    state_dir = Path(tempfile.mkdtemp(prefix="bench-auth-"))
    http_port = free_port()
    daemon_url = f"http://127.0.0.1:{http_port}"
    path = state_dir / "config.yaml"
    log = state_dir / "daemon.log"
    try:
        async with aiohttp.ClientSession() as session:
            for _ in range(args.batches):
                async with session.post(f"{sim.url}/_sim/batches", json={"jobs": 1}):
                    pass
            path.write_text(yaml.safe_dump(config(sim.url, state_dir, http_port, SECRET)))
            daemon = start_daemon(path, log)
            deadline = time.monotonic() + 60
            while await metric(session, daemon_url, "box_docgen_active_batches") != args.batches:
                if time.monotonic() > deadline or daemon.poll() is not None:
                    raise SystemExit(f"daemon never saw {args.batches} active batches; see {log}")
                await asyncio.sleep(0.5)
            daemon.send_signal(signal.SIGTERM)
            daemon.wait(30)

            path.write_text(yaml.safe_dump(config(sim.url, state_dir, http_port, "wrong")))
            daemon = start_daemon(path, log)
            try:
                before = await token_requests(session, sim.url)
                await asyncio.sleep(args.window)
                during = await token_requests(session, sim.url) - before
            finally:
                daemon.send_signal(signal.SIGTERM)
                daemon.wait(30)
    finally:
        await sim.close()
    per_minute = during * 60.0 / args.window
    print(
        f"wrong CCG secret, {args.batches} active batches: {during} token requests in "
        f"{args.window:g} s = {per_minute:.1f} per minute"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--window", type=float, default=60.0, help="seconds measured")
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
