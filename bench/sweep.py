"""Benchmark: one full sweep of N jobs, as whole processes (run by hand, not in the test suite).

    python bench/sweep.py --jobs 100000
    python bench/sweep.py --jobs 1000000 --scenarios bare,baseline,steady

Needs the `bench` extra (`pip install -e '.[bench]'`) for the official SDK.

The listing comes from `bench/pageserver.py` in its own process: every page is rendered before
the first request, so a client reads at its own speed and the bare loop below is the machine's
limit. Each scenario is a whole process, timed from spawn to exit (interpreter start and imports
included, as a user pays them), with its own peak RSS (`wait4`):
  - bare:     aiohttp + orjson, fetching and parsing every page, prefetching two pages ahead
              the way the daemon's sweep does (`monitor.poller.PREFETCH_PAGES`);
  - baseline: `docgen-monitor once` on an empty SQLite store (every row written);
  - steady:   `docgen-monitor once` again on that store, nothing changed (the figure of merit);
  - sdk:      the official SDK (`box_sdk_gen`) paging the same listing with `next_marker`, as its
              users write it (no pagination helper exists for this endpoint, FACTS.md §11).
The package's bytecode is compiled before the first run, as pip does when it installs a wheel: an
installed `once` never compiles our modules, while an editable checkout run with
PYTHONDONTWRITEBYTECODE set would recompile ~40 of them every run (~0.07 s CPU). The scenarios
run interleaved (bare, baseline, steady, sdk; then again), `--runs` times, and each figure is the
median of its runs. CPU time (user + system, all threads) is printed beside wall
time, with the load average: on a shared machine other work stretches wall times unevenly. The
monitor's configuration is the default but for its request budget (`requests_per_minute`, out of
the way here: the budget is not what is measured)."""

from __future__ import annotations

import argparse
import asyncio
import compileall
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pageserver import DEFAULT_TOKEN, start_page_server_process

SCENARIOS = ("bare", "baseline", "steady", "sdk")
PREFETCH_PAGES = 2  # as monitor.poller.PREFETCH_PAGES (not imported: the bare loop is not ours)
TARGETS = (  # (scenario, reference, minimum speed ratio) from issue 10
    ("steady", "bare", 0.6),
    ("steady", "sdk", 10.0),
    ("baseline", "bare", 0.35),
)
RSS_TARGET_MB = 200.0


@dataclass(frozen=True, slots=True)
class Run:
    wall_s: float
    cpu_s: float  # user + system, every thread of the process
    rss_mb: float
    jobs: int


# -- the children ---------------------------------------------------------------------------------


async def bare_loop(url: str) -> int:
    """Fetch and parse every page, `PREFETCH_PAGES` ahead; returns the jobs read."""
    import aiohttp
    import orjson

    headers = {"Authorization": f"Bearer {DEFAULT_TOKEN}", "box-version": "2025.0"}
    # Fetched and parsed in one task, handed over through a queue of `PREFETCH_PAGES`: the shape
    # of the daemon's sweep (its client parses each page; `_prefetch` queues them).
    queue: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue(PREFETCH_PAGES)

    async def fetch(session: aiohttp.ClientSession) -> None:
        marker = None
        while True:
            params = {"limit": "1000", **({"marker": marker} if marker else {})}
            async with session.get(f"{url}/2.0/docgen_jobs", params=params, headers=headers) as r:
                r.raise_for_status()
                page = orjson.loads(await r.read())
            await queue.put(page)
            marker = page.get("next_marker")
            if not marker:
                await queue.put(None)
                return

    jobs = 0
    async with aiohttp.ClientSession() as session:
        producer = asyncio.create_task(fetch(session))
        while (page := await queue.get()) is not None:
            jobs += len(page["entries"])
        await producer
    return jobs


def sdk_listing(url: str, max_pages: int) -> int:
    """What a user of the official SDK writes; returns the jobs read."""
    from box_sdk_gen import BaseUrls, BoxClient, BoxDeveloperTokenAuth, NetworkSession

    client = BoxClient(
        auth=BoxDeveloperTokenAuth(token=DEFAULT_TOKEN),
        network_session=NetworkSession(base_urls=BaseUrls(base_url=url)),
    )
    jobs = pages = 0
    marker: str | None = None
    while pages < max_pages:
        page = client.docgen.get_docgen_jobs_v2025_r0(marker=marker, limit=1000)
        pages += 1
        jobs += len(page.entries or [])
        marker = page.next_marker
        if not marker:
            break
    return jobs


