"""Benchmark: what the outbox depth gauges cost on a store full of delivered history (run by hand).

    python bench/outbox_gauges.py --delivered 500000 --open 2000

Fills a fresh SQLite store through the `Store` interface with `--delivered` delivered rows (a
week of history at a busy account) and `--open` rows still owed (pending, some dead), then
times `outbox_counts()`, which the daemon calls every 5 s under the store lock. Prints the best
and the median of `--runs` calls."""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from monitor.model import Event, EventJob, EventType, SnapshotChanges
from monitor.store.base import RoutedEvent
from monitor.store.sqlite import SQLiteStore

CHUNK = 10_000


def event(n: int) -> Event:
    return Event(
        id=f"j{n}:1:pending:completed", type=EventType.JOB_STATUS_CHANGED,
        detected_at=datetime(2026, 11, 28, 12, 0, tzinfo=UTC),
        from_status="pending", to_status="completed",
        job=EventJob(id=f"j{n}", batch_id=f"b{n // 1000}", status="completed",
                     template_file_id="t1", output_file_id=None, output_type="pdf"),
    )


async def fill(store: SQLiteStore, delivered: int, open_rows: int) -> None:
    total = delivered + open_rows
    for start in range(0, total, CHUNK):
        events = [event(n) for n in range(start, min(start + CHUNK, total))]
        await store.commit(SnapshotChanges(), [RoutedEvent(e, ("sink",)) for e in events])
        done = [e.id for e in events if int(e.id[1:].split(":")[0]) < delivered]
        await store.mark_delivered_many("sink", done)
    for n in range(delivered, delivered + open_rows // 10):
        await store.mark_failed(event(n).id, "sink", "HTTP 500", None)


async def run(delivered: int, open_rows: int, runs: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        async with SQLiteStore(str(Path(tmp) / "state.db")) as store:
            started = time.perf_counter()
            await fill(store, delivered, open_rows)
            print(f"filled {delivered} delivered + {open_rows} open rows "
                  f"in {time.perf_counter() - started:.1f}s")
            timings = []
            for _ in range(runs):
                t0 = time.perf_counter()
                counts = await store.outbox_counts()
                timings.append(time.perf_counter() - t0)
            print(f"outbox_counts: {dict(counts['sink'])}")
            print(f"outbox_counts over {runs} runs: best {min(timings) * 1000:.2f} ms, "
                  f"median {statistics.median(timings) * 1000:.2f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--delivered", type=int, default=500_000)
    parser.add_argument("--open", type=int, default=2_000)
    parser.add_argument("--runs", type=int, default=20)
    args = parser.parse_args()
    asyncio.run(run(args.delivered, args.open, args.runs))


if __name__ == "__main__":
    main()
