"""What only the SQLite backend has to get right (the contract suite covers the rest)."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import pytest

from monitor.errors import StoreLocked
from monitor.model import SnapshotChanges
from monitor.store.base import OutboxState
from monitor.store.rows import job_to_row
from monitor.store.sqlite import ACTIVE_BATCHES_SQL, MIGRATIONS, SQLiteStore
from tests.test_store_contract import ZERO_COUNTS, job, routed


async def test_the_delivered_counter_starts_from_the_rows_an_older_build_delivered(
    tmp_path: Path,
) -> None:
    """Schema v5 counts delivered rows once, at migration; the triggers keep it from then on."""
    path = tmp_path / "state.db"
    version_4 = type("SQLiteStoreV4", (SQLiteStore,), {"migrations": MIGRATIONS[:4]})
    async with version_4(str(path)) as older:
        await older.commit(SnapshotChanges(), [routed(f"e{i}", "slack") for i in range(3)])
    with sqlite3.connect(path) as conn:  # what the older build's mark_delivered wrote
        conn.execute("UPDATE outbox SET state = 'delivered' WHERE event_id IN ('e0', 'e1')")
    conn.close()
    async with SQLiteStore(str(path)) as store:
        assert await store.outbox_counts() == {
            "slack": {**ZERO_COUNTS, OutboxState.DELIVERED: 2, OutboxState.PENDING: 1}}
        await store.mark_delivered("e2", "slack")
        await store.prune(before=float("inf"))
        assert await store.outbox_counts() == {}


def test_a_state_file_serves_one_replica_until_its_holder_lets_go(tmp_path: Path) -> None:
    """The daemon's `replica_lock`: a second holder is refused, naming the first one's pid."""
    path = str(tmp_path / "state.db")
    with SQLiteStore(path).replica_lock():
        with pytest.raises(StoreLocked) as refused, SQLiteStore(path).replica_lock():
            pass
        assert f"pid {os.getpid()}" in str(refused.value) and path in str(refused.value)
        with SQLiteStore(str(tmp_path / "other.db")).replica_lock():
            pass  # another file, another replica
    with SQLiteStore(path).replica_lock():
        pass  # released with its holder


async def test_the_active_batches_are_read_from_the_status_index(tmp_path: Path) -> None:
    """Not a scan of every job (the planner's choice for a plain DISTINCT, without statistics):
    the active set is read after every sweep."""
    path = tmp_path / "state.db"
    jobs = tuple(job(f"j{i}", batch_id=f"b{i % 50}", status="completed") for i in range(500))
    async with SQLiteStore(str(path)) as store:
        await store.commit(SnapshotChanges(upserts=(*jobs, job("r", batch_id="b7"))), [])
        assert await store.active_batch_ids() == {"b7"}
    with sqlite3.connect(path) as conn:
        plan = [row[3] for row in conn.execute(f"EXPLAIN QUERY PLAN {ACTIVE_BATCHES_SQL}")]
    conn.close()
    assert not any(step.startswith("SCAN") for step in plan), plan


def jobs_schema(path: Path) -> list[tuple[str, str, str]]:
    """What `jobs` is made of, as stored (names unquoted: a rename quotes them)."""
    with sqlite3.connect(path) as conn:
        found = conn.execute(
            "SELECT type, name, sql FROM sqlite_master WHERE tbl_name = 'jobs' ORDER BY name"
        ).fetchall()
    conn.close()
    return [(kind, name, " ".join(sql.replace('"jobs"', "jobs").split())) for kind, name, sql
            in found]


async def test_a_first_baseline_swaps_in_a_jobs_table_made_as_the_migrations_make_it(
    tmp_path: Path,
) -> None:
    """Staged beside the empty `jobs` from its stored definition and renamed at the commit:
    the same columns and indexes, and nothing left beside it; twice in a row too (the renamed
    table's stored definition is quoted)."""
    path = tmp_path / "state.db"
    async with SQLiteStore(str(path)) as store:
        migrated = jobs_schema(path)
        for attempt in range(2):
            generation = await store.sweep_begin()
            await store.sweep_stage(generation, [("a", "pending")], [(job_to_row(job("a")), 0)])
            await store.commit_sweep(SnapshotChanges(), [])
            assert set(await store.load_snapshot()) == {"a"}, attempt
            assert jobs_schema(path) == migrated
            await store.commit(SnapshotChanges(removals=("a",)), [])
        with sqlite3.connect(path) as conn:
            tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
        conn.close()
        assert "jobs_next" not in tables
