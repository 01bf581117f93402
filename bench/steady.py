"""Benchmark: steady state, the daemon beside a naive poller run for real (run by hand).

    python bench/steady.py --history 100000 --batches 50 --jobs-per-batch 200 --runs 3

One simulator process holds N historic jobs plus a constant number of active batches that keep
moving: as each batch ends, the driver starts another (nobody watches it: the daemon must find
it). `docgen-monitor run` (a subprocess, every default but `poll.active_interval`) delivers
every event to a webhook receiver in this process. During the measurement window a naive poller
(bench/naive_poller.py, its own process, not our code) re-lists every job every active interval
against the same simulator. The window lasts at least `--window` seconds and until the daemon
has completed `--sweeps` sweeps inside it (at most `--max-window`). Reported:
  - Box requests per minute by route: the daemon's (the simulator's counts less the naive
    poller's own) and the naive poller's;
  - for every job status change in the window, p50 / p99 from the change (`/_sim/transitions`)
    to the daemon's commit (the event's `detected_at`) and to the webhook's arrival. A status
    that passed between two polls (never reported as such) is counted apart, with the time
    until the job's next reported change; the naive poller's detection beside them;
  - the first event of each batch started in the window: p50 / p99 from its creation to the
    daemon's commit and to the webhook's arrival;
  - the daemon's degradation level and intervals in force at the end, and its peak RSS.
`--runs N` (default 3) repeats the whole run N times, each with a fresh simulator, store and
daemon, and ends with the median of each headline figure.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import yaml
from aiohttp import web
from simproc import start_simulator_process

TOKEN = "bench-token"  # noqa: S105 - the local simulator's throwaway token
SUBMITTED_AFTER_S = 2.0
TERMINAL = frozenset({"completed", "completed_with_error", "failed"})
HERE = Path(__file__).resolve().parent


class Receiver:
    def __init__(self) -> None:
        self.received: dict[str, tuple[float, dict[str, Any]]] = {}

    async def handle(self, request: web.Request) -> web.Response:
        body = orjson.loads(await request.read())
        self.received.setdefault(body["id"], (time.time(), body))
        return web.Response(status=204)


async def start_receiver(receiver: Receiver, port: int) -> web.AppRunner:
    app = web.Application()
    app.router.add_post("/hook", receiver.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner


def peak_rss_mb(pid: int) -> float:
    """VmHWM of a running process (Linux), in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p * len(ordered)))] if ordered else float("nan")


def row(name: str, values: list[float]) -> str:
    if not values:
        return f"  {name:<44} (none)"
    return (f"  {name:<44} n {len(values):6d}  p50 {statistics.median(values):6.2f}s  "
            f"p99 {pct(values, 0.99):6.2f}s  max {max(values):6.2f}s")


class Daemon:
    def __init__(self, session: aiohttp.ClientSession, url: str) -> None:
        self.session = session
        self.url = url

    async def wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with contextlib.suppress(aiohttp.ClientError):
                async with self.session.get(f"{self.url}/readyz") as resp:
                    if resp.status == 200:
                        return
            await asyncio.sleep(0.5)
        raise SystemExit(f"daemon not ready within {timeout_s}s")

    async def metrics(self) -> dict[str, float]:
        async with self.session.get(f"{self.url}/metrics") as resp:
            text = await resp.text()
        out: dict[str, float] = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                with contextlib.suppress(ValueError):
                    out[name] = float(value)
        return out

    async def sweeps(self) -> float:
        return sample(await self.metrics(), "box_docgen_polls_total", kind="sweep", outcome="ok")


def sample(metrics: dict[str, float], name: str, **labels: str) -> float:
    """The sum of `name`'s series carrying `labels` (others, such as `account`, any value)."""
    total = 0.0
    for series, value in metrics.items():
        base, _, rest = series.partition("{")
        if base == name and all(f'{k}="{v}"' in rest for k, v in labels.items()):
            total += value
    return total


def daemon_config(
    args: argparse.Namespace, sim_url: str, state_dir: str, http_port: int, hook_port: int
) -> dict[str, Any]:
    """Every default but the active interval (and the log going to a file)."""
    return {
        "box": {"base_url": sim_url, "auth": {"method": "developer_token", "token": TOKEN}},
        "poll": {"active_interval": f"{args.active_interval}s"},
        "state": {"url": f"sqlite:///{state_dir}/state.db"},
        "notifiers": [
            {"name": "sink", "type": "webhook", "url": f"http://127.0.0.1:{hook_port}/hook"}
        ],
        "routes": [{"match": {}, "notify": ["sink"]}],
        "http": {"listen": f"127.0.0.1:{http_port}"},
        "log": {"format": "json"},
    }


