"""Benchmark: replicas on one PostgreSQL, as whole processes (run by hand, not in the test suite).

    python bench/ha_failover.py failover --kills 20
    python bench/ha_failover.py throughput --events 5000 --runs 3

failover: the simulator streaming batches, two `docgen-monitor run` replicas on a PostgreSQL
  schema of their own with `ha.lease_ttl` at its default. Each round finds the leader (its
  `box_docgen_leader` gauge), SIGKILLs it and polls the simulator's `/_sim/stats` every
  `--poll-ms` until its request count moves: the first Box request after the kill comes from the
  new leader (the old one is dead). Then the killed replica is started again as a standby. The
  figure is the time from SIGKILL to that request: median and max over `--kills` rounds.

throughput: an outbox of `--events` pending events for one webhook notifier (committed into a
  fresh schema before any replica starts), delivered by one replica, or by two, to a local HTTP
  receiver (in this process, answering 200 at once: the reference). The figure is distinct
  events over the time from the first POST received to the last (events/s); repeats of one id
  are counted. One Box account: only its leader delivers, so two replicas are not expected to
  deliver faster than one (each account's work is done by its leader alone). Runs alternate
  one and two replicas; each figure is the median of `--runs`.

Every replica runs the default configuration but for its HTTP port, its request budget (out of
the way of the figures) and, in `throughput`, the webhook. Needs the PostgreSQL at `--postgres`."""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import aiohttp
import asyncpg
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families
from simproc import start_simulator_process

from monitor.model import Event, EventJob, EventType, SnapshotChanges
from monitor.store.base import RoutedEvent
from monitor.store.postgres import PostgresStore

TOKEN = "bench-ha-token"  # noqa: S105 - a throwaway token for a local simulator
READY_TIMEOUT_S = 90.0
TAKEOVER_TIMEOUT_S = 120.0


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def write_config(path: Path, box_url: str, state_url: str, hook_url: str | None) -> None:
    notify = (
        f"notifiers:\n  - {{name: hook, type: webhook, url: '{hook_url}'}}\n"
        "routes:\n  - {match: {}, notify: [hook]}\n"
        if hook_url
        else ""
    )
    path.write_text(
        "box:\n"
        f"  base_url: {box_url}\n"
        f"  auth: {{method: developer_token, token: {TOKEN}}}\n"
        "  requests_per_minute: 1000000000  # out of the way: the budget is not measured\n"
        f"state: {{url: '{state_url}'}}\n"
        f"{notify}"
        "log: {format: json, level: warning}\n"
    )


class Replica:
    """One `docgen-monitor run` on its own HTTP port."""

    def __init__(self, config: Path, log_dir: Path, name: str) -> None:
        self.config = config
        self.port = free_port()
        self.log = log_dir / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        env = {**os.environ, "DOCGEN_MONITOR_HTTP__LISTEN": f"127.0.0.1:{self.port}"}
        cli = Path(sys.executable).with_name("docgen-monitor")
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [str(cli), "run", "--config", str(self.config)],
                stdout=subprocess.DEVNULL, stderr=log, env=env,
            )

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=30)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill()

    async def leads(self, session: aiohttp.ClientSession) -> bool | None:
        """Whether it leads an account (its `box_docgen_leader`), None while it does not answer."""
        try:
            async with session.get(f"http://127.0.0.1:{self.port}/metrics") as resp:
                text = await resp.text()
        except aiohttp.ClientError:
            return None
        for family in text_string_to_metric_families(text):
            if family.name == "box_docgen_leader":
                return any(sample.value == 1 for sample in family.samples)
        return False


@asynccontextmanager
async def postgres_schema(server: str) -> AsyncIterator[str]:
    """A state URL on a schema of its own, dropped after."""
    schema = f"bench_{uuid.uuid4().hex[:12]}"
    sep = "&" if "?" in server else "?"
    try:
        yield f"{server}{sep}schema={schema}"
    finally:
        conn = await asyncpg.connect(server, timeout=10)
        try:
            await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        finally:
            await conn.close()


