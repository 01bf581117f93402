"""The simulator as its own process, for benchmarks: its CPU and memory stay out of the
figures of the process being measured."""

from __future__ import annotations

import os
import subprocess
import sys


def start_simulator_process(
    port: int, seed_jobs: int, token: str
) -> tuple[subprocess.Popen[str], str]:
    """`docgen-monitor simulate` on 127.0.0.1:`port` with `seed_jobs` historic jobs; returns
    the process and the URL it printed once listening."""
    sim = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "monitor.cli",
            "simulate",
            "--port",
            str(port),
            "--seed-jobs",
            str(seed_jobs),
            "--token",
            token,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert sim.stdout is not None
    url = sim.stdout.readline().strip()
    if not url.startswith("http"):
        sim.terminate()
        raise SystemExit(f"simulator did not start: {url!r}")
    return sim, url
