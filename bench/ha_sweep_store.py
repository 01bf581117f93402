"""Benchmark: a baseline and a steady sweep of N jobs as whole processes (`docgen-monitor once`),
on PostgreSQL beside SQLite, against the same page server (run by hand, not in the test suite).

    python bench/ha_sweep_store.py --jobs 100000
    python bench/ha_sweep_store.py --jobs 100000 --postgres postgresql://postgres@127.0.0.1:5432/test

The listing comes from `bench/pageserver.py` in its own process (every page rendered before the
first request: the reference does no work per request). Each round runs, per backend, on a fresh
store (a temporary SQLite file; a PostgreSQL schema of its own, dropped after): `once` on the
empty store (the baseline, every row written), then `once` again with nothing changed (steady).
Rounds alternate which backend goes first; each figure is the median of `--runs` interleaved
runs, timed from spawn to exit (interpreter start and imports included, as a user pays them).
The configuration is the default but for the request budget (out of the way: not measured)."""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import uuid
from pathlib import Path

import asyncpg
from pageserver import DEFAULT_TOKEN, start_page_server_process
from sweep import Run, run_once

BACKENDS = ("sqlite", "postgres")
KINDS = ("baseline", "steady")


def write_config(path: Path, url: str, state_url: str) -> None:
    path.write_text(
        "box:\n"
        f"  base_url: {url}\n"
        f"  auth: {{method: developer_token, token: {DEFAULT_TOKEN}}}\n"
        "  requests_per_minute: 1000000000  # out of the way: the budget is not measured\n"
        f"state: {{url: '{state_url}'}}\n"
        "log: {format: json}\n"
    )


async def drop_schema(server: str, schema: str) -> None:
    conn = await asyncpg.connect(server, timeout=10)
    try:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    finally:
        await conn.close()


def one_backend(backend: str, url: str, server: str) -> dict[str, Run]:
    """A baseline and a steady `once` on a fresh store of `backend`."""
    with tempfile.TemporaryDirectory(prefix="ha-sweep-bench-") as tmp:
        schema = f"bench_{uuid.uuid4().hex[:12]}"
        sep = "&" if "?" in server else "?"
        state_url = (
            f"sqlite:///{tmp}/state.db" if backend == "sqlite" else f"{server}{sep}schema={schema}"
        )
        config = Path(tmp) / "config.yaml"
        write_config(config, url, state_url)
        try:
            return {kind: run_once(config) for kind in KINDS}
        finally:
            if backend == "postgres":
                asyncio.run(drop_schema(server, schema))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=3, help="interleaved runs per figure")
    parser.add_argument("--postgres", default="postgresql://postgres@127.0.0.1:5432/test")
    args = parser.parse_args()
    server, url = start_page_server_process(args.jobs)
    runs: dict[tuple[str, str], list[Run]] = {(b, k): [] for b in BACKENDS for k in KINDS}
    try:
        for round_no in range(args.runs):
            order = BACKENDS if round_no % 2 == 0 else BACKENDS[::-1]
            for backend in order:
                for kind, run in one_backend(backend, url, args.postgres).items():
                    runs[backend, kind].append(run)
                    print(f"  {backend} {kind}: {run.wall_s:.2f} s, {run.rss_mb:.0f} MB",
                          file=sys.stderr)
    finally:
        server.terminate()
        server.wait(timeout=30)
    for (backend, kind), found in runs.items():
        if any(r.jobs != args.jobs for r in found):
            raise SystemExit(f"{backend} {kind} read {[r.jobs for r in found]}, not {args.jobs}")
    print(f"one sweep of {args.jobs:,} jobs from bench/pageserver.py, `docgen-monitor once` as a "
          f"whole process; median of {args.runs} interleaved runs")
    print("(CPU: the monitor process's own, every thread; PostgreSQL's server work is not in it)")
    print(f"{'backend':<9} {'sweep':<9} {'wall s':>7} {'jobs/s':>9} {'CPU s':>6} "
          f"{'peak RSS MB':>12}  runs s")
    for (backend, kind), found in runs.items():
        wall_s = statistics.median(r.wall_s for r in found)
        cpu_s = statistics.median(r.cpu_s for r in found)
        rss_mb = statistics.median(r.rss_mb for r in found)
        each = " ".join(f"{r.wall_s:.2f}" for r in found)
        print(f"{backend:<9} {kind:<9} {wall_s:>7.2f} {args.jobs / wall_s:>9,.0f} {cpu_s:>6.2f} "
              f"{rss_mb:>12.0f}  {each}")
    print(f"load average at the end: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
