"""A first baseline on SQLite, written once: built beside the empty snapshot, then swapped in.

A sweep stages its rows in a TEMP table and its commit copies them into `jobs`: for a store's
first baseline (every job of the account, into an empty `jobs`) that writes each row twice and
updates three indexes row by row (100,000 jobs: ~1.1 s of SQLite's time). When `jobs` is empty
as a sweep begins, the SQLite store stages that sweep's rows in `jobs_next` instead: a table of
the main file created from `jobs`' own stored definition (so it follows every migration), without
its indexes. The commit, when `jobs` is still empty, drops `jobs`, renames `jobs_next` and builds
the indexes and triggers from their stored definitions, one sorted pass each (~0.7 s in all); when
a poll wrote jobs meanwhile, it copies the rows no poll wrote, as a staged sweep does. Either way
it happens in the commit's one transaction: before it nothing of the sweep is visible, and a sweep
that fails leaves only `jobs_next`, which the next `sweep_begin` drops.

Every row staged here was read as new (`seq` 0): a staged row is fresh exactly when `jobs` does not
hold its job. A row staged here counts as its job's first sighting: a page whose every row is new
and whose listed (id, status) pairs are its rows' is not also written to `sweep_seen` (the
baseline's ~0.15 s); only an id listed again goes there, and it conflicts when its status there
differs from its row's here. A row read with another `seq` (a poll wrote its job during the
sweep) cannot be staged here: `to_temp` moves what was staged to the TEMP stage (and the sightings
its rows stand for to `sweep_seen`), and the sweep goes on there. The staging transactions skip
the fsync (the rows are nobody's until the commit, which has its own), and, like the TEMP
staging, are not fenced: they change nothing anyone reads; the commit that lands them is fenced."""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Sequence
from typing import Any

import aiosqlite

from monitor.store.base import JobRow
from monitor.store.rows import ROW_COLUMNS

TABLE = "jobs_next"
_COLUMNS = ", ".join(ROW_COLUMNS)
# How `jobs`' stored definition starts: as the migration wrote it, or quoted by a rename.
_CREATE = re.compile(r"^CREATE TABLE\s+(\"jobs\"|jobs\b)", re.IGNORECASE)
STAGE_INSERT = (
    f"INSERT INTO {TABLE} ({_COLUMNS}) "  # noqa: S608 (constant names)
    f"VALUES ({', '.join('?' for _ in ROW_COLUMNS)}) ON CONFLICT (id) DO NOTHING"
)
# Both from `jobs` and the vanish marks (few or none in a first baseline), not from the staged
# rows: probing a hundred thousand of them costs ~35 ms at the commit for nothing.
STALE_IDS = f"SELECT j.id FROM jobs j CROSS JOIN {TABLE} s ON s.id = j.id"  # noqa: S608
_UNMARK = (
    "DELETE FROM vanished WHERE EXISTS "  # noqa: S608 (constant names)
    f"(SELECT 1 FROM {TABLE} s WHERE s.id = vanished.job_id)"
)
_UNSTAGE = f"DELETE FROM {TABLE} WHERE id = ?"  # noqa: S608
_STATUS = ROW_COLUMNS.index("status")
# What `sweep_seen` is to the TEMP staging, with the rows staged here as first sightings.
CONFLICTS = (
    "SELECT id FROM temp.sweep_seen WHERE conflict = 1 UNION "  # noqa: S608 (constant names)
    f"SELECT s.id FROM temp.sweep_seen s JOIN {TABLE} n ON n.id = s.id WHERE s.status <> n.status"
)
NOT_STAGED = f" AND NOT EXISTS (SELECT 1 FROM {TABLE} n WHERE n.id = jobs.id)"  # noqa: S608
# The sightings the rows staged here stand for, into `sweep_seen` (before they go).
_SEEN_COPY = (
    f"INSERT INTO temp.sweep_seen (id, status) SELECT id, status FROM {TABLE} "  # noqa: S608
    "WHERE {where} ON CONFLICT (id) DO UPDATE SET conflict = 1 "
    "WHERE sweep_seen.status <> excluded.status"
)
_TO_TEMP = (
    f"INSERT INTO temp.sweep_stage ({_COLUMNS}, base_seq) "  # noqa: S608 (constant names)
    f"SELECT {_COLUMNS}, 0 FROM {TABLE} WHERE true ON CONFLICT (id) DO NOTHING"
)
_COPY_NEW = (
    f"INSERT INTO jobs ({_COLUMNS}) SELECT {_COLUMNS} FROM {TABLE} s "  # noqa: S608
    "WHERE NOT EXISTS (SELECT 1 FROM jobs j WHERE j.id = s.id)"
)