class Load:
    """The driver: `batches` slots, each starting a new batch as its previous one ends."""

    def __init__(self, args: argparse.Namespace, session: aiohttp.ClientSession,
                 sim_url: str) -> None:
        self.args = args
        self.session = session
        self.sim_url = sim_url
        self.created: dict[str, float] = {}  # batch id -> wall time it was started
        self.stop = asyncio.Event()
        self.life_s = SUBMITTED_AFTER_S + args.max_duration + 1  # a batch is over by then

    async def start_batch(self) -> None:
        body = {"jobs": self.args.jobs_per_batch, "submitted_after_s": SUBMITTED_AFTER_S,
                "min_duration_s": self.args.min_duration,
                "max_duration_s": self.args.max_duration}
        at = time.time()
        async with self.session.post(f"{self.sim_url}/_sim/batches", json=body) as resp:
            self.created[(await resp.json())["batch_id"]] = at

    async def slot(self, n: int) -> None:
        # Staggered over one batch life so that batches end (and start) evenly.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.stop.wait(), n * self.life_s / self.args.batches)
        while not self.stop.is_set():
            await self.start_batch()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stop.wait(), self.life_s)

    async def stats(self) -> dict[str, int]:
        async with self.session.get(f"{self.sim_url}/_sim/stats") as resp:
            body = await resp.json()
        return {route: sum(codes.values()) for route, codes in body["requests"].items()}

    async def transitions(self, batch_ids: list[str]) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for batch_id in batch_ids:
            async with self.session.get(f"{self.sim_url}/_sim/transitions",
                                        params={"batch_id": batch_id}) as resp:
                out += (await resp.json())["entries"]
        return out


def start_naive(args: argparse.Namespace, sim_url: str, out: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, str(HERE / "naive_poller.py"), "--url", sim_url,
                             "--token", TOKEN, "--interval", str(args.active_interval),
                             "--out", str(out)])


async def measure(args: argparse.Namespace, sim_url: str, daemon: Daemon, receiver: Receiver,
                  naive_out: Path) -> dict[str, Any]:
    load = Load(args, daemon.session, sim_url)
    slots = [asyncio.create_task(load.slot(i)) for i in range(args.batches)]
    print(f"warming up {load.life_s + 5:.0f}s ({args.batches} batches of "
          f"{args.jobs_per_batch} jobs)...", file=sys.stderr)
    await asyncio.sleep(load.life_s + 5)
    naive = start_naive(args, sim_url, naive_out)
    await asyncio.sleep(2 * args.active_interval)  # its first listing, to diff the next ones
    window_start, before, sweeps_before = time.time(), await load.stats(), await daemon.sweeps()
    while True:
        await asyncio.sleep(5)
        elapsed = time.time() - window_start
        done = await daemon.sweeps() - sweeps_before
        if (elapsed >= args.window and done >= args.sweeps) or elapsed >= args.max_window:
            break
    after, window_end = await load.stats(), time.time()
    naive.send_signal(signal.SIGTERM)
    await asyncio.to_thread(naive.wait, 120)
    metrics = await daemon.metrics()
    load.stop.set()
    await asyncio.gather(*slots)
    # Let the window's last changes arrive: until deliveries stop coming (bounded).
    count, deadline = -1, time.monotonic() + 300
    while len(receiver.received) != count and time.monotonic() < deadline:
        count = len(receiver.received)
        await asyncio.sleep(args.active_interval + 3)
    batch_ids = [b for b, at in load.created.items() if at <= window_end]
    return {
        "window": (window_start, window_end), "before": before, "after": after,
        "sweeps": await daemon.sweeps() - sweeps_before, "metrics": metrics,
        "created": load.created, "transitions": await load.transitions(batch_ids),
    }


