"""Benchmark: the disk a sweep of N jobs needs, and where SQLite puts its temp files (by hand).

    python bench/state_volume.py --jobs 100000

Runs one baseline sweep (every job staged: the largest staging a sweep makes) against the
simulator in its own process, with TMPDIR and SQLITE_TMPDIR pointing at a directory of their
own, and reports the state file's size (database + WAL), the size of SQLite's temp file (the
sweep's TEMP tables; unlinked when made, found through /proc/self/fd) and the directory it was
made in. Sizes per million jobs are extrapolated linearly: they size the Kubernetes volumes."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
from pathlib import Path

from simproc import start_simulator_process

TOKEN = "bench-token"  # noqa: S105 - the local simulator's throwaway token


def open_temp_files() -> list[tuple[str, int]]:
    """SQLite's temp files this process holds open (path as made, size in bytes)."""
    found = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
            if "etilqs_" in target:
                found.append((target.removesuffix(" (deleted)"), os.fstat(int(fd)).st_size))
        except OSError:
            continue
    return found


async def sweep(url: str, state_dir: Path) -> tuple[int, list[tuple[str, int]]]:
    """One baseline sweep; the jobs it saw and the temp files open at its end."""
    from pydantic import SecretStr

    from monitor.box.auth import DeveloperTokenAuth
    from monitor.box.client import BoxClient
    from monitor.metrics import Metrics
    from monitor.notify.router import Router
    from monitor.poller import Poller
    from monitor.recorder import Recorder
    from monitor.store import open_store

    async with (
        open_store(f"sqlite:///{state_dir}/state.db") as store,
        BoxClient(url, DeveloperTokenAuth(SecretStr(TOKEN)), timeout_s=60) as box,
    ):
        metrics = Metrics()
        poller = Poller(box, store, Recorder(store, Router([]), metrics), metrics, page_size=1000)
        result = await poller.sweep()
        return result.jobs_seen, open_temp_files()  # a temp file keeps its peak size while open


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=100_000)
    parser.add_argument("--port", type=int, default=8917)
    args = parser.parse_args()
    sim, url = start_simulator_process(args.port, args.jobs, TOKEN)
    try:
        with tempfile.TemporaryDirectory() as work:
            state_dir, tmp_dir = Path(work, "state"), Path(work, "tmp")
            state_dir.mkdir()
            tmp_dir.mkdir()
            os.environ["TMPDIR"] = os.environ["SQLITE_TMPDIR"] = str(tmp_dir)
            jobs, temp_files = asyncio.run(sweep(url, state_dir))
            state_bytes = sum(p.stat().st_size for p in state_dir.iterdir())
            temp_dirs = sorted({"tmp" if p.startswith(str(tmp_dir)) else
                                "state" if p.startswith(str(state_dir)) else p
                                for p, _ in temp_files})
    finally:
        sim.terminate()
        sim.wait(timeout=30)
    temp_bytes = sum(size for _, size in temp_files)
    scale = 1_000_000 / max(1, jobs) / 2**20
    print(json.dumps({
        "jobs": jobs,
        "state_mb": round(state_bytes / 2**20, 1),
        "temp_mb": round(temp_bytes / 2**20, 1),
        "temp_files_in": temp_dirs,
        "state_mb_per_1m_jobs": round(state_bytes * scale),
        "temp_mb_per_1m_jobs": round(temp_bytes * scale),
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