async def _one(conn: aiosqlite.Connection, sql: str) -> Any:
    rows = list(await conn.execute_fetchall(sql))
    return rows[0][0] if rows else None


async def jobs_empty(conn: aiosqlite.Connection) -> bool:
    return not await _one(conn, "SELECT EXISTS (SELECT 1 FROM jobs)")


async def begin(conn: aiosqlite.Connection) -> bool:
    """Drop what an unfinished sweep left; create `jobs_next` when `jobs` is empty. Returns
    whether it did (this sweep stages there)."""
    await conn.execute(f"DROP TABLE IF EXISTS {TABLE}")
    if not await jobs_empty(conn):
        return False
    definition = await _one(
        conn, "SELECT sql FROM sqlite_master WHERE type = 'table' AND name = 'jobs'"
    )
    statement, renamed = _CREATE.subn(f"CREATE TABLE {TABLE}", str(definition), count=1)
    if not renamed:
        raise sqlite3.OperationalError(f"unexpected definition of jobs: {statement[:60]!r}")
    await conn.execute(statement)
    return True


async def stage(
    conn: aiosqlite.Connection, seen: Sequence[tuple[str, str]], rows: Sequence[JobRow]
) -> bool:
    """One page's rows, here (a repeat of a staged id is ignored). True when they stand for
    the listed pairs `seen`, in order: the caller then need not write those to `sweep_seen`."""
    inserted = (await conn.executemany(STAGE_INSERT, rows)).rowcount
    return inserted == len(rows) and list(seen) == [(r[0], r[_STATUS]) for r in rows]


async def unstage(conn: aiosqlite.Connection, job_ids: Sequence[str]) -> None:
    """Forget the rows staged for these jobs; they stay seen."""
    pairs = [(i,) for i in job_ids]
    await conn.executemany(_SEEN_COPY.format(where="id = ?"), pairs)
    await conn.executemany(_UNSTAGE, pairs)


async def to_temp(conn: aiosqlite.Connection) -> None:
    """Move what was staged here to the TEMP stage (each row read at `seq` 0), and drop it."""
    await conn.execute(_SEEN_COPY.format(where="true"))
    await conn.execute(_TO_TEMP)
    await conn.execute(f"DROP TABLE {TABLE}")


async def apply(conn: aiosqlite.Connection) -> None:
    """Land the staged rows, inside the commit's transaction: swap the tables when `jobs` is
    still empty, else copy the rows of the jobs no poll wrote meanwhile."""
    await conn.execute(_UNMARK)
    if not await jobs_empty(conn):
        await conn.execute(_COPY_NEW)
        await conn.execute(f"DROP TABLE {TABLE}")
        return
    # What belongs to `jobs` besides its rows, as stored: dropping the table drops them.
    schema = [
        row[0]
        for row in await conn.execute_fetchall(
            "SELECT sql FROM sqlite_master WHERE tbl_name = 'jobs' "
            "AND type IN ('index', 'trigger') AND sql IS NOT NULL ORDER BY type, name"
        )
    ]
    await conn.execute("DROP TABLE jobs")
    await conn.execute(f"ALTER TABLE {TABLE} RENAME TO jobs")
    for statement in schema:
        await conn.execute(statement)