def child(kind: str, url: str, sdk_pages: int) -> None:
    jobs = asyncio.run(bare_loop(url)) if kind == "bare" else sdk_listing(url, sdk_pages)
    print(json.dumps({"jobs": jobs}))


# -- the parent -----------------------------------------------------------------------------------


def measured(argv: list[str]) -> tuple[float, float, float, str, str]:
    """Run `argv` to its end: (wall seconds, CPU seconds, peak RSS MB, stdout, stderr). Fails on
    a non-zero exit."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        started = time.perf_counter()
        proc = subprocess.Popen(argv, stdout=out, stderr=err, text=True)
        _, status, usage = os.wait4(proc.pid, 0)
        wall_s = time.perf_counter() - started
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    if proc.returncode != 0:
        raise SystemExit(f"{argv} exited {proc.returncode}:\n{stderr[-3000:]}")
    cpu_s = usage.ru_utime + usage.ru_stime
    return wall_s, cpu_s, usage.ru_maxrss / 1024, stdout, stderr


def run_script(kind: str, url: str, sdk_pages: int) -> Run:
    argv = [sys.executable, __file__, "--child", kind, "--url", url, "--sdk-pages", str(sdk_pages)]
    wall_s, cpu_s, rss_mb, stdout, _ = measured(argv)
    return Run(wall_s, cpu_s, rss_mb, json.loads(stdout.strip().splitlines()[-1])["jobs"])


def write_config(path: Path, url: str, state_dir: Path) -> None:
    path.write_text(
        "box:\n"
        f"  base_url: {url}\n"
        f"  auth: {{method: developer_token, token: {DEFAULT_TOKEN}}}\n"
        "  requests_per_minute: 1000000000  # out of the way: the budget is not measured\n"
        f"state: {{url: 'sqlite:///{state_dir}/state.db'}}\n"
        "log: {format: json}\n"
    )


def run_once(config: Path) -> Run:
    """`docgen-monitor once`; the jobs it read from its `sweep_committed` log line."""
    cli = Path(sys.executable).with_name("docgen-monitor")
    wall_s, cpu_s, rss_mb, stdout, stderr = measured(
        [str(cli), "once", "--config", str(config)]
    )
    committed = [json.loads(line) for line in stderr.splitlines() if '"sweep_committed"' in line]
    if len(committed) != 1:
        raise SystemExit(f"once logged no sweep_committed:\n{stderr[-3000:]}")
    if stdout.strip():
        raise SystemExit(f"once printed events: the listing was not steady:\n{stdout[:2000]}")
    return Run(wall_s, cpu_s, rss_mb, committed[0]["jobs"])


def compile_package() -> None:
    """Write the bytecode of the `monitor` package `once` imports (found, not imported)."""
    spec = importlib.util.find_spec("monitor")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("the monitor package is not installed (pip install -e '.[bench]')")
    for location in spec.submodule_search_locations:
        if not compileall.compile_dir(location, quiet=1):
            raise SystemExit(f"cannot compile {location}")


def one_round(url: str, scenarios: list[str], sdk_pages: int) -> dict[str, Run]:
    runs: dict[str, Run] = {}
    with tempfile.TemporaryDirectory(prefix="sweep-bench-") as tmp:
        config = Path(tmp) / "config.yaml"
        write_config(config, url, Path(tmp))
        for kind in SCENARIOS:
            if kind in ("bare", "sdk") and kind in scenarios:
                runs[kind] = run_script(kind, url, sdk_pages)
            elif kind == "baseline" and ({"baseline", "steady"} & set(scenarios)):
                runs[kind] = run_once(config)  # the steady run needs the baseline's store
            elif kind == "steady" and kind in scenarios:
                runs[kind] = run_once(config)
    return {k: v for k, v in runs.items() if k in scenarios}


def median_run(runs: list[Run]) -> Run:
    return Run(
        statistics.median(r.wall_s for r in runs),
        statistics.median(r.cpu_s for r in runs),
        statistics.median(r.rss_mb for r in runs),
        runs[0].jobs,
    )


def report(
    args: argparse.Namespace, all_runs: dict[str, list[Run]], load: tuple[float, float, float]
) -> None:
    medians = {k: median_run(v) for k, v in all_runs.items()}
    print(
        f"one sweep of {args.jobs:,} jobs from bench/pageserver.py (page size 1000, loopback, "
        f"SQLite store); whole processes, median of {args.runs} interleaved runs; load average "
        f"{load[0]:.1f} at start, {os.getloadavg()[0]:.1f} at end on {os.cpu_count()} CPUs"
    )
    print(
        f"{'scenario':<10} {'wall s':>8} {'CPU s':>7} {'jobs':>10} {'jobs/s':>10} "
        f"{'peak RSS MB':>12}  runs (wall s)"
    )
    for kind, m in medians.items():
        each = " ".join(f"{r.wall_s:.2f}" for r in all_runs[kind])
        print(
            f"{kind:<10} {m.wall_s:>8.2f} {m.cpu_s:>7.2f} {m.jobs:>10,} "
            f"{m.jobs / m.wall_s:>10,.0f} {m.rss_mb:>12.0f}  {each}"
        )

    def ratio(kind: str, reference: str, attr: str) -> float:
        """Jobs per second of `kind` over those of `reference`, by `attr` (wall or CPU)."""
        mine, theirs = medians[kind], medians[reference]
        return (mine.jobs / getattr(mine, attr)) / (theirs.jobs / getattr(theirs, attr))

    # The targets are on wall time; CPU time is printed beside it because a shared machine's
    # load stretches wall times unevenly between runs.
    for kind, reference, target in TARGETS:
        if kind in medians and reference in medians:
            by_wall = ratio(kind, reference, "wall_s")
            verdict = "met" if by_wall >= target else "MISSED"
            print(
                f"{kind} vs {reference}: {by_wall:.2f}x (target >= {target}x: {verdict}); "
                f"by CPU time {ratio(kind, reference, 'cpu_s'):.2f}x"
            )
    for kind in ("baseline", "steady"):
        if kind in medians:
            rss = medians[kind].rss_mb
            verdict = "met" if rss <= RSS_TARGET_MB else "MISSED"
            print(
                f"{kind} peak RSS: {rss:.0f} MB (target <= {RSS_TARGET_MB:.0f} MB at 1M: {verdict})"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=3, help="interleaved runs per scenario")
    parser.add_argument("--scenarios", default=",".join(SCENARIOS))
    parser.add_argument(
        "--sdk-pages", type=int, default=10**9, help="pages the SDK reads at most (a rate then)"
    )
    parser.add_argument("--child", choices=["bare", "sdk"])
    parser.add_argument("--url")
    args = parser.parse_args()
    if args.child:
        child(args.child, args.url, args.sdk_pages)
        return
    scenarios = [s for s in args.scenarios.split(",") if s]
    unknown = set(scenarios) - set(SCENARIOS)
    if unknown:
        parser.error(f"unknown scenarios: {sorted(unknown)}")
    load = os.getloadavg()
    compile_package()
    server, url = start_page_server_process(args.jobs)
    all_runs: dict[str, list[Run]] = {k: [] for k in SCENARIOS if k in scenarios}
    try:
        for _ in range(args.runs):
            for kind, run in one_round(url, scenarios, args.sdk_pages).items():
                all_runs[kind].append(run)
                print(
                    f"  {kind}: {run.wall_s:.2f} s, CPU {run.cpu_s:.2f} s, {run.rss_mb:.0f} MB",
                    file=sys.stderr,
                )
    finally:
        server.terminate()
        server.wait(timeout=30)
    expected = {k: args.jobs for k in ("bare", "baseline", "steady")}
    for kind, runs in all_runs.items():
        if kind in expected and any(r.jobs != expected[kind] for r in runs):
            raise SystemExit(f"{kind} read {[r.jobs for r in runs]} jobs, not {args.jobs}")
    report(args, all_runs, load)


if __name__ == "__main__":
    main()
