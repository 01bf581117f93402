"""Benchmark: webhook delivery throughput to a local receiver (run by hand, not in the suite).

    python bench/delivery.py --events 10000 --runs 3

A receiver process on loopback answers every POST with 204 at once. Against it, interleaved,
each run a whole process:
- `bare`: a plain aiohttp client posting the same signed bodies, 16 at a time, no store (the
  reference: what this machine's HTTP stack does at that concurrency; not our code);
- `ours`: the real dispatcher and webhook notifier with every default (concurrency 16), over
  a SQLite store holding the events (two per job, committed before the clock starts), until
  every row is marked delivered; logs at the default level (info, JSON, to /dev/null);
- `ours-c1`: the same with `concurrency: 1` (one event at a time, as before).
Prints events/s (median of the runs), the ratio to `bare`, and peak RSS. Target: ours >= 1,000/s."""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import aiohttp
import orjson
from aiohttp import web

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from monitor.config import DeliveryConfig, NotifierSpec
from monitor.logging import configure_logging
from monitor.metrics import Metrics
from monitor.model import Event, EventJob, EventType, SnapshotChanges
from monitor.notify.base import NotifierRegistry
from monitor.notify.dispatcher import Dispatcher
from monitor.notify.webhook import sign
from monitor.store import open_store
from monitor.store.base import OutboxState, RoutedEvent
from tests.harness import free_port

VARIANTS = ("bare", "ours", "ours-c1")
SECRET = "bench-secret"  # noqa: S105 (a benchmark's own receiver key)


def events(n: int) -> list[Event]:
    """`n` events, two per job (discovered, then completed), in the order they happened."""
    at = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)
    out: list[Event] = []
    for i in range(n):
        job, step = divmod(i, 2)
        ref = EventJob(id=f"j{job}", batch_id=f"b{job // 200}", status="submitted",
                       template_file_id="t1", output_file_id=None, output_type="pdf")
        if step == 0:
            out.append(Event(id=f"j{job}:1:new:submitted", type=EventType.JOB_DISCOVERED,
                             detected_at=at, to_status="submitted", job=ref))
        else:
            out.append(Event(id=f"j{job}:2:submitted:completed",
                             type=EventType.JOB_STATUS_CHANGED, detected_at=at,
                             from_status="submitted", to_status="completed",
                             job=ref.model_copy(update={"status": "completed"})))
    return out


async def serve(port: int) -> None:
    async def hook(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/hook", hook)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    print("ready", flush=True)
    await asyncio.Event().wait()


async def bare(url: str, n: int) -> float:
    bodies = [orjson.dumps(e.wire()) for e in events(n)]
    queue = iter(bodies)
    async with aiohttp.ClientSession() as session:

        async def worker() -> None:
            for body in queue:
                ts = int(time.time())
                headers = {"Content-Type": "application/json",
                           "X-Docgen-Monitor-Signature": sign(SECRET, ts, body)}
                async with session.post(url, data=body, headers=headers) as resp:
                    await resp.read()
                    assert resp.status == 204

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(16)))
        return time.perf_counter() - started


async def ours(url: str, n: int, concurrency: int | None) -> float:
    extra = {} if concurrency is None else {"concurrency": concurrency}
    spec = NotifierSpec.model_validate({"name": "sink", "type": "webhook", "url": url,
                                        "secret": SECRET, **extra})
    config = DeliveryConfig()
    notifier = NotifierRegistry.from_entry_points().create(spec, timeout_s=config.timeout)
    metrics = Metrics()
    with tempfile.TemporaryDirectory() as tmp:
        async with open_store(f"sqlite:///{tmp}/state.db") as store:
            await store.commit(SnapshotChanges(),
                               [RoutedEvent(e, ("sink",)) for e in events(n)])
            dispatcher = Dispatcher(store, {"sink": notifier}, config, metrics)
            delivered = metrics.notifications.labels("sink", "delivered")._value
            started = time.perf_counter()
            dispatcher.start()
            while delivered.get() < n:  # noqa: ASYNC110 (a counter has no event to wait on)
                await asyncio.sleep(0.01)
            elapsed = time.perf_counter() - started
            await dispatcher.stop(config.drain_timeout)
            await notifier.close()
            counts = (await store.outbox_counts())["sink"]
            assert counts[OutboxState.DELIVERED] == n, counts
    return elapsed


def child(variant: str, url: str, n: int) -> None:
    if variant == "bare":
        elapsed = asyncio.run(bare(url, n))
    else:
        with open(os.devnull, "w") as devnull:
            configure_logging("info", "json", stream=devnull)  # the default level
            elapsed = asyncio.run(ours(url, n, 1 if variant == "ours-c1" else None))
    print(elapsed, flush=True)


def run_child(variant: str, url: str, n: int) -> tuple[float, float]:
    """Seconds the child measured and its peak RSS in MB."""
    proc = subprocess.Popen([sys.executable, __file__, "--child", variant, "--url", url,
                             "--events", str(n)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)  # reaps it, with its own peak RSS
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"{variant} failed ({proc.returncode})")
    rss_mb = usage.ru_maxrss / 1024
    return float(out.strip().splitlines()[-1]), rss_mb


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--events", type=int, default=10_000)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--child", choices=VARIANTS)
    p.add_argument("--url")
    p.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.serve:
        asyncio.run(serve(args.serve))
        return
    if args.child:
        child(args.child, args.url, args.events)
        return
    port = free_port()
    receiver = subprocess.Popen([sys.executable, __file__, "--serve", str(port)],
                                stdout=subprocess.PIPE, text=True)
    assert receiver.stdout is not None
    if receiver.stdout.readline().strip() != "ready":
        raise SystemExit("receiver did not start")
    url = f"http://127.0.0.1:{port}/hook"
    variants = args.variants.split(",")
    seconds: dict[str, list[float]] = {v: [] for v in variants}
    rss: dict[str, list[float]] = {v: [] for v in variants}
    try:
        for _ in range(args.runs):  # interleaved: each run tries every variant once
            for variant in variants:
                elapsed, peak = run_child(variant, url, args.events)
                seconds[variant].append(elapsed)
                rss[variant].append(peak)
    finally:
        receiver.terminate()
        receiver.wait()
    reference = statistics.median(seconds["bare"]) if "bare" in seconds else None
    print(f"{args.events} events to a local receiver, median of {args.runs} interleaved runs")
    print(f"{'variant':10} {'events/s':>10} {'vs bare':>8} {'peak RSS MB':>12}  runs (s)")
    for variant in variants:
        med = statistics.median(seconds[variant])
        ratio = f"{reference / med:.2f}x" if reference else "-"
        runs = " ".join(f"{s:.2f}" for s in seconds[variant])
        print(f"{variant:10} {args.events / med:10.0f} {ratio:>8} "
              f"{statistics.median(rss[variant]):12.0f}  {runs}")


if __name__ == "__main__":
    main()
