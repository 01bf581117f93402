"""Benchmark: a large account's baseline and a steady sweep, through the `Store` interface, on
SQLite and on PostgreSQL side by side (run by hand).

    python bench/store_baseline.py --jobs 100000
    python bench/store_baseline.py --jobs 100000 --postgres postgresql://postgres@127.0.0.1:5432/test

Times, per backend on a fresh database (a temporary SQLite file; a PostgreSQL schema of its
own, dropped after): the baseline commit of `--jobs` jobs with its meta key (one transaction),
loading the snapshot back, a streaming sweep that stages every job in pages of `--page` and
commits with 1% of them changed and one event each, and a steady commit of `--page` changed
jobs with their events routed to two notifiers. Store work only: no Box, no diff."""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import asyncpg

from monitor.model import Event, EventJob, EventType, JobState, SnapshotChanges
from monitor.store.base import RoutedEvent, Store
from monitor.store.postgres import PostgresStore
from monitor.store.sqlite import SQLiteStore

T0 = 1_800_000_000.0
STATUSES = ("pending", "submitted", "completed", "completed_with_error", "failed")


def jobs(n: int) -> list[JobState]:
    return [
        JobState(
            id=f"job-{i:07d}", batch_id=f"batch-{i // 100:05d}", status=STATUSES[i % 5],
            template_file_id="t1", output_type="pdf",
            output_file_id=None if i % 3 else f"file-{i}", created_at="2027-01-15T12:00:00Z",
            created_by_id="u1", seq=1, first_seen_at=T0, changed_at=T0,
        )
        for i in range(n)
    ]


def changed(job: JobState) -> tuple[JobState, RoutedEvent]:
    after = replace(job, status="completed", seq=job.seq + 1, changed_at=T0 + 60)
    event = Event(
        id=f"{job.id}:{after.seq}:{job.status}:completed", type=EventType.JOB_STATUS_CHANGED,
        detected_at=datetime(2027, 1, 15, 12, 1, tzinfo=UTC), from_status=job.status,
        to_status="completed",
        job=EventJob(id=job.id, batch_id=job.batch_id, status="completed",
                     template_file_id="t1", output_file_id=None, output_type="pdf"),
    )
    return after, RoutedEvent(event, ("webhook", "slack"))


async def timed(label: str, work: Callable[[], Awaitable[object]]) -> float:
    started = time.perf_counter()
    await work()
    elapsed = time.perf_counter() - started
    print(f"  {label:<44} {elapsed:8.2f} s")
    return elapsed


async def bench(store: Store, n: int, page: int) -> None:
    snapshot = jobs(n)
    await timed(f"baseline commit, {n} jobs", lambda: store.commit(
        SnapshotChanges(upserts=tuple(snapshot)), [], meta={"baseline_at": str(T0)}, now=T0))
    loaded: dict[str, JobState] = {}

    async def load() -> None:
        loaded.update(await store.load_snapshot())

    await timed(f"load_snapshot, {n} jobs", load)
    assert len(loaded) == n

    async def sweep() -> None:
        generation = await store.sweep_begin()
        moved = [changed(j) for j in snapshot[:: 100]]
        moved_ids = {after.id for after, _ in moved}
        for start in range(0, n, page):
            chunk = snapshot[start : start + page]
            staged = [(j, j.seq) for j in chunk if j.id in moved_ids]
            await store.sweep_stage(generation, [(j.id, j.status) for j in chunk], staged)
        await store.sweep_unseen(generation, T0 + 1)
        await store.commit_sweep(SnapshotChanges(upserts=tuple(a for a, _ in moved)),
                                 [e for _, e in moved], now=T0 + 60)

    await timed(f"streaming sweep, {n} jobs in pages of {page}", sweep)
    steady = [changed(replace(j, seq=5)) for j in snapshot[1 : 1 + page]]
    await timed(f"steady commit, {page} changes + {2 * page} rows", lambda: store.commit(
        SnapshotChanges(upserts=tuple(a for a, _ in steady)), [e for _, e in steady],
        now=T0 + 120))


async def run(n: int, page: int, postgres: str | None) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        print(f"SQLite ({tmp}/state.db)")
        async with SQLiteStore(str(Path(tmp) / "state.db")) as store:
            await bench(store, n, page)
    if postgres is None:
        return
    schema = f"bench_{uuid.uuid4().hex[:12]}"
    print(f"PostgreSQL ({postgres}, schema {schema})")
    sep = "&" if "?" in postgres else "?"
    try:
        async with PostgresStore(f"{postgres}{sep}schema={schema}") as store:
            await bench(store, n, page)
    finally:
        conn = await asyncpg.connect(postgres)
        try:
            await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        finally:
            await conn.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=100_000)
    parser.add_argument("--page", type=int, default=1000)
    parser.add_argument("--postgres", help="a PostgreSQL URL to compare with (a new schema)")
    args = parser.parse_args()
    asyncio.run(run(args.jobs, args.page, args.postgres))


if __name__ == "__main__":
    main()