def latencies(result: dict[str, Any], receiver: Receiver,
              naive: dict[str, Any]) -> dict[str, list[float]]:
    """Every change in the window, matched to what the daemon reported (and the naive poller
    saw) about its job."""
    start, end = result["window"]
    reported: dict[str, list[tuple[str, float, float]]] = defaultdict(list)
    first_of_batch: dict[str, tuple[float, float]] = {}
    for received_at, body in receiver.received.values():
        if body.get("job") is None:
            continue
        detected_at = datetime.fromisoformat(body["detected_at"]).timestamp()
        reported[body["job"]["id"]].append((body["to_status"], detected_at, received_at))
        batch = body["job"]["batch_id"]
        old = first_of_batch.get(batch)
        first_of_batch[batch] = (detected_at, received_at) if old is None else (
            min(old[0], detected_at), min(old[1], received_at))
    naive_seen = {(job, status): at for job, status, at in naive["sightings"]}
    out: dict[str, list[float]] = defaultdict(list)
    for t in result["transitions"]:
        if not start <= t["at"] <= end:
            continue
        events = reported.get(t["job_id"], [])
        exact = [e for e in events if e[0] == t["to_status"]]
        later = sorted(e for e in events if e[1] >= t["at"] - 1)
        if exact:
            out["detected"].append(exact[0][1] - t["at"])
            out["delivered"].append(exact[0][2] - t["at"])
        elif later:  # passed between two polls: reported by the job's next change
            out["passed_detected"].append(min(e[1] for e in later) - t["at"])
            out["passed_delivered"].append(min(e[2] for e in later) - t["at"])
        else:
            out["missing" if t["to_status"] in TERMINAL else "missing_intermediate"].append(0)
        if (t["job_id"], t["to_status"]) in naive_seen:
            out["naive_detected"].append(naive_seen[(t["job_id"], t["to_status"])] - t["at"])
        else:
            out["naive_passed"].append(0)
    for batch, created in result["created"].items():
        if start <= created <= end and batch in first_of_batch:
            detected_at, received_at = first_of_batch[batch]
            out["first_detected"].append(detected_at - created)
            out["first_delivered"].append(received_at - created)
        elif start <= created <= end:
            out["first_missing"].append(0)
    return out


def _mean(metrics: dict[str, float], histogram: str, kind: str) -> float:
    count = sample(metrics, f"{histogram}_count", kind=kind)
    return sample(metrics, f"{histogram}_sum", kind=kind) / count if count else float("nan")