async def wait_for_leader(
    replicas: list[Replica], session: aiohttp.ClientSession, timeout_s: float
) -> Replica:
    """The one replica that leads, once every live replica answers and exactly one leads."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        roles = [await r.leads(session) for r in replicas]
        if None not in roles and roles.count(True) == 1:
            return replicas[roles.index(True)]
        await asyncio.sleep(0.2)
    raise SystemExit(f"no single leader within {timeout_s:.0f} s (logs: {replicas[0].log.parent})")


async def requests_made(session: aiohttp.ClientSession, sim_url: str) -> int:
    async with session.get(f"{sim_url}/_sim/stats") as resp:
        stats = await resp.json()
    return sum(n for codes in stats["requests"].values() for n in codes.values())


async def kill_rounds(args: argparse.Namespace, sim_url: str, tmp: Path, state_url: str
                      ) -> list[float]:
    """Seconds from each SIGKILL of the leader to the next Box request."""
    config = tmp / "config.yaml"
    write_config(config, sim_url, state_url, None)
    replicas = [Replica(config, tmp, f"replica-{i}") for i in range(2)]
    times_s: list[float] = []
    try:
        async with aiohttp.ClientSession() as session:
            await session.post(f"{sim_url}/_sim/batches", json={"jobs": 5})
            for replica in replicas:
                replica.start()
            leader = await wait_for_leader(replicas, session, READY_TIMEOUT_S)
            for kill in range(args.kills):
                await asyncio.sleep(args.settle_s)  # a standby that has settled
                await session.post(f"{sim_url}/_sim/batches", json={"jobs": 5})
                before = await requests_made(session, sim_url)
                killed_at = time.monotonic()
                leader.kill()
                while await requests_made(session, sim_url) == before:
                    if time.monotonic() - killed_at > TAKEOVER_TIMEOUT_S:
                        raise SystemExit("no Box request after the kill")
                    await asyncio.sleep(args.poll_ms / 1000)
                times_s.append(time.monotonic() - killed_at)
                print(f"  kill {kill + 1}: first request of the new leader after "
                      f"{times_s[-1]:.2f} s", file=sys.stderr)
                leader.start()  # the killed one comes back as a standby
                leader = await wait_for_leader(replicas, session, TAKEOVER_TIMEOUT_S)
    finally:
        for replica in replicas:
            replica.stop()
    return times_s


async def failover(args: argparse.Namespace) -> None:
    sim, sim_url = start_simulator_process(free_port(), 200, TOKEN)
    try:
        with tempfile.TemporaryDirectory(prefix="ha-failover-") as tmp:
            async with postgres_schema(args.postgres) as state_url:
                times_s = await kill_rounds(args, sim_url, Path(tmp), state_url)
    finally:
        sim.terminate()
        sim.wait(timeout=30)
    print(f"failover over {len(times_s)} SIGKILLs of the leader, default ha.lease_ttl (15 s), "
          f"two replicas, /_sim/stats polled every {args.poll_ms} ms:")
    print(f"  median {statistics.median(times_s):.2f} s, max {max(times_s):.2f} s, "
          f"min {min(times_s):.2f} s")
    print("  each: " + " ".join(f"{t:.2f}" for t in times_s))


def pending_event(i: int) -> RoutedEvent:
    event = Event(
        id=f"bench-{i}:submitted:completed", type=EventType.JOB_STATUS_CHANGED,
        detected_at=datetime.now(UTC), from_status="submitted", to_status="completed",
        job=EventJob(id=f"bench-{i}", batch_id=f"bench-batch-{i // 50}", status="completed",
                     template_file_id="1", output_file_id=None, output_type="pdf"),
    )
    return RoutedEvent(event, ("hook",))


class Receiver:
    """Answers 200 to every POST and records when each event id first came."""

    def __init__(self) -> None:
        self.first_at: dict[str, float] = {}
        self.posts = 0
        self.all_in = asyncio.Event()
        self.expected = 0

    async def handle(self, request: web.Request) -> web.Response:
        await request.read()
        self.posts += 1
        event_id = request.headers.get("Idempotency-Key", "")
        self.first_at.setdefault(event_id, time.monotonic())
        if len(self.first_at) >= self.expected:
            self.all_in.set()
        return web.Response(status=200)


async def one_throughput_run(
    args: argparse.Namespace, sim_url: str, hook_url: str, receiver: Receiver, n: int
) -> tuple[float, int]:
    """Events/s with `n` replicas, and the repeated posts."""
    receiver.first_at.clear()
    receiver.posts = 0
    receiver.all_in.clear()
    receiver.expected = args.events
    with tempfile.TemporaryDirectory(prefix="ha-throughput-") as tmp:
        async with postgres_schema(args.postgres) as state_url:
            async with PostgresStore(state_url) as store:
                for start in range(0, args.events, 1000):
                    chunk = range(start, min(start + 1000, args.events))
                    await store.commit(SnapshotChanges(), [pending_event(i) for i in chunk])
            config = Path(tmp) / "config.yaml"
            write_config(config, sim_url, state_url, hook_url)
            replicas = [Replica(config, Path(tmp), f"replica-{i}") for i in range(n)]
            try:
                for replica in replicas:
                    replica.start()
                await asyncio.wait_for(receiver.all_in.wait(), timeout=600)
            finally:
                for replica in replicas:
                    replica.stop()
                if args.keep_logs:
                    for replica in replicas:
                        print(replica.log.read_text()[-3000:], file=sys.stderr)
    times = sorted(receiver.first_at.values())
    return (len(times) - 1) / (times[-1] - times[0]), receiver.posts - len(times)


async def throughput(args: argparse.Namespace) -> None:
    sim, sim_url = start_simulator_process(free_port(), 200, TOKEN)
    receiver = Receiver()
    app = web.Application()
    app.router.add_post("/hook", receiver.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    rates: dict[int, list[float]] = {1: [], 2: []}
    repeats: dict[int, list[int]] = {1: [], 2: []}
    try:
        for _ in range(args.runs):
            for n in (1, 2):
                rate, repeated = await one_throughput_run(
                    args, sim_url, f"http://127.0.0.1:{port}/hook", receiver, n)
                rates[n].append(rate)
                repeats[n].append(repeated)
                print(f"  {n} replica(s): {rate:,.0f} events/s, {repeated} repeated",
                      file=sys.stderr)
    finally:
        await runner.cleanup()
        sim.terminate()
        sim.wait(timeout=30)
    print(f"outbox of {args.events:,} events to a local webhook receiver, one Box account, "
          f"median of {args.runs} interleaved runs:")
    for n in (1, 2):
        each = " ".join(f"{r:,.0f}" for r in rates[n])
        print(f"  {n} replica(s): {statistics.median(rates[n]):,.0f} events/s "
              f"(runs: {each}; repeated posts: {sum(repeats[n])})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("scenario", choices=["failover", "throughput"])
    parser.add_argument("--postgres", default="postgresql://postgres@127.0.0.1:5432/test")
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--poll-ms", type=int, default=20)
    parser.add_argument("--settle-s", type=float, default=3.0,
                        help="wait after a takeover before the next kill")
    parser.add_argument("--events", type=int, default=5000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--keep-logs", action="store_true", help="print the replicas' log tails")
    args = parser.parse_args()
    asyncio.run(failover(args) if args.scenario == "failover" else throughput(args))


if __name__ == "__main__":
    main()
