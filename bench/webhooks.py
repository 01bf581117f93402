"""Benchmark: Box webhooks as a fast path (run by hand, not in the test suite).

    python bench/webhooks.py --runs 3

The same load twice over, interleaved, whole processes: `docgen-monitor run` against the
simulator (its own process) polling only, then with Box webhooks on (one webhook per template,
signed notifications from the simulator to `POST /api/v1/box/webhook`). The load: `--batches`
active batches at all times, each of its own template (as each document type of an application
has its template), whose jobs all start together and finish within `--spread` seconds of each
other, `--duration` seconds after they start; the driver starts a new batch as each one ends and
tells the daemon through the watch API (discovery is the same in both modes). Every setting is
the daemon's default except the request budget (set to Box's 1000 a minute, out of the way of
the polling-only figure) and the watch API's token.

Reported per mode, medians over `--runs` runs: Box requests per minute made by the daemon (the
simulator's own counts, over the window), and detection latency p50 / p99, from the simulator's
status change (`/_sim/transitions`) to the event's `detected_at`, for every change in the window
(changes a poll never saw in an intermediate status are matched by the status reached). The
reference is the polling-only daemon on the same load. Targets: with webhooks, p99 <= 1.5 s and
requests per minute <= half of polling only.

The fast path wins on requests only when a batch's changes come in bursts: a hinted poll costs
one request per batch per second of change, so jobs that finish one by one over minutes cost
more than polling every 5 s. `--spread` shows it."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
import yaml
from simproc import start_simulator_process
from steady import Daemon, Receiver, free_port, pct, peak_rss_mb, start_receiver

TOKEN = "bench-token"  # noqa: S105 - the local simulator's throwaway token
API_TOKEN = "bench-watch"  # noqa: S105 - the local daemon's throwaway API token
PRIMARY = "bench-primary-key"
SECONDARY = "bench-secondary-key"
SUBMITTED_AFTER_S = 1.0
TEMPLATE_BASE = 1_400_000_000_000
TERMINAL = frozenset({"completed", "completed_with_error", "failed"})


def daemon_config(
    args: argparse.Namespace, webhooks: bool, sim_url: str, state_dir: str, http_port: int,
    hook_port: int,
) -> dict[str, Any]:
    box: dict[str, Any] = {
        "base_url": sim_url,
        "auth": {"method": "developer_token", "token": TOKEN},
        "requests_per_minute": 1000,  # Box's own limit: the polling-only figure is not capped
    }
    if webhooks:
        box["webhook"] = {"primary_key": PRIMARY, "secondary_key": SECONDARY}
    return {
        "box": box,
        "state": {"url": f"sqlite:///{state_dir}/state.db"},
        "notifiers": [
            {"name": "sink", "type": "webhook", "url": f"http://127.0.0.1:{hook_port}/hook"}
        ],
        "routes": [{"match": {}, "notify": ["sink"]}],
        "http": {"listen": f"127.0.0.1:{http_port}", "api_token": API_TOKEN},
        "log": {"level": "warning", "format": "json"},
    }


async def install_webhooks(session: aiohttp.ClientSession, sim_url: str, address: str,
                           templates: int) -> None:
    """One webhook per template, as `docgen-monitor box-webhooks install` makes it."""
    async with session.post(f"{sim_url}/_sim/webhooks/settings",
                            json={"primary_key": PRIMARY, "secondary_key": SECONDARY}) as resp:
        assert resp.status == 200, await resp.text()
    for i in range(templates):
        body = {"target": {"id": str(TEMPLATE_BASE + i), "type": "file"}, "address": address,
                "triggers": ["DOCGEN_DOCUMENT_GENERATION_STARTED",
                             "DOCGEN_DOCUMENT_GENERATION_SUCCEEDED",
                             "DOCGEN_DOCUMENT_GENERATION_FAILED"]}
        async with session.post(f"{sim_url}/2.0/webhooks", json=body,
                                headers={"Authorization": f"Bearer {TOKEN}"}) as resp:
            assert resp.status == 201, await resp.text()


async def measure(args: argparse.Namespace, webhooks: bool, session: aiohttp.ClientSession,
                  sim_url: str, daemon_url: str, receiver: Receiver) -> dict[str, float]:
    life_s = SUBMITTED_AFTER_S + args.duration + args.spread + 1
    if webhooks:
        await install_webhooks(session, sim_url, f"{daemon_url}/api/v1/box/webhook",
                               args.batches)

    async def start_batch(slot: int) -> None:
        body = {"jobs": args.jobs_per_batch, "template_file_id": str(TEMPLATE_BASE + slot),
                "submitted_after_s": SUBMITTED_AFTER_S, "min_duration_s": args.duration,
                "max_duration_s": args.duration + args.spread}
        async with session.post(f"{sim_url}/_sim/batches", json=body) as resp:
            batch_id: str = (await resp.json())["batch_id"]
        async with session.post(f"{daemon_url}/api/v1/watch/batches/{batch_id}",
                                headers={"Authorization": f"Bearer {API_TOKEN}"}) as resp:
            assert resp.status == 202, await resp.text()

    async def requests() -> dict[str, int]:
        async with session.get(f"{sim_url}/_sim/stats") as resp:
            body = await resp.json()
        return {route: sum(codes.values()) for route, codes in body["requests"].items()}

    stop = asyncio.Event()

    async def driver(slot: int) -> None:
        await asyncio.sleep(slot * life_s / args.batches)  # staggered: batches end evenly
        while not stop.is_set():
            await start_batch(slot)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), life_s)

    drivers = [asyncio.create_task(driver(i)) for i in range(args.batches)]
    await asyncio.sleep(life_s + 5)  # warm-up: every slot has a running batch
    window_start, before = time.time(), await requests()
    await asyncio.sleep(args.window)
    window_end, after = time.time(), await requests()
    stop.set()
    await asyncio.gather(*drivers)
    await asyncio.sleep(8)  # the window's last changes: one active interval and a delivery

    async with session.get(f"{sim_url}/_sim/transitions") as resp:
        transitions = (await resp.json())["entries"]
    detected: dict[tuple[str, str], float] = {}
    for _, body in receiver.received.values():
        if body["type"] == "job.status_changed":
            key = (body["job"]["id"], body["to_status"])
            detected[key] = datetime.fromisoformat(body["detected_at"]).timestamp()
    latencies: list[float] = []
    lost = 0
    for t in transitions:
        if window_start <= t["at"] <= window_end:
            at = detected.get((t["job_id"], t["to_status"]))
            if at is not None:
                latencies.append(at - t["at"])
            elif t["to_status"] in TERMINAL:
                lost += 1
    minutes = (window_end - window_start) / 60
    by_route = {r: round((after.get(r, 0) - before.get(r, 0)) / minutes) for r in after}
    print(f"  requests/min by route: {by_route}", file=sys.stderr)
    return {
        "rpm": sum(after.get(r, 0) - before.get(r, 0) for r in after) / minutes,
        "p50": statistics.median(latencies),
        "p99": pct(latencies, 0.99),
        "changes": len(latencies),
        "lost": lost,
    }


async def one_run(args: argparse.Namespace, webhooks: bool) -> dict[str, float]:
    sim_port, http_port, hook_port = free_port(), free_port(), free_port()
    sim, sim_url = start_simulator_process(sim_port, args.history, TOKEN)
    daemon_url = f"http://127.0.0.1:{http_port}"
    receiver = Receiver()
    runner = await start_receiver(receiver, hook_port)
    try:
        with tempfile.TemporaryDirectory() as state_dir:
            config_path = Path(state_dir) / "config.yaml"
            config = daemon_config(args, webhooks, sim_url, state_dir, http_port, hook_port)
            config_path.write_text(yaml.safe_dump(config))
            with (Path(state_dir) / "daemon.log").open("wb") as log:
                daemon = subprocess.Popen(  # noqa: ASYNC220 - started once, before the clock
                    [sys.executable, "-m", "monitor.cli", "run", "--config", str(config_path)],
                    stdout=log, stderr=subprocess.STDOUT,
                )
            try:
                async with aiohttp.ClientSession() as session:
                    await Daemon(session, daemon_url).wait_ready(600)
                    result = await measure(args, webhooks, session, sim_url, daemon_url,
                                           receiver)
                result["rss_mb"] = peak_rss_mb(daemon.pid)
                return result
            finally:
                daemon.terminate()
                daemon.wait(timeout=60)
    finally:
        await runner.cleanup()
        sim.terminate()
        sim.wait(timeout=60)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="runs per mode (medians)")
    parser.add_argument("--history", type=int, default=10_000)
    parser.add_argument("--batches", type=int, default=50)
    parser.add_argument("--jobs-per-batch", type=int, default=20)
    parser.add_argument("--duration", type=float, default=60.0, help="job run time, s")
    parser.add_argument("--spread", type=float, default=1.0,
                        help="a batch's jobs finish within this many seconds of each other")
    parser.add_argument("--window", type=float, default=60.0, help="measurement window, s")
    args = parser.parse_args()
    results: dict[str, list[dict[str, float]]] = {"polling only": [], "webhooks": []}
    for run in range(args.runs):
        for mode in results:  # interleaved: a drift of the machine hits both modes alike
            result = asyncio.run(one_run(args, mode == "webhooks"))
            results[mode].append(result)
            print(f"run {run + 1} {mode:<13} " + "  ".join(
                f"{k} {v:.2f}" if isinstance(v, float) else f"{k} {v}"
                for k, v in result.items()), file=sys.stderr, flush=True)
    print(f"{args.batches} active batches of {args.jobs_per_batch} jobs (each its own template; "
          f"jobs run {args.duration:.0f}s, finishing within {args.spread:.1f}s), "
          f"{args.history:,} historic jobs, window {args.window:.0f}s; "
          f"medians of {args.runs} interleaved runs")
    print(f"{'mode':<14} {'requests/min':>13} {'detect p50':>11} {'detect p99':>11} "
          f"{'changes':>8} {'lost':>5} {'peak RSS':>9}")
    medians = {mode: {k: statistics.median(r[k] for r in runs) for k in runs[0]}
               for mode, runs in results.items()}
    for mode, m in medians.items():
        print(f"{mode:<14} {m['rpm']:>13.0f} {m['p50']:>10.2f}s {m['p99']:>10.2f}s "
              f"{m['changes']:>8.0f} {m['lost']:>5.0f} {m['rss_mb']:>7.0f}MB")
    ratio = medians["webhooks"]["rpm"] / medians["polling only"]["rpm"]
    p99 = medians["webhooks"]["p99"]
    print(f"webhooks: detection p99 {p99:.2f}s (target <= 1.5s: "
          f"{'met' if p99 <= 1.5 else 'missed'}); requests/min {ratio:.2f} x polling only "
          f"(target <= 0.5: {'met' if ratio <= 0.5 else 'missed'})")


if __name__ == "__main__":
    main()