def report(args: argparse.Namespace, result: dict[str, Any], lat: dict[str, list[float]],
           naive: dict[str, Any], rss_mb: float) -> dict[str, float]:
    """Print one run's tables; return its headline figures (for the medians)."""
    start, end = result["window"]
    minutes = (end - start) / 60
    before, after = result["before"], result["after"]
    by_route = {r: (after.get(r, 0) - before.get(r, 0)) / minutes for r in after}
    naive_rpm = sum(1 for at in naive["requests"] if start <= at <= end) / minutes
    by_route["list_jobs"] = by_route.get("list_jobs", 0.0) - naive_rpm
    daemon_rpm = sum(by_route.values())
    m = result["metrics"]
    print(f"steady state: {args.history:,} historic jobs + {args.batches} active batches of "
          f"{args.jobs_per_batch} jobs (durations {args.min_duration:.0f}-"
          f"{args.max_duration:.0f}s), active_interval {args.active_interval:g}s, every other "
          f"setting default; window {end - start:.0f}s holding {result['sweeps']:.0f} daemon "
          f"sweeps")
    level = sample(m, "box_docgen_degradation_level")
    sweep_s = sample(m, "box_docgen_effective_interval_seconds", kind="sweep")
    active_s = sample(m, "box_docgen_effective_interval_seconds", kind="active")
    print(f"daemon at the end: degradation level {level:.0f}, sweep every {sweep_s:.0f}s, "
          f"active every {active_s:.1f}s, peak RSS {rss_mb:.0f} MB")
    polls = ", ".join(
        f"{kind} {sample(m, 'box_docgen_polls_total', kind=kind, outcome='ok'):.0f} ok "
        f"{sample(m, 'box_docgen_polls_total', kind=kind, outcome='error'):.0f} failed, mean "
        f"{_mean(m, 'box_docgen_poll_duration_seconds', kind):.2f}s"
        for kind in ("sweep", "active", "window", "discover")
    )
    print(f"daemon polls since start: {polls}")
    print(f"{'Box requests/min':<28} {'total':>8}  by route")
    print(f"{'daemon':<28} {daemon_rpm:8.0f}  " + ", ".join(
        f"{r} {v:.0f}" for r, v in sorted(by_route.items()) if v >= 0.5))
    listing_s = naive["listing_s"]
    print(f"{'naive re-list (run)':<28} {naive_rpm:8.0f}  list_jobs {naive_rpm:.0f} "
          f"({naive['listings']} listings, median {statistics.median(listing_s or [0]):.1f}s "
          f"each)")
    print(f"daemon / naive: {daemon_rpm / naive_rpm if naive_rpm else float('nan'):.2f}")
    print(f"every job status change in the window (targets: delivery p99 <= "
          f"{args.active_interval + 1:g}s; first event of a new batch p99 <= "
          f"{2 * args.active_interval:g}s):")
    print(row("change -> daemon commit", lat["detected"]))
    print(row("change -> webhook received", lat["delivered"]))
    print(row("passed between polls -> next commit", lat["passed_detected"]))
    print(row("passed between polls -> next webhook", lat["passed_delivered"]))
    print(row("all changes -> webhook received", lat["delivered"] + lat["passed_delivered"]))
    print(row("naive: change -> seen in a listing", lat["naive_detected"]))
    print(f"  naive: {len(lat['naive_passed'])} changes never seen as such (passed between "
          f"listings); daemon: {len(lat['missing'])} outcomes and "
          f"{len(lat['missing_intermediate'])} intermediate changes never reported")
    print(row("new batch created -> first commit", lat["first_detected"]))
    print(row("new batch created -> first webhook", lat["first_delivered"]))
    if lat["first_missing"]:
        print(f"  {len(lat['first_missing'])} batches started in the window got no event")
    every = lat["delivered"] + lat["passed_delivered"]
    return {
        "daemon requests/min": daemon_rpm,
        "naive requests/min": naive_rpm,
        "degradation level at the end": level,
        "change -> daemon commit p50 s": statistics.median(lat["detected"] or [float("nan")]),
        "change -> daemon commit p99 s": pct(lat["detected"], 0.99),
        "change -> webhook received p50 s": statistics.median(lat["delivered"] or [float("nan")]),
        "change -> webhook received p99 s": pct(lat["delivered"], 0.99),
        "all changes -> webhook received p99 s": pct(every, 0.99),
        "new batch -> first commit p99 s": pct(lat["first_detected"], 0.99),
        "new batch -> first webhook p99 s": pct(lat["first_delivered"], 0.99),
        "batches with no event": float(len(lat["first_missing"])),
        "peak RSS MB": rss_mb,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--history", type=int, default=100_000)
    parser.add_argument("--batches", type=int, default=50)
    parser.add_argument("--jobs-per-batch", type=int, default=200)
    parser.add_argument("--active-interval", type=float, default=5.0)
    parser.add_argument("--window", type=float, default=120.0, help="shortest window, s")
    parser.add_argument("--sweeps", type=int, default=2, help="daemon sweeps the window holds")
    parser.add_argument("--max-window", type=float, default=1500.0, help="longest window, s")
    parser.add_argument("--min-duration", type=float, default=10.0, help="job duration, min s")
    parser.add_argument("--max-duration", type=float, default=120.0, help="job duration, max s")
    parser.add_argument("--runs", type=int, default=3, help="whole runs; medians reported")
    args = parser.parse_args()
    figures = [run_once(args, n + 1) for n in range(args.runs)]
    if args.runs > 1:
        print(f"\nmedians of {args.runs} runs (each a fresh simulator, store and daemon):")
        for name in figures[0]:
            values = [f[name] for f in figures]
            shown = " ".join(f"{v:.2f}" for v in values)
            print(f"  {name:<44} {statistics.median(values):9.2f}   runs: {shown}")


def run_once(args: argparse.Namespace, n: int) -> dict[str, float]:
    """One whole run: a fresh simulator, store, daemon and naive poller; its report printed,
    its headline figures returned."""
    print(f"\n== run {n} of {args.runs}, load average {os.getloadavg()[0]:.1f} ==")
    sim_port, http_port, hook_port = free_port(), free_port(), free_port()
    sim, sim_url = start_simulator_process(sim_port, args.history, TOKEN)
    with tempfile.TemporaryDirectory() as state_dir:
        config_path = Path(state_dir) / "config.yaml"
        config_path.write_text(yaml.safe_dump(
            daemon_config(args, sim_url, state_dir, http_port, hook_port)))
        naive_out = Path(state_dir) / "naive.json"
        with (Path(state_dir) / "daemon.log").open("wb") as log:
            daemon_proc = subprocess.Popen(
                [sys.executable, "-m", "monitor.cli", "run", "--config", str(config_path)],
                stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "NO_COLOR": "1"})
            try:
                receiver = Receiver()

                async def go() -> dict[str, Any]:
                    runner = await start_receiver(receiver, hook_port)
                    try:
                        async with aiohttp.ClientSession() as session:
                            daemon = Daemon(session, f"http://127.0.0.1:{http_port}")
                            await daemon.wait_ready(900)
                            return await measure(args, sim_url, daemon, receiver, naive_out)
                    finally:
                        await runner.cleanup()

                result = asyncio.run(go())
                rss_mb = peak_rss_mb(daemon_proc.pid)
            finally:
                daemon_proc.terminate()
                daemon_proc.wait(timeout=60)
                sim.terminate()
                sim.wait(timeout=60)
        naive = orjson.loads(naive_out.read_bytes())
    lat = latencies(result, receiver, naive)
    return report(args, result, lat, naive, rss_mb)


if __name__ == "__main__":
    main()
