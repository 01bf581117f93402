"""The default state store: one SQLite file, reached through aiosqlite.

One connection serves the whole process. SQLite allows one writer at a time and a connection has
one transaction at a time, so every operation takes `_lock`: without it a read issued by another
task between two statements of a commit would see that commit's uncommitted rows. Writes run as
one `BEGIN IMMEDIATE ... COMMIT` each, inside a task the caller's cancellation cannot reach
(`asyncio.shield`), so a commit either lands whole or rolls back whole; `close()` waits for them.

Durability: WAL journal with `synchronous=FULL`. NORMAL would be safe for consistency (WAL never
tears a transaction) but may lose the last commits on power loss. For the snapshot that heals
itself (the next sweep re-detects the change), but the outbox is the record of what is owed:
events minted for an intermediate status the next sweep can no longer see (the job has moved on)
would be lost, and lost `delivered` marks would re-send. FULL costs one WAL fsync per
transaction, which at one commit per poll and one mark per delivery is noise.

Retention: delivered outbox rows and their events are kept for the audit and dead-letter commands
until `prune` removes those older than the configured retention.

Leases (schema v8) work as on PostgreSQL, judged by this process's wall clock: with SQLite the
daemon is one replica (an OS lock on the file, taken by the daemon, refuses a second), so it
holds every lease; fenced writes check the epoch inside their `BEGIN IMMEDIATE`, which already
excludes any other writer. That is safe because an event id
can only be re-minted while its change is not yet in the snapshot, i.e. within a crash window.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import sqlite3
import sys
import time
from array import array
from collections.abc import (
    AsyncGenerator,
    AsyncIterable,
    Awaitable,
    Callable,
    Collection,
    Iterable,
    Iterator,
    Mapping,
    Sequence,
)
from itertools import pairwise
from operator import itemgetter
from pathlib import Path
from typing import Any, ClassVar, Self, TypeVar

import aiosqlite
import structlog

from monitor.errors import SchemaTooNew, StoreError, StoreLocked, StoreNotEmpty
from monitor.model import (
    DEFAULT_ACCOUNT,
    TERMINAL_STATUSES,
    Event,
    EventType,
    JobState,
    Observed,
    SnapshotChanges,
)
from monitor.store import rows, sqlite_first
from monitor.store.base import (
    COPIED_TABLES,
    BatchSummary,
    EventQuery,
    EventRecord,
    Fence,
    JobRow,
    Lease,
    NotifierActivity,
    OutboxEntry,
    OutboxState,
    PendingEdit,
    RoutedEvent,
    Silence,
    Store,
    StoredFingerprints,
    TableChunk,
    ThreadRef,
)
from monitor.store.fencing import Fencing
from monitor.store.rows import (
    DELIVERY_COLUMNS,
    OBSERVED_COLUMNS,
    SILENCE_COLUMNS,
    copy_target,
    event_filters,
    job_order_sql,
)
from monitor.store.rows import JOB_COLUMNS as _JOB_COLUMNS
from monitor.store.rows import ROW_COLUMNS as _ROW_COLUMNS
from monitor.store.rows import deliveries_by_event as _deliveries
from monitor.store.rows import entry_from_row as _entry
from monitor.store.rows import fingerprints_of as _fingerprints_of
from monitor.store.rows import job_from_row as _job
from monitor.store.rows import job_to_row as _job_row
from monitor.store.rows import silence_from_row as _silence
from monitor.store.rows import silence_to_row as _silence_row
from monitor.store.rows import truncate_error as _truncate
from monitor.store.shield import ShieldedWrites

_T = TypeVar("_T")
_log = structlog.get_logger(__name__)

BUSY_TIMEOUT_S = 5.0
# SQLite builds before 3.32 cap bound parameters at 999 per statement.
_IN_CHUNK = 500

#: A schema step: SQL statements, or a function of the connection for what SQL cannot say.
Migration = tuple[str | Callable[[aiosqlite.Connection], Awaitable[None]], ...]
#: Rows a migration that computes in Python reads (and writes) at once.
_MIGRATE_CHUNK = 10_000

# The delivered counter's two moves (schema v5 triggers).
_COUNT_IN = (
    "INSERT INTO outbox_delivered (notifier, n) VALUES (new.notifier, 1) "
    "ON CONFLICT (notifier) DO UPDATE SET n = n + 1;"
)
# The job an event is about, as the index `events_job_seq` spells it (NULL for batch events).
_EVENT_JOB_ID = "json_extract(payload, '$.job.id')"
_COUNT_OUT = "UPDATE outbox_delivered SET n = n - 1 WHERE notifier = old.notifier;"


async def _fingerprint_jobs(conn: aiosqlite.Connection) -> None:
    """v12: the fingerprint of every stored job (`rows.fingerprint`; every later write
    computes its own), a chunk of rows at a time in id order."""
    sql = (
        f"SELECT id, {', '.join(OBSERVED_COLUMNS)} FROM jobs "  # noqa: S608 (constant names)
        "WHERE id > ? ORDER BY id LIMIT ?"
    )
    after = ""
    while rows := await conn.execute_fetchall(sql, (after, _MIGRATE_CHUNK)):
        await conn.executemany(
            "UPDATE jobs SET fingerprint = ? WHERE id = ?", _fingerprints_of(rows)
        )
        after = list(rows)[-1][0]

# Ordered schema steps; step i takes the schema from version i to version i + 1, in one
# transaction. Never edit a released step: append a new one.
MIGRATIONS: tuple[Migration, ...] = (
    (
        """CREATE TABLE jobs (
            id               TEXT PRIMARY KEY,
            batch_id         TEXT NOT NULL,
            status           TEXT NOT NULL,
            template_file_id TEXT NOT NULL,
            output_type      TEXT NOT NULL,
            output_file_id   TEXT,
            created_at       TEXT,
            created_by_id    TEXT,
            seq              INTEGER NOT NULL,
            first_seen_at    REAL NOT NULL,
            changed_at       REAL NOT NULL
        ) WITHOUT ROWID""",
        "CREATE INDEX jobs_batch_id ON jobs (batch_id)",
        # seq orders events by insertion (AUTOINCREMENT: never reused, so always increasing).
        """CREATE TABLE events (
            seq        INTEGER PRIMARY KEY AUTOINCREMENT,
            id         TEXT NOT NULL UNIQUE,
            type       TEXT NOT NULL,
            batch_id   TEXT,
            payload    TEXT NOT NULL,
            created_at REAL NOT NULL
        )""",
        "CREATE INDEX events_batch_id ON events (batch_id)",
        """CREATE TABLE outbox (
            event_id        TEXT NOT NULL REFERENCES events (id),
            notifier        TEXT NOT NULL CHECK (notifier <> ''),
            state           TEXT NOT NULL
                            CHECK (state IN ('pending', 'claimed', 'delivered', 'dead')),
            attempts        INTEGER NOT NULL DEFAULT 0,
            next_attempt_at REAL NOT NULL,
            claimed_until   REAL,
            last_error      TEXT,
            updated_at      REAL NOT NULL,
            PRIMARY KEY (event_id, notifier)
        ) WITHOUT ROWID""",
        "CREATE INDEX outbox_due ON outbox (notifier, state, next_attempt_at)",
        "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID",
    ),
    # v2 (notifications): a job's failure texts; where a batch's Slack parent message lives;
    # when each notification group was last flushed.
    (
        "ALTER TABLE jobs ADD COLUMN errors TEXT NOT NULL DEFAULT '[]'",
        "ALTER TABLE jobs ADD COLUMN warnings TEXT NOT NULL DEFAULT '[]'",
        """CREATE TABLE threads (
            notifier   TEXT NOT NULL,
            batch_id   TEXT NOT NULL,
            channel    TEXT NOT NULL,
            ts         TEXT NOT NULL,
            created_at REAL NOT NULL,
            PRIMARY KEY (notifier, batch_id)
        ) WITHOUT ROWID""",
        """CREATE TABLE notify_groups (
            notifier      TEXT NOT NULL,
            group_key     TEXT NOT NULL,
            last_flush_at REAL NOT NULL,
            PRIMARY KEY (notifier, group_key)
        ) WITHOUT ROWID""",
    ),
    # Version 3: stuck marks, and the index the active set is read from. (A sweep's staging
    # lives in TEMP tables, see `_SWEEP_TEMP`: it is never durable, so it needs no migration.)
    (
        "CREATE INDEX jobs_status_batch ON jobs (status, batch_id)",
        """CREATE TABLE stuck_marks (
            job_id   TEXT PRIMARY KEY,
            event_id TEXT NOT NULL
        ) WITHOUT ROWID""",
    ),
    # Version 4: a parent post is recorded as started before it is sent (channel and ts stay
    # NULL until Slack answers), and a failed parent edit waits in the thread's row for its
    # own retry. SQLite cannot drop NOT NULL in place: the table is rebuilt.
    (
        """CREATE TABLE threads_v4 (
            notifier           TEXT NOT NULL,
            batch_id           TEXT NOT NULL,
            channel            TEXT,
            ts                 TEXT,
            created_at         REAL NOT NULL,
            pending_edit       TEXT,
            edit_attempts      INTEGER NOT NULL DEFAULT 0,
            edit_failing_since REAL,
            PRIMARY KEY (notifier, batch_id)
        ) WITHOUT ROWID""",
        "INSERT INTO threads_v4 (notifier, batch_id, channel, ts, created_at) "
        "SELECT notifier, batch_id, channel, ts, created_at FROM threads",
        "DROP TABLE threads",
        "ALTER TABLE threads_v4 RENAME TO threads",
    ),
    # Version 5 (delivery survives an outage): when a row's current run of failures began, so
    # that it goes dead by age (`delivery.give_up_after`), not by count. The depth gauges read
    # the rows still owed through a partial index, and the delivered count from a counter the
    # triggers keep: never a scan of the delivered history under the store lock.
    (
        "ALTER TABLE outbox ADD COLUMN first_failed_at REAL",
        "CREATE INDEX outbox_open ON outbox (notifier, state) WHERE state <> 'delivered'",
        """CREATE TABLE outbox_delivered (
            notifier TEXT PRIMARY KEY,
            n        INTEGER NOT NULL
        ) WITHOUT ROWID""",
        "INSERT INTO outbox_delivered (notifier, n) "
        "SELECT notifier, COUNT(*) FROM outbox WHERE state = 'delivered' GROUP BY notifier",
        f"""CREATE TRIGGER outbox_delivered_insert AFTER INSERT ON outbox
            WHEN new.state = 'delivered' BEGIN {_COUNT_IN} END""",
        f"""CREATE TRIGGER outbox_delivered_update AFTER UPDATE OF state ON outbox
            WHEN new.state = 'delivered' AND old.state <> 'delivered' BEGIN {_COUNT_IN} END""",
        f"""CREATE TRIGGER outbox_undelivered_update AFTER UPDATE OF state ON outbox
            WHEN old.state = 'delivered' AND new.state <> 'delivered' BEGIN {_COUNT_OUT} END""",
        f"""CREATE TRIGGER outbox_delivered_delete AFTER DELETE ON outbox
            WHEN old.state = 'delivered' BEGIN {_COUNT_OUT} END""",
    ),
    # Version 6: what a job's vanish left behind (the seq of its `job.vanished`, so a return is
    # announced with a new id), and the jobs a complete listing missed but Box has not yet
    # confirmed gone.
    (
        """CREATE TABLE vanished (
            job_id      TEXT PRIMARY KEY,
            seq         INTEGER NOT NULL,
            vanished_at REAL NOT NULL
        ) WITHOUT ROWID""",
        """CREATE TABLE suspects (
            job_id TEXT PRIMARY KEY,
            since  REAL NOT NULL
        ) WITHOUT ROWID""",
    ),
    # Version 7: a thread reply is recorded as started before it is sent, and forgotten in
    # the transaction that marks its events delivered; a start left behind is a reply in
    # doubt that the next send looks up before posting again.
    (
        """CREATE TABLE reply_posts (
            notifier   TEXT NOT NULL,
            batch_id   TEXT NOT NULL,
            reply_key  TEXT NOT NULL,
            started_at REAL NOT NULL,
            PRIMARY KEY (notifier, batch_id, reply_key)
        ) WITHOUT ROWID""",
    ),
    # Version 8 (HA): a lease per Box account and the live replicas; an outbox claim names the
    # replica and lease epoch that took it.
    (
        """CREATE TABLE leases (
            account    TEXT PRIMARY KEY,
            owner      TEXT,
            epoch      INTEGER NOT NULL,
            expires_at REAL NOT NULL
        ) WITHOUT ROWID""",
        """CREATE TABLE replicas (
            id         TEXT PRIMARY KEY,
            expires_at REAL NOT NULL
        ) WITHOUT ROWID""",
        "ALTER TABLE outbox ADD COLUMN claim_owner TEXT",
        "ALTER TABLE outbox ADD COLUMN claim_epoch INTEGER",
    ),
    # Version 9 (concurrent delivery): a job's events by their order, so that a claim in job
    # order finds the earlier events of a row's job (an index on the payload's job id: no new
    # column, so a row written by the previous build needs nothing filled in).
    (f"CREATE INDEX events_job_seq ON events ({_EVENT_JOB_ID}, seq)",),
    # Version 10: silences, and which silence settled an outbox row instead of a delivery (such
    # a row is `delivered`: nothing more is owed, and retention prunes it like any other).
    (
        """CREATE TABLE silences (
            id         TEXT PRIMARY KEY,
            match      TEXT NOT NULL,
            starts_at  REAL NOT NULL,
            ends_at    REAL NOT NULL,
            comment    TEXT NOT NULL,
            created_by TEXT NOT NULL,
            created_at REAL NOT NULL
        ) WITHOUT ROWID""",
        "CREATE INDEX silences_ends_at ON silences (ends_at)",
        "ALTER TABLE outbox ADD COLUMN silence_id TEXT",
    ),
    # Version 11: the template version a job was built from, and the jobs of a template by
    # time (failure ratios per template version, monitor/template_rates.py).
    (
        "ALTER TABLE jobs ADD COLUMN template_file_version_id TEXT",
        "CREATE INDEX jobs_template_changed ON jobs (template_file_id, changed_at)",
    ),
    # Version 12: the fingerprint of what each job's row observed (`rows.fingerprint`): a sweep
    # recognises an unchanged listing entry by it, without reading the row.
    ("ALTER TABLE jobs ADD COLUMN fingerprint INTEGER", _fingerprint_jobs),
)

_SCHEMA_VERSION_TABLE = """CREATE TABLE IF NOT EXISTS schema_version (
    version    INTEGER PRIMARY KEY,
    applied_at REAL NOT NULL
)"""

# Column order is JobState's field order, so a row is `_job(row)`. A field added to JobState
# without a migration fails loudly at the first commit ("no column named ...").
_JOB_SELECT = f"SELECT {', '.join(_JOB_COLUMNS)} FROM jobs"  # noqa: S608 (constant names)
_OBSERVED_SELECT = f"SELECT id, {', '.join(OBSERVED_COLUMNS)} FROM jobs WHERE id IN"  # noqa: S608
_JOB_UPSERT = (
    f"INSERT INTO jobs ({', '.join(_ROW_COLUMNS)}) "  # noqa: S608 (constant names)
    f"VALUES ({', '.join('?' for _ in _ROW_COLUMNS)}) "
    f"ON CONFLICT (id) DO UPDATE SET "
    + ", ".join(f"{c} = excluded.{c}" for c in _ROW_COLUMNS if c != "id")
)
# A streaming sweep stages into TEMP tables (this connection only, never fsynced): what each page
# listed, and the rows to write at the end. A crash or a failed sweep leaves nothing behind.
_SWEEP_TEMP = (
    # `status` is the first status listed for the job; `conflict` is set when a repeat of the id
    # listed another one.
    "CREATE TEMP TABLE IF NOT EXISTS sweep_seen (id TEXT PRIMARY KEY, status TEXT NOT NULL, "
    "conflict INTEGER NOT NULL DEFAULT 0) WITHOUT ROWID",
    # JobState's columns (types are affinities only in SQLite) and the seq the sweep read.
    "CREATE TEMP TABLE IF NOT EXISTS sweep_stage (id TEXT PRIMARY KEY, "
    + ", ".join(c for c in _ROW_COLUMNS if c != "id")
    + ", base_seq INTEGER NOT NULL) WITHOUT ROWID",
)
_STAGE_INSERT = (
    f"INSERT INTO temp.sweep_stage ({', '.join(_ROW_COLUMNS)}, base_seq) "  # noqa: S608
    f"VALUES ({', '.join('?' for _ in _ROW_COLUMNS)}, ?) ON CONFLICT (id) DO NOTHING"
)
# A staged row is stale when the job changed after the sweep read it (an active poll committed
# in between): applying it would roll the job back.
_STAGE_FRESH = "COALESCE((SELECT j.seq FROM jobs j WHERE j.id = s.id), 0) = s.base_seq"
_STAGE_APPLY = (
    f"INSERT INTO jobs ({', '.join(_ROW_COLUMNS)}) "  # noqa: S608 (constant names)
    f"SELECT {', '.join('s.' + c for c in _ROW_COLUMNS)} FROM temp.sweep_stage s "
    f"WHERE {_STAGE_FRESH} "
    f"ON CONFLICT (id) DO UPDATE SET "
    + ", ".join(f"{c} = excluded.{c}" for c in _ROW_COLUMNS if c != "id")
)
_FINGERPRINTS = (
    "SELECT group_concat(CASE WHEN fingerprint IS NOT NULL "
    "THEN printf('%016x', fingerprint) END, ''), COUNT(*) - COUNT(fingerprint), "
    "(SELECT COUNT(*) FROM vanished) FROM jobs"
)
# The stored fingerprints a sweep did not see listed (`sweep_unseen`).
_UNMATCHED_TEMP = (
    "CREATE TEMP TABLE IF NOT EXISTS sweep_unmatched (fp INTEGER PRIMARY KEY)"
)
_BY_ID = itemgetter(0)  # a staged row's or a seen pair's job id
_CONFLICTS = "SELECT id FROM temp.sweep_seen WHERE conflict = 1"
_UNSTAGE = "DELETE FROM temp.sweep_stage WHERE id = ?"
_STALE_IDS = f"SELECT s.id FROM temp.sweep_stage s WHERE NOT ({_STAGE_FRESH})"  # noqa: S608
_SEEN_INSERT = (
    "INSERT INTO temp.sweep_seen (id, status) VALUES (?, ?) ON CONFLICT (id) DO UPDATE SET "
    "conflict = 1 WHERE sweep_seen.status <> excluded.status"
)
# A removed job leaves the seq of its `job.vanished` event behind; a job written again is back.
_TOMBSTONE_INSERT = (
    "INSERT INTO vanished (job_id, seq, vanished_at) SELECT id, seq + 1, ? FROM jobs "
    "WHERE id = ? ON CONFLICT (job_id) DO UPDATE SET seq = excluded.seq, "
    "vanished_at = excluded.vanished_at"
)
_TERMINAL_SQL = ", ".join(f"'{s}'" for s in sorted(TERMINAL_STATUSES))


def _non_terminal_sql() -> str:
    """`status NOT IN (terminal)` as the ranges between them: SQLite answers those from the
    (status, batch_id) index instead of visiting every row (100,000 jobs: ~0 ms, not ~120 ms)."""
    bounds = sorted(TERMINAL_STATUSES)
    ranges = [f"status < '{bounds[0]}'"]
    ranges += [f"(status > '{a}' AND status < '{b}')" for a, b in pairwise(bounds)]
    ranges.append(f"status > '{bounds[-1]}'")
    return " OR ".join(ranges)


_NON_TERMINAL_SQL = _non_terminal_sql()
# `+batch_id`: without it the planner walks `jobs_batch_id` for the DISTINCT, a scan of every
# row (100,000 jobs: ~50 ms after each sweep), instead of the status ranges (~0 ms).
ACTIVE_BATCHES_SQL = f"SELECT DISTINCT +batch_id FROM jobs WHERE {_NON_TERMINAL_SQL}"  # noqa: S608
_EVENT_INSERT = (
    "INSERT INTO events (id, type, batch_id, payload, created_at) VALUES (?, ?, ?, ?, ?) "
    "ON CONFLICT (id) DO NOTHING"
)
# Only events inserted by this transaction (seq above the pre-insert maximum) get outbox rows:
# a replayed event id never gets a second row. The WHERE clause also resolves SQLite's
# INSERT ... SELECT ... ON CONFLICT parsing ambiguity.
_OUTBOX_INSERT = (
    "INSERT INTO outbox (event_id, notifier, state, attempts, next_attempt_at, updated_at) "
    "SELECT id, ?, 'pending', 0, ?, ? FROM events WHERE id = ? AND seq > ? "
    "ON CONFLICT (event_id, notifier) DO NOTHING"
)
_META_UPSERT = (
    "INSERT INTO meta (key, value) VALUES (?, ?) "
    "ON CONFLICT (key) DO UPDATE SET value = excluded.value"
)
# A batch's thread is kept while its batch runs (a non-terminal job), while its notifier still
# owes an event of the batch (pending, claimed or dead: a dead row may be retried), and while
# a parent edit waits.
_THREAD_PRUNE = (
    "DELETE FROM threads WHERE created_at < ? AND pending_edit IS NULL "  # noqa: S608 (constants)
    "AND NOT EXISTS (SELECT 1 FROM jobs j WHERE j.batch_id = threads.batch_id "
    f"AND j.status NOT IN ({_TERMINAL_SQL})) "
    "AND NOT EXISTS (SELECT 1 FROM events e JOIN outbox o ON o.event_id = e.id "
    "WHERE e.batch_id = threads.batch_id AND o.notifier = threads.notifier "
    "AND o.state <> 'delivered')"
)
# Back to pending without an attempt; a throttle answer also ends the run of failures.
_DEFER = (
    "UPDATE outbox SET state = 'pending', next_attempt_at = ?, claimed_until = NULL, "
    "updated_at = ? WHERE event_id = ? AND notifier = ? AND state IN ('pending', 'claimed')"
)
_THROTTLE = _DEFER.replace("updated_at = ?", "first_failed_at = NULL, updated_at = ?")
_ENTRY_COLUMNS = (
    "e.payload, o.notifier, o.state, o.attempts, o.next_attempt_at, o.last_error, "
    "o.first_failed_at"
)
_ENTRY_WIDTH = 7
_ENTRY_FROM = "FROM outbox o JOIN events e ON e.id = o.event_id"
_OLDEST_FIRST = "ORDER BY e.created_at, e.seq, o.notifier"
_NEXT_DUE = (
    "SELECT MIN(CASE state WHEN 'pending' THEN next_attempt_at ELSE claimed_until END) "
    "FROM outbox WHERE notifier = ? AND state IN ('pending', 'claimed')"
)
_JOB_HEAD, _NEXT_DUE_IN_JOB_ORDER = job_order_sql(_EVENT_JOB_ID, "?")


async def _rows_in(conn: aiosqlite.Connection, sql: str, ids: Sequence[str]) -> list[Any]:
    """The rows of `sql`, which ends in `IN`, for `ids`, a chunk of placeholders at a time."""
    rows: list[Any] = []
    for start in range(0, len(ids), _IN_CHUNK):
        chunk = ids[start : start + _IN_CHUNK]
        # One trip to the connection's thread a chunk, not three (execute, fetch, close).
        rows.extend(await conn.execute_fetchall(f"{sql} ({', '.join('?' for _ in chunk)})", chunk))
    return rows


async def _mark_delivered(
    conn: aiosqlite.Connection, notifier: str, event_ids: Sequence[str]
) -> None:
    now = time.time()
    await conn.executemany(
        "UPDATE outbox SET state = 'delivered', attempts = attempts + 1, "
        "claimed_until = NULL, first_failed_at = NULL, updated_at = ? "
        "WHERE event_id = ? AND notifier = ? AND state <> 'delivered'",
        [(now, event_id, notifier) for event_id in event_ids],
    )


async def _saved_thread(
    conn: aiosqlite.Connection, notifier: str, batch_id: str
) -> ThreadRef | None:
    async with conn.execute(
        "SELECT channel, ts FROM threads WHERE notifier = ? AND batch_id = ? AND ts IS NOT NULL",
        (notifier, batch_id),
    ) as cur:
        row = await cur.fetchone()
    return None if row is None else ThreadRef(str(row[0]), str(row[1]))


class SQLiteStore(ShieldedWrites, Fencing, Store):
    """The state in one SQLite file at `path` (parent directories are created on open)."""

    migrations: ClassVar[tuple[Migration, ...]] = MIGRATIONS

    def __init__(self, path: str) -> None:
        ShieldedWrites.__init__(self)
        Fencing.__init__(self)
        self.path = path
        # Where SQLite's temp files go: the state's own directory (memory for ":memory:").
        self._temp_dir = None if path == ":memory:" else str(Path(path).absolute().parent)
        self._conn: aiosqlite.Connection | None = None
        self._closing = False
        self._lease_path: str | None = None  # another file whose leases fence this one
        self._lock = asyncio.Lock()
        self._sweep_generation = 0
        # This sweep began on an empty snapshot: it stages in `jobs_next` (`sqlite_first`).
        self._first_baseline = False

    @classmethod
    def from_url(cls, url: str) -> Self:
        """`sqlite:///relative/path` or `sqlite:////absolute/path`."""
        path = url.removeprefix("sqlite:///") if url.startswith("sqlite:///") else ""
        if not path:
            raise ValueError("expected sqlite:///relative/path or sqlite:////absolute/path")
        return cls(path)

    @classmethod
    def account_url(cls, url: str, account: str) -> str:
        """A sibling file: `state.db` -> `state.<account>.db` (`default` keeps `state.db`)."""
        path = cls.from_url(url).path
        if account == DEFAULT_ACCOUNT or path == ":memory:":
            return url
        base = Path(path)
        return "sqlite:///" + str(base.with_name(f"{base.stem}.{account}{base.suffix}"))

    def __repr__(self) -> str:
        return f"SQLiteStore({self.path!r})"

    # -- lifecycle --------------------------------------------------------------------------

    async def open(self) -> None:
        if self._conn is not None:
            raise StoreError(f"{self!r} is already open")
        try:
            if self.path != ":memory:":
                Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            conn = await aiosqlite.connect(self.path, isolation_level=None, timeout=BUSY_TIMEOUT_S)
        except (OSError, sqlite3.Error) as exc:
            raise StoreError(f"cannot open sqlite store at {self.path!r}: {exc}") from exc
        try:
            await self._configure(conn, self._temp_dir)
            await self._migrate(conn)
            if self._lease_path is not None:
                await conn.execute("ATTACH DATABASE ? AS shared", (self._lease_path,))
        except BaseException as exc:
            await conn.close()
            if isinstance(exc, sqlite3.Error):
                raise StoreError(f"cannot open sqlite store at {self.path!r}: {exc}") from exc
            raise
        self._conn = conn
        self._closing = False

    @staticmethod
    async def _configure(conn: aiosqlite.Connection, temp_dir: str | None) -> None:
        # busy_timeout first: switching to WAL needs a lock another process may hold.
        await conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
        # Temp files (a large sweep's staging tables: ~300 MB at 1M jobs) go beside the state,
        # not to TMPDIR, which a container keeps small. The setting is process-wide (SQLite has
        # no per-connection one); a directory that is gone later falls back to SQLite's default.
        if temp_dir is None:
            await conn.execute("PRAGMA temp_store = MEMORY")
        else:
            quoted = temp_dir.replace("'", "''")
            await conn.execute(f"PRAGMA temp_store_directory = '{quoted}'")
        # Persistent in the file; ":memory:" answers "memory" and that is fine.
        await conn.execute("PRAGMA journal_mode = WAL")
        await conn.execute("PRAGMA synchronous = FULL")  # why: see the module docstring
        await conn.execute("PRAGMA foreign_keys = ON")

    async def _migrate(self, conn: aiosqlite.Connection) -> None:
        known = len(self.migrations)
        while True:
            # IMMEDIATE: two processes opening one file at once must not both migrate.
            await conn.execute("BEGIN IMMEDIATE")
            try:
                await conn.execute(_SCHEMA_VERSION_TABLE)
                async with conn.execute(
                    "SELECT COALESCE(MAX(version), 0) FROM schema_version"
                ) as cur:
                    row = await cur.fetchone()
                version = int(row[0]) if row is not None else 0
                if version > known:
                    raise SchemaTooNew(version, known)
                if version == known:
                    await conn.commit()
                    return
                for statement in self.migrations[version]:
                    if isinstance(statement, str):
                        await conn.execute(statement)
                    else:
                        await statement(conn)
                await conn.execute(
                    "INSERT INTO schema_version (version, applied_at) VALUES (?, ?)",
                    (version + 1, time.time()),
                )
                await conn.commit()
            except BaseException:
                await conn.rollback()
                raise
            _log.info("store.migrated", path=self.path, schema_version=version + 1)

    async def close(self) -> None:
        if self._conn is None:
            return
        self._closing = True  # refuse new work; let shielded writes finish
        await self._writes_done()
        async with self._lock:
            conn, self._conn = self._conn, None
            if conn is not None:
                await conn.close()

    def share_leases_of(self, url: str) -> None:
        path = type(self).from_url(url).path
        same = path == self.path or (
            path != ":memory:" and Path(path).absolute() == Path(self.path).absolute()
        )
        self._lease_path = None if same else path

    @contextlib.contextmanager
    def replica_lock(self) -> Iterator[None]:
        """`flock` on `<path>.lock` (not the database: SQLite's own POSIX locks on it must not
        be disturbed), which the kernel drops when the process dies however it dies; the
        holder's pid is written in it for the refusal's message."""
        if self.path == ":memory:":
            yield
            return
        lock_path = Path(f"{self.path}.lock")
        lock_path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 64, 0).decode(errors="replace").strip()
                raise StoreLocked(
                    self.path, f"pid {holder}" if holder else "pid unknown"
                ) from None
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
            yield
        finally:
            os.close(fd)  # releases the lock

    async def ping(self) -> None:
        # No lock: SELECT 1 reads nothing another task's transaction could have half-written.
        conn = self._open_conn()
        try:
            async with conn.execute("SELECT 1") as cur:
                await cur.fetchone()
        except (sqlite3.Error, ValueError) as exc:
            raise StoreError(f"sqlite store at {self.path!r} does not answer: {exc}") from exc

    # -- plumbing ---------------------------------------------------------------------------

    def _open_conn(self) -> aiosqlite.Connection:
        if self._conn is None or self._closing:
            raise StoreError(f"{self!r} is not open")
        return self._conn

    async def _read(self, op: str, fn: Callable[[aiosqlite.Connection], Awaitable[_T]]) -> _T:
        conn = self._open_conn()
        async with self._lock:
            try:
                return await fn(conn)
            except sqlite3.Error as exc:
                raise StoreError(f"sqlite store {op} failed: {exc}") from exc

    async def _write(
        self,
        op: str,
        fn: Callable[[aiosqlite.Connection], Awaitable[_T]],
        *,
        fenced: bool = True,
    ) -> _T:
        """Run `fn` in one IMMEDIATE transaction that the caller's cancellation cannot tear: the
        caller sees CancelledError at once, the transaction still commits or rolls back whole.
        With a fence set (and `fenced`), the transaction first checks the lease's epoch."""
        conn = self._open_conn()
        fence = self._fence if fenced else None
        return await self._shielded(self._transaction(op, conn, fn, fence))

    async def _transaction(
        self,
        op: str,
        conn: aiosqlite.Connection,
        fn: Callable[[aiosqlite.Connection], Awaitable[_T]],
        fence: Fence | None = None,
    ) -> _T:
        async with self._lock:
            try:
                await conn.execute("BEGIN IMMEDIATE")
                if fence is not None:
                    table = "leases" if self._lease_path is None else "shared.leases"
                    async with conn.execute(
                        f"SELECT 1 FROM {table} WHERE account = ? AND owner = ? "  # noqa: S608
                        "AND epoch = ?",
                        (fence.account, fence.owner, fence.epoch),
                    ) as cur:
                        if await cur.fetchone() is None:
                            raise self._lease_lost(fence)
                result = await fn(conn)
                await conn.commit()
            except BaseException as exc:
                # Queued on the connection's thread before any await, so it runs even if this
                # task is cancelled while waiting for it.
                await conn.rollback()
                if isinstance(exc, sqlite3.Error):
                    raise StoreError(f"sqlite store {op} failed: {exc}") from exc
                raise
            return result

    # -- snapshot ---------------------------------------------------------------------------

    async def load_snapshot(self) -> dict[str, JobState]:
        async def fn(conn: aiosqlite.Connection) -> dict[str, JobState]:
            async with conn.execute(_JOB_SELECT) as cur:
                rows = await cur.fetchall()
            return {row[0]: _job(row) for row in rows}

        return await self._read("load_snapshot", fn)

    async def load_batches(self, batch_ids: Iterable[str]) -> dict[str, JobState]:
        ids = sorted(set(batch_ids))

        async def fn(conn: aiosqlite.Connection) -> dict[str, JobState]:
            rows = await _rows_in(conn, f"{_JOB_SELECT} WHERE batch_id IN", ids)
            return {row[0]: _job(row) for row in rows}

        return await self._read("load_batches", fn)

    async def status_counts(self) -> dict[str, int]:
        async def fn(conn: aiosqlite.Connection) -> dict[str, int]:
            async with conn.execute("SELECT status, COUNT(*) FROM jobs GROUP BY status") as cur:
                return {status: count for status, count in await cur.fetchall()}

        return await self._read("status_counts", fn)

    async def commit(
        self,
        changes: SnapshotChanges,
        events: Sequence[RoutedEvent],
        meta: Mapping[str, str] | None = None,
        now: float | None = None,
    ) -> int:
        return await self._commit(changes, events, meta, now, sweep=False)

    async def _commit(
        self,
        changes: SnapshotChanges,
        events: Sequence[RoutedEvent],
        meta: Mapping[str, str] | None,
        now: float | None,
        *,
        sweep: bool,
        suspects: Mapping[str, float] | None = None,
    ) -> int:
        at = time.time() if now is None else now
        suspect_rows = (
            None if suspects is None else [(i, since, i) for i, since in suspects.items()]
        )
        # Serialised before the transaction: nothing below depends on the database.
        job_rows = [_job_row(job) for job in changes.upserts]
        event_rows = [
            (r.event.id, r.event.type.value, r.event.batch_id, r.event.model_dump_json(), at)
            for r in events
        ]
        meta_rows = list((meta or {}).items())

        stuck_rows = [
            (r.event.job.id, r.event.id)
            for r in events
            if r.event.type is EventType.JOB_STUCK and r.event.job is not None
        ]
        first_baseline = sweep and self._first_baseline

        async def fn(conn: aiosqlite.Connection) -> int:
            if job_rows:
                await conn.executemany(_JOB_UPSERT, job_rows)
                await conn.executemany(
                    "DELETE FROM vanished WHERE job_id = ?", [(j.id,) for j in changes.upserts]
                )
            if changes.removals:
                removed = [(i,) for i in changes.removals]
                await conn.executemany(_TOMBSTONE_INSERT, [(at, i) for i in changes.removals])
                await conn.executemany("DELETE FROM jobs WHERE id = ?", removed)
                await conn.executemany("DELETE FROM stuck_marks WHERE job_id = ?", removed)
                await conn.executemany("DELETE FROM suspects WHERE job_id = ?", removed)
            if stuck_rows:
                await conn.executemany(
                    "INSERT INTO stuck_marks (job_id, event_id) VALUES (?, ?) "
                    "ON CONFLICT (job_id) DO UPDATE SET event_id = excluded.event_id",
                    stuck_rows,
                )
            if sweep:
                for statement in _SWEEP_TEMP:
                    await conn.execute(statement)
                if first_baseline:
                    await sqlite_first.apply(conn)
                await conn.execute(
                    "DELETE FROM vanished WHERE EXISTS "
                    "(SELECT 1 FROM temp.sweep_stage s WHERE s.id = vanished.job_id)"
                )
                await conn.execute(_STAGE_APPLY)
                await conn.execute("DELETE FROM temp.sweep_stage")
                await conn.execute("DELETE FROM temp.sweep_seen")
            added = 0
            if event_rows:
                async with conn.execute("SELECT COALESCE(MAX(seq), 0) FROM events") as cur:
                    row = await cur.fetchone()
                max_seq = row[0] if row is not None else 0
                await conn.executemany(_EVENT_INSERT, event_rows)
                outbox_rows = [
                    (notifier, at, at, r.event.id, max_seq)
                    for r in events
                    for notifier in r.notifiers
                ]
                if outbox_rows:
                    cur = await conn.executemany(_OUTBOX_INSERT, outbox_rows)
                    added = cur.rowcount
            if meta_rows:
                await conn.executemany(_META_UPSERT, meta_rows)
            if suspect_rows is not None:
                await conn.execute("DELETE FROM suspects")
                await conn.executemany(
                    "INSERT INTO suspects (job_id, since) SELECT ?, ? "
                    "WHERE EXISTS (SELECT 1 FROM jobs WHERE id = ?)",
                    suspect_rows,
                )
            return added

        added = await self._write("commit_sweep" if sweep else "commit", fn)
        if sweep:
            self._first_baseline = False  # `jobs_next` is `jobs` now, or gone
        return added

    async def get_meta(self, key: str) -> str | None:
        async def fn(conn: aiosqlite.Connection) -> str | None:
            async with conn.execute("SELECT value FROM meta WHERE key = ?", (key,)) as cur:
                row = await cur.fetchone()
            return None if row is None else str(row[0])

        return await self._read("get_meta", fn)

    # -- outbox -----------------------------------------------------------------------------

    async def claim_due(
        self, notifier: str, now: float, limit: int, lease_s: float, *, job_order: bool = False
    ) -> list[OutboxEntry]:
        if limit <= 0:
            return []

        async def fn(conn: aiosqlite.Connection) -> list[OutboxEntry]:
            sql = (
                f"SELECT {_ENTRY_COLUMNS}, o.event_id {_ENTRY_FROM} WHERE o.notifier = ? AND ("
                "(o.state = 'pending' AND o.next_attempt_at <= ?)"
                " OR (o.state = 'claimed' AND o.claimed_until <= ?)"
                f"){_JOB_HEAD if job_order else ''} {_OLDEST_FIRST} LIMIT ?"
            )
            async with conn.execute(sql, (notifier, now, now, limit)) as cur:
                rows = list(await cur.fetchall())
            fence = self._fence
            owner, epoch = (None, None) if fence is None else (fence.owner, fence.epoch)
            await conn.executemany(
                "UPDATE outbox SET state = 'claimed', claimed_until = ?, updated_at = ?, "
                "claim_owner = ?, claim_epoch = ? WHERE event_id = ? AND notifier = ?",
                [
                    (now + lease_s, now, owner, epoch, row[_ENTRY_WIDTH], notifier)
                    for row in rows
                ],
            )
            return [_entry(row[:_ENTRY_WIDTH], OutboxState.CLAIMED) for row in rows]

        return await self._write("claim_due", fn)

    async def mark_delivered(self, event_id: str, notifier: str) -> None:
        await self.mark_delivered_many(notifier, [event_id])

    async def mark_failed(
        self,
        event_id: str,
        notifier: str,
        error: str,
        next_attempt_at: float | None,
        now: float | None = None,
    ) -> None:
        at = time.time() if now is None else now
        await self.mark_failed_many(notifier, {event_id: next_attempt_at}, error, at)

    async def mark_failed_many(
        self, notifier: str, retry_at: Mapping[str, float | None], error: str, now: float
    ) -> None:
        text = _truncate(error)
        rows = [
            (
                OutboxState.PENDING.value if at is not None else OutboxState.DEAD.value,
                text, at, now, now, event_id, notifier,
            )
            for event_id, at in retry_at.items()
        ]

        async def fn(conn: aiosqlite.Connection) -> None:
            await conn.executemany(
                "UPDATE outbox SET state = ?, attempts = attempts + 1, last_error = ?, "
                "next_attempt_at = COALESCE(?, next_attempt_at), claimed_until = NULL, "
                "first_failed_at = COALESCE(first_failed_at, ?), updated_at = ? "
                "WHERE event_id = ? AND notifier = ? AND state IN ('pending', 'claimed')",
                rows,
            )

        if rows:
            await self._write("mark_failed", fn)

    async def mark_throttled(self, notifier: str, event_ids: Sequence[str], until: float) -> None:
        await self._defer("mark_throttled", _THROTTLE, notifier, event_ids, until)

    async def next_due_at(self, notifier: str, *, job_order: bool = False) -> float | None:
        sql = _NEXT_DUE_IN_JOB_ORDER if job_order else _NEXT_DUE

        async def fn(conn: aiosqlite.Connection) -> float | None:
            async with conn.execute(sql, (notifier,)) as cur:
                row = await cur.fetchone()
            return None if row is None or row[0] is None else float(row[0])

        return await self._read("next_due_at", fn)

    async def outbox_counts(self) -> dict[str, dict[OutboxState, int]]:
        async def fn(conn: aiosqlite.Connection) -> dict[str, dict[OutboxState, int]]:
            counts: dict[str, dict[OutboxState, int]] = {}
            # The rows still owed through the partial index `outbox_open` (its WHERE term,
            # verbatim, lets the planner use it); delivered ones from the counter (schema v5).
            async with conn.execute(
                "SELECT notifier, state, COUNT(*) FROM outbox WHERE state <> 'delivered' "
                "GROUP BY notifier, state "
                "UNION ALL SELECT notifier, 'delivered', n FROM outbox_delivered WHERE n > 0"
            ) as cur:
                for notifier, state, count in await cur.fetchall():
                    per_state = counts.setdefault(notifier, dict.fromkeys(OutboxState, 0))
                    per_state[OutboxState(state)] = count
            return counts

        return await self._read("outbox_counts", fn)

    async def list_outbox(
        self, state: OutboxState, notifier: str | None = None, limit: int = 1000
    ) -> list[OutboxEntry]:
        async def fn(conn: aiosqlite.Connection) -> list[OutboxEntry]:
            sql = (
                f"SELECT {_ENTRY_COLUMNS} {_ENTRY_FROM} "
                "WHERE o.state = ? AND (? IS NULL OR o.notifier = ?) "
                f"{_OLDEST_FIRST} LIMIT ?"
            )
            async with conn.execute(sql, (state.value, notifier, notifier, limit)) as cur:
                return [_entry(row) for row in await cur.fetchall()]

        return await self._read("list_outbox", fn)

    async def batch_summaries(self, batch_ids: Iterable[str]) -> dict[str, BatchSummary]:
        ids = sorted(set(batch_ids))

        async def fn(conn: aiosqlite.Connection) -> dict[str, BatchSummary]:
            found: list[Any] = []
            for start in range(0, len(ids), _IN_CHUNK):
                chunk = ids[start : start + _IN_CHUNK]
                sql = (
                    f"{rows.BATCH_SUMMARY_SELECT} WHERE batch_id IN "
                    f"({', '.join('?' for _ in chunk)}) {rows.BATCH_SUMMARY_GROUP}"
                )
                async with conn.execute(sql, chunk) as cur:
                    found.extend(await cur.fetchall())
            return rows.batch_summaries(found)

        return await self._read("batch_summaries", fn)

    async def recent_failures(self, since: float, limit: int) -> list[JobState]:
        async def fn(conn: aiosqlite.Connection) -> list[JobState]:
            sql = (
                f"{_JOB_SELECT} WHERE status IN (?, ?) AND changed_at >= ? "
                "ORDER BY changed_at DESC, id LIMIT ?"
            )
            async with conn.execute(sql, (*rows.FAILED_STATUSES, since, limit)) as cur:
                return [_job(row) for row in await cur.fetchall()]

        return await self._read("recent_failures", fn)

    async def notifier_activity(self) -> dict[str, NotifierActivity]:
        async def fn(conn: aiosqlite.Connection) -> dict[str, NotifierActivity]:
            async with conn.execute(
                "SELECT notifier, MAX(updated_at) FROM outbox WHERE state = 'delivered' "
                "GROUP BY notifier"
            ) as cur:
                delivered = await cur.fetchall()
            # SQLite fills the bare column from the row that holds the MAX.
            async with conn.execute(
                "SELECT notifier, last_error, MAX(updated_at) FROM outbox "
                "WHERE state <> 'delivered' AND last_error IS NOT NULL GROUP BY notifier"
            ) as cur:
                errors = await cur.fetchall()
            return rows.notifier_activity(delivered, errors)

        return await self._read("notifier_activity", fn)

    async def requeue_dead(
        self, now: float, event_id: str | None = None, notifier: str | None = None
    ) -> int:
        async def fn(conn: aiosqlite.Connection) -> int:
            cur = await conn.execute(
                "UPDATE outbox SET state = 'pending', attempts = 0, next_attempt_at = ?, "
                "claimed_until = NULL, first_failed_at = NULL, updated_at = ? "
                "WHERE state = 'dead' AND (? IS NULL OR event_id = ?) "
                "AND (? IS NULL OR notifier = ?)",
                (now, now, event_id, event_id, notifier, notifier),
            )
            return cur.rowcount

        return await self._write("requeue_dead", fn)

    async def drop_dead(self, event_id: str | None = None, notifier: str | None = None) -> int:
        # The event row stays: its id must keep blocking a replay from minting new rows.
        async def fn(conn: aiosqlite.Connection) -> int:
            cur = await conn.execute(
                "DELETE FROM outbox WHERE state = 'dead' AND (? IS NULL OR event_id = ?) "
                "AND (? IS NULL OR notifier = ?)",
                (event_id, event_id, notifier, notifier),
            )
            return cur.rowcount

        return await self._write("drop_dead", fn)

    async def prune(self, before: float) -> int:
        async def fn(conn: aiosqlite.Connection) -> int:
            await conn.execute(
                "DELETE FROM outbox WHERE state = 'delivered' AND updated_at < ?", (before,)
            )
            cur = await conn.execute(
                "DELETE FROM events WHERE created_at < ? AND NOT EXISTS "
                "(SELECT 1 FROM outbox o WHERE o.event_id = events.id)",
                (before,),
            )
            pruned = cur.rowcount
            # Notification bookkeeping of batches that are over (schema v2, v4): a thread
            # goes only when nothing more can be said in it.
            await conn.execute(_THREAD_PRUNE, (before,))
            await conn.execute("DELETE FROM notify_groups WHERE last_flush_at < ?", (before,))
            await conn.execute("DELETE FROM reply_posts WHERE started_at < ?", (before,))
            await conn.execute("DELETE FROM silences WHERE ends_at < ?", (before,))
            return pruned

        return await self._write("prune", fn)

    # -- notifications (schema v2) ----------------------------------------------------------

    async def defer(self, notifier: str, event_ids: Sequence[str], until: float) -> None:
        await self._defer("defer", _DEFER, notifier, event_ids, until)

    async def _defer(
        self, op: str, sql: str, notifier: str, event_ids: Sequence[str], until: float
    ) -> None:
        now = time.time()
        rows = [(until, now, event_id, notifier) for event_id in event_ids]

        async def fn(conn: aiosqlite.Connection) -> None:
            await conn.executemany(sql, rows)

        if event_ids:
            await self._write(op, fn)

    async def get_thread(self, notifier: str, batch_id: str) -> ThreadRef | None:
        async def fn(conn: aiosqlite.Connection) -> ThreadRef | None:
            return await _saved_thread(conn, notifier, batch_id)

        return await self._read("get_thread", fn)

    async def save_thread(self, notifier: str, batch_id: str, thread: ThreadRef) -> ThreadRef:
        async def fn(conn: aiosqlite.Connection) -> ThreadRef:
            await conn.execute(
                "INSERT INTO threads (notifier, batch_id, channel, ts, created_at) "
                "VALUES (?, ?, ?, ?, ?) ON CONFLICT (notifier, batch_id) DO UPDATE SET "
                "channel = excluded.channel, ts = excluded.ts WHERE threads.ts IS NULL",
                (notifier, batch_id, thread.channel, thread.ts, time.time()),
            )
            saved = await _saved_thread(conn, notifier, batch_id)
            assert saved is not None
            return saved

        return await self._write("save_thread", fn)

    async def start_thread_post(self, notifier: str, batch_id: str, at: float) -> float | None:
        async def fn(conn: aiosqlite.Connection) -> float | None:
            async with conn.execute(
                "SELECT ts, created_at FROM threads WHERE notifier = ? AND batch_id = ?",
                (notifier, batch_id),
            ) as cur:
                row = await cur.fetchone()
            if row is not None:
                return None if row[0] is not None else float(row[1])
            await conn.execute(
                "INSERT INTO threads (notifier, batch_id, created_at) VALUES (?, ?, ?)",
                (notifier, batch_id, at),
            )
            return None

        return await self._write("start_thread_post", fn)

    async def start_reply_post(
        self, notifier: str, batch_id: str, reply_key: str, at: float
    ) -> None:
        async def fn(conn: aiosqlite.Connection) -> None:
            await conn.execute(
                "INSERT INTO reply_posts (notifier, batch_id, reply_key, started_at) "
                "VALUES (?, ?, ?, ?) ON CONFLICT (notifier, batch_id, reply_key) DO NOTHING",
                (notifier, batch_id, reply_key, at),
            )

        await self._write("start_reply_post", fn)

    async def reply_posts_in_doubt(self, notifier: str, batch_id: str) -> float | None:
        async def fn(conn: aiosqlite.Connection) -> float | None:
            async with conn.execute(
                "SELECT MIN(started_at) FROM reply_posts WHERE notifier = ? AND batch_id = ?",
                (notifier, batch_id),
            ) as cur:
                row = await cur.fetchone()
            return None if row is None or row[0] is None else float(row[0])

        return await self._read("reply_posts_in_doubt", fn)

    async def finish_reply_posts(
        self,
        notifier: str,
        batch_id: str,
        reply_keys: Sequence[str] | None,
        event_ids: Sequence[str],
    ) -> None:
        async def fn(conn: aiosqlite.Connection) -> None:
            await _mark_delivered(conn, notifier, event_ids)
            if reply_keys is None:
                await conn.execute(
                    "DELETE FROM reply_posts WHERE notifier = ? AND batch_id = ?",
                    (notifier, batch_id),
                )
            else:
                await conn.executemany(
                    "DELETE FROM reply_posts WHERE notifier = ? AND batch_id = ? "
                    "AND reply_key = ?",
                    [(notifier, batch_id, key) for key in reply_keys],
                )

        await self._write("finish_reply_posts", fn)

    async def set_pending_edit(
        self, notifier: str, batch_id: str, content: str, at: float
    ) -> None:
        async def fn(conn: aiosqlite.Connection) -> None:
            await conn.execute(
                "UPDATE threads SET pending_edit = ?, edit_attempts = edit_attempts + 1, "
                "edit_failing_since = COALESCE(edit_failing_since, ?) "
                "WHERE notifier = ? AND batch_id = ? AND ts IS NOT NULL",
                (content, at, notifier, batch_id),
            )

        await self._write("set_pending_edit", fn)

    async def pending_edits(self, notifier: str) -> list[PendingEdit]:
        async def fn(conn: aiosqlite.Connection) -> list[PendingEdit]:
            async with conn.execute(
                "SELECT batch_id, channel, ts, pending_edit, edit_attempts, edit_failing_since "
                "FROM threads WHERE notifier = ? AND pending_edit IS NOT NULL "
                "ORDER BY edit_failing_since, batch_id",
                (notifier,),
            ) as cur:
                rows = await cur.fetchall()
            return [
                PendingEdit(str(b), ThreadRef(str(c), str(t)), str(p), int(n), float(since))
                for b, c, t, p, n, since in rows
            ]

        return await self._read("pending_edits", fn)

    async def clear_pending_edit(self, notifier: str, batch_id: str) -> None:
        async def fn(conn: aiosqlite.Connection) -> None:
            await conn.execute(
                "UPDATE threads SET pending_edit = NULL, edit_attempts = 0, "
                "edit_failing_since = NULL WHERE notifier = ? AND batch_id = ?",
                (notifier, batch_id),
            )

        await self._write("clear_pending_edit", fn)

    async def group_flushed_at(self, notifier: str, group_key: str) -> float | None:
        async def fn(conn: aiosqlite.Connection) -> float | None:
            async with conn.execute(
                "SELECT last_flush_at FROM notify_groups WHERE notifier = ? AND group_key = ?",
                (notifier, group_key),
            ) as cur:
                row = await cur.fetchone()
            return None if row is None else float(row[0])

        return await self._read("group_flushed_at", fn)

    async def set_group_flushed(self, notifier: str, group_key: str, at: float) -> None:
        async def fn(conn: aiosqlite.Connection) -> None:
            await conn.execute(
                "INSERT INTO notify_groups (notifier, group_key, last_flush_at) VALUES (?, ?, ?) "
                "ON CONFLICT (notifier, group_key) DO UPDATE SET "
                "last_flush_at = excluded.last_flush_at",
                (notifier, group_key, at),
            )

        await self._write("set_group_flushed", fn)

    async def release_claims(self, notifier: str, now: float) -> int:
        async def fn(conn: aiosqlite.Connection) -> int:
            cur = await conn.execute(
                "UPDATE outbox SET state = 'pending', next_attempt_at = ?, claimed_until = NULL, "
                "updated_at = ? WHERE notifier = ? AND state = 'claimed'",
                (now, now, notifier),
            )
            return cur.rowcount

        return await self._write("release_claims", fn)

    async def mark_delivered_many(self, notifier: str, event_ids: Sequence[str]) -> None:
        async def fn(conn: aiosqlite.Connection) -> None:
            await _mark_delivered(conn, notifier, event_ids)

        if event_ids:
            await self._write("mark_delivered", fn)

    # -- active set, streaming sweeps, stuck marks (schema v3) --------------------------------

    async def active_batch_ids(self) -> set[str]:
        async def fn(conn: aiosqlite.Connection) -> set[str]:
            async with conn.execute(ACTIVE_BATCHES_SQL) as cur:
                return {row[0] for row in await cur.fetchall()}

        return await self._read("active_batch_ids", fn)

    async def load_jobs(self, job_ids: Sequence[str]) -> dict[str, JobState]:
        ids = list(dict.fromkeys(job_ids))

        async def fn(conn: aiosqlite.Connection) -> dict[str, JobState]:
            rows = await _rows_in(conn, f"{_JOB_SELECT} WHERE id IN", ids)
            return {row[0]: _job(row) for row in rows}

        return await self._read("load_jobs", fn)

    async def load_observed(self, job_ids: Sequence[str]) -> dict[str, Observed]:
        ids = list(dict.fromkeys(job_ids))

        async def fn(conn: aiosqlite.Connection) -> dict[str, Observed]:
            rows = await _rows_in(conn, _OBSERVED_SELECT, ids)
            return {row[0]: row[1:] for row in rows}

        return await self._read("load_observed", fn)

    async def sweep_begin(self) -> int:
        async def fn(conn: aiosqlite.Connection) -> int:
            for statement in _SWEEP_TEMP:
                await conn.execute(statement)
            await conn.execute("DELETE FROM temp.sweep_stage")
            await conn.execute("DELETE FROM temp.sweep_seen")
            self._first_baseline = await sqlite_first.begin(conn)
            self._sweep_generation += 1
            return self._sweep_generation

        return await self._read("sweep_begin", fn)

    def _check_generation(self, generation: int) -> None:
        if generation != self._sweep_generation:
            raise StoreError(f"sweep {generation} was superseded by {self._sweep_generation}")

    async def sweep_fingerprints(self) -> StoredFingerprints:
        async def fn(conn: aiosqlite.Connection) -> StoredFingerprints:
            # One text of 16 hex digits a fingerprint: no row or object per job (a million
            # 1-tuples would cost ~60 MB at the peak, and ~15 ms more per 100,000).
            rows = list(await conn.execute_fetchall(_FINGERPRINTS))
            packed, without, marks = rows[0]
            known = array("q", bytes.fromhex(packed or ""))
            if sys.byteorder == "little":
                known.byteswap()
            return StoredFingerprints(known, without, marks)

        return await self._read("sweep_fingerprints", fn)

    async def sweep_stage(
        self,
        generation: int,
        seen: Sequence[tuple[str, str]],
        staged: Sequence[tuple[JobRow, int]],
    ) -> None:
        self._check_generation(generation)
        first = self._first_baseline and all(base == 0 for _, base in staged)
        rows = [row for row, _ in staged] if first else [(*row, base) for row, base in staged]
        # In id order: both tables are keyed by id, and a listing is newest first, so each
        # page's ids descend; inserting them ascending spares SQLite's B-trees a split at nearly
        # every row (100,000 jobs: ~0.15 s). The sort is stable: the first sighting of an id
        # listed twice on one page is still staged first, and its first status seen first.
        rows.sort(key=_BY_ID)
        seen = sorted(seen, key=_BY_ID)

        async def fn(conn: aiosqlite.Connection) -> None:
            if self._first_baseline and not first:  # a job was read written: go on in TEMP
                await sqlite_first.to_temp(conn)
                self._first_baseline = False
            # TEMP tables, or `jobs_next`, which is nobody's until the commit: no fsync.
            await conn.execute("PRAGMA synchronous = OFF")
            try:
                await conn.execute("BEGIN")
                try:
                    if first:
                        if not await sqlite_first.stage(conn, seen, rows):
                            await conn.executemany(_SEEN_INSERT, seen)
                    else:
                        await conn.executemany(_SEEN_INSERT, seen)
                        await conn.executemany(_STAGE_INSERT, rows)
                    await conn.commit()
                except BaseException:
                    await conn.rollback()
                    raise
            finally:
                await conn.execute("PRAGMA synchronous = FULL")  # why: the module docstring

        await self._read("sweep_stage", fn)

    async def sweep_unseen(
        self, generation: int, seen_before: float, unmatched: Collection[int] | None = None
    ) -> dict[str, JobState]:
        self._check_generation(generation)

        async def fn(conn: aiosqlite.Connection) -> dict[str, JobState]:
            among = ""
            if unmatched is not None:
                await conn.execute(_UNMATCHED_TEMP)
                await conn.execute("DELETE FROM temp.sweep_unmatched")
                await conn.executemany(
                    "INSERT OR IGNORE INTO temp.sweep_unmatched (fp) VALUES (?)",
                    [(fp,) for fp in unmatched],
                )
                among = (
                    " AND (fingerprint IS NULL OR fingerprint IN "
                    "(SELECT fp FROM temp.sweep_unmatched))"
                )
            if self._first_baseline:
                among += sqlite_first.NOT_STAGED
            sql = (
                f"{_JOB_SELECT} WHERE first_seen_at < ?{among} AND NOT EXISTS "  # noqa: S608
                "(SELECT 1 FROM temp.sweep_seen s WHERE s.id = jobs.id)"
            )
            async with conn.execute(sql, (seen_before,)) as cur:
                return {row[0]: _job(row) for row in await cur.fetchall()}

        return await self._read("sweep_unseen", fn)

    async def sweep_conflicts(self, generation: int) -> set[str]:
        self._check_generation(generation)

        async def fn(conn: aiosqlite.Connection) -> set[str]:
            sql = sqlite_first.CONFLICTS if self._first_baseline else _CONFLICTS
            async with conn.execute(sql) as cur:
                return {row[0] for row in await cur.fetchall()}

        return await self._read("sweep_conflicts", fn)

    async def sweep_unstage(self, generation: int, job_ids: Sequence[str]) -> None:
        self._check_generation(generation)

        async def fn(conn: aiosqlite.Connection) -> None:
            if self._first_baseline:
                await sqlite_first.unstage(conn, job_ids)
            else:
                await conn.executemany(_UNSTAGE, [(i,) for i in job_ids])

        if job_ids:
            await self._read("sweep_unstage", fn)

    async def sweep_stale_ids(self) -> set[str]:
        async def fn(conn: aiosqlite.Connection) -> set[str]:
            sql = sqlite_first.STALE_IDS if self._first_baseline else _STALE_IDS
            async with conn.execute(sql) as cur:
                return {row[0] for row in await cur.fetchall()}

        return await self._read("sweep_stale_ids", fn)

    async def commit_sweep(
        self,
        changes: SnapshotChanges,
        events: Sequence[RoutedEvent],
        meta: Mapping[str, str] | None = None,
        now: float | None = None,
        suspects: Mapping[str, float] | None = None,
    ) -> int:
        return await self._commit(changes, events, meta, now, sweep=True, suspects=suspects)

    async def stuck_marks(self, job_ids: Sequence[str]) -> dict[str, str]:
        ids = list(dict.fromkeys(job_ids))

        async def fn(conn: aiosqlite.Connection) -> dict[str, str]:
            sql = "SELECT job_id, event_id FROM stuck_marks WHERE job_id IN"
            return {row[0]: row[1] for row in await _rows_in(conn, sql, ids)}

        return await self._read("stuck_marks", fn)

    async def template_version_counts(
        self, template_ids: Sequence[str], since: float
    ) -> dict[tuple[str, str], tuple[int, int, float]]:
        ids = list(dict.fromkeys(template_ids))

        async def fn(conn: aiosqlite.Connection) -> dict[tuple[str, str], tuple[int, int, float]]:
            out = {}
            for start in range(0, len(ids), _IN_CHUNK):
                chunk = ids[start : start + _IN_CHUNK]
                sql = (
                    "SELECT template_file_id, template_file_version_id, COUNT(*), "  # noqa: S608
                    "SUM(status IN (?, ?)), MIN(first_seen_at) FROM jobs "
                    f"WHERE template_file_id IN ({', '.join('?' for _ in chunk)}) "
                    f"AND changed_at >= ? AND status IN ({_TERMINAL_SQL}) "
                    "AND template_file_version_id IS NOT NULL "
                    "GROUP BY template_file_id, template_file_version_id"
                )
                args = (*rows.FAILED_STATUSES, *chunk, since)
                for row in await conn.execute_fetchall(sql, args):
                    out[(row[0], row[1])] = (row[2], row[3], row[4])
            return out

        return await self._read("template_version_counts", fn)

    # -- vanish bookkeeping (schema v4) --------------------------------------------------------

    async def vanished_seqs(self, job_ids: Sequence[str]) -> dict[str, int]:
        ids = list(dict.fromkeys(job_ids))

        async def fn(conn: aiosqlite.Connection) -> dict[str, int]:
            sql = "SELECT job_id, seq FROM vanished WHERE job_id IN"
            return {row[0]: int(row[1]) for row in await _rows_in(conn, sql, ids)}

        if not ids:
            return {}
        return await self._read("vanished_seqs", fn)

    async def load_suspects(self) -> dict[str, float]:
        async def fn(conn: aiosqlite.Connection) -> dict[str, float]:
            async with conn.execute("SELECT job_id, since FROM suspects") as cur:
                return {row[0]: float(row[1]) for row in await cur.fetchall()}

        return await self._read("load_suspects", fn)

    # -- leases (schema v8) ---------------------------------------------------------------------

    async def heartbeat(self, replica: str, ttl_s: float) -> int:
        now = time.time()

        async def fn(conn: aiosqlite.Connection) -> int:
            await conn.execute(
                "INSERT INTO replicas (id, expires_at) VALUES (?, ?) "
                "ON CONFLICT (id) DO UPDATE SET expires_at = excluded.expires_at",
                (replica, now + ttl_s),
            )
            # A replica that died without leaving is forgotten an hour after its last beat.
            await conn.execute("DELETE FROM replicas WHERE expires_at < ?", (now - 3600,))
            async with conn.execute(
                "SELECT COUNT(*) FROM replicas WHERE expires_at > ?", (now,)
            ) as cur:
                row = await cur.fetchone()
            return int(row[0]) if row is not None else 0

        return await self._write("heartbeat", fn, fenced=False)

    async def leave(self, replica: str) -> None:
        async def fn(conn: aiosqlite.Connection) -> None:
            await conn.execute("DELETE FROM replicas WHERE id = ?", (replica,))

        await self._write("leave", fn, fenced=False)

    async def acquire_lease(self, account: str, owner: str, ttl_s: float) -> Fence | None:
        now = time.time()

        async def fn(conn: aiosqlite.Connection) -> Fence | None:
            # Any acquisition takes the next epoch; a live lease is left alone.
            async with conn.execute(
                "INSERT INTO leases (account, owner, epoch, expires_at) VALUES (?, ?, 1, ?) "
                "ON CONFLICT (account) DO UPDATE SET owner = excluded.owner, "
                "epoch = leases.epoch + 1, expires_at = excluded.expires_at "
                "WHERE leases.owner IS NULL OR leases.expires_at <= ? RETURNING epoch",
                (account, owner, now + ttl_s, now),
            ) as cur:
                row = await cur.fetchone()
            return None if row is None else Fence(account, owner, int(row[0]))

        return await self._write("acquire_lease", fn, fenced=False)

    async def renew_lease(self, fence: Fence, ttl_s: float) -> bool:
        now = time.time()

        async def fn(conn: aiosqlite.Connection) -> bool:
            cur = await conn.execute(
                "UPDATE leases SET expires_at = ? WHERE account = ? AND owner = ? AND epoch = ?",
                (now + ttl_s, fence.account, fence.owner, fence.epoch),
            )
            return cur.rowcount == 1

        return await self._write("renew_lease", fn, fenced=False)

    async def release_lease(self, fence: Fence) -> None:
        now = time.time()

        async def fn(conn: aiosqlite.Connection) -> None:
            await conn.execute(
                "UPDATE leases SET owner = NULL, expires_at = ? "
                "WHERE account = ? AND owner = ? AND epoch = ?",
                (now, fence.account, fence.owner, fence.epoch),
            )

        await self._write("release_lease", fn, fenced=False)

    async def leases(self) -> dict[str, Lease]:
        now = time.time()

        async def fn(conn: aiosqlite.Connection) -> dict[str, Lease]:
            async with conn.execute(
                "SELECT account, owner, epoch, owner IS NOT NULL AND expires_at > ? "
                "FROM leases ORDER BY account",
                (now,),
            ) as cur:
                rows = await cur.fetchall()
            return {r[0]: Lease(r[0], r[1], int(r[2]), bool(r[3])) for r in rows}

        return await self._read("leases", fn)
    # -- whole tables, for `state migrate` ------------------------------------------------------

    async def dump_tables(self, chunk_rows: int) -> AsyncGenerator[TableChunk, None]:
        conn = self._open_conn()
        async with self._lock:
            try:
                await conn.execute("BEGIN")  # one read transaction: a consistent view
                try:
                    for table in COPIED_TABLES:
                        columns = await _columns(conn, table)
                        sql = f"SELECT {', '.join(columns)} FROM {table}"  # noqa: S608
                        async with conn.execute(sql) as cur:
                            while batch := await cur.fetchmany(chunk_rows):
                                yield TableChunk(table, columns, [tuple(r) for r in batch])
                finally:
                    await conn.rollback()
            except sqlite3.Error as exc:
                raise StoreError(f"sqlite store dump_tables failed: {exc}") from exc

    async def load_tables(
        self, chunks: AsyncIterable[TableChunk], *, replace: bool
    ) -> dict[str, int]:
        async def fn(conn: aiosqlite.Connection) -> dict[str, int]:
            if replace:
                for table in reversed(COPIED_TABLES):  # the outbox before its events
                    await conn.execute(f"DELETE FROM {table}")  # noqa: S608 (constant names)
            else:
                held = []
                for table in COPIED_TABLES:
                    sql = f"SELECT EXISTS (SELECT 1 FROM {table})"  # noqa: S608
                    async with conn.execute(sql) as cur:
                        row = await cur.fetchone()
                    if row is not None and row[0]:
                        held.append(table)
                if held:
                    raise StoreNotEmpty(repr(self), held)
            copied = dict.fromkeys(COPIED_TABLES, 0)
            async for chunk in chunks:
                table, columns = copy_target(chunk)
                marks = ", ".join("?" for _ in chunk.columns)
                sql = f"INSERT INTO {table} ({columns}) VALUES ({marks})"  # noqa: S608 (checked)
                await conn.executemany(sql, chunk.rows)
                copied[table] += len(chunk.rows)
            # An explicit `seq` moves AUTOINCREMENT's counter past it by itself.
            return copied

        return await self._write("load_tables", fn)

    # -- silences and the event history (schema v10) ------------------------------------------

    async def add_silence(self, silence: Silence) -> None:
        async def fn(conn: aiosqlite.Connection) -> None:
            await conn.execute(
                f"INSERT INTO silences ({', '.join(SILENCE_COLUMNS)}) "  # noqa: S608 (constants)
                f"VALUES ({', '.join('?' for _ in SILENCE_COLUMNS)})",
                _silence_row(silence),
            )

        # An operator's write: any replica takes it, lease or not.
        await self._write("add_silence", fn, fenced=False)

    async def list_silences(self, ended_after: float | None = None) -> list[Silence]:
        async def fn(conn: aiosqlite.Connection) -> list[Silence]:
            async with conn.execute(
                f"SELECT {', '.join(SILENCE_COLUMNS)} FROM silences "  # noqa: S608 (constants)
                "WHERE ? IS NULL OR ends_at > ? ORDER BY created_at DESC, id",
                (ended_after, ended_after),
            ) as cur:
                return [_silence(row) for row in await cur.fetchall()]

        return await self._read("list_silences", fn)

    async def expire_silence(self, silence_id: str, now: float) -> Silence | None:
        async def fn(conn: aiosqlite.Connection) -> Silence | None:
            await conn.execute(
                "UPDATE silences SET ends_at = MAX(?, starts_at) WHERE id = ? AND ends_at > ?",
                (now, silence_id, now),
            )
            async with conn.execute(
                f"SELECT {', '.join(SILENCE_COLUMNS)} FROM silences "  # noqa: S608 (constants)
                "WHERE id = ?",
                (silence_id,),
            ) as cur:
                row = await cur.fetchone()
            return None if row is None else _silence(row)

        return await self._write("expire_silence", fn, fenced=False)

    async def mark_silenced(self, notifier: str, silenced: Mapping[str, str]) -> None:
        now = time.time()

        async def fn(conn: aiosqlite.Connection) -> None:
            await conn.executemany(
                "UPDATE outbox SET state = 'delivered', silence_id = ?, claimed_until = NULL, "
                "updated_at = ? WHERE event_id = ? AND notifier = ? "
                "AND state IN ('pending', 'claimed')",
                [(sid, now, event_id, notifier) for event_id, sid in silenced.items()],
            )

        if silenced:
            await self._write("mark_silenced", fn)

    async def list_events(self, query: EventQuery) -> list[EventRecord]:
        where, args = event_filters(
            query, lambda n: "?", lambda path: f"json_extract(payload, '$.{path}')"
        )

        async def fn(conn: aiosqlite.Connection) -> list[EventRecord]:
            async with conn.execute(
                f"SELECT seq, id, payload, created_at FROM events WHERE {where} "  # noqa: S608
                "ORDER BY seq DESC LIMIT ?",
                (*args, query.limit),
            ) as cur:
                events = await cur.fetchall()
            sql = f"SELECT {DELIVERY_COLUMNS} FROM outbox WHERE event_id IN"  # noqa: S608
            found = _deliveries(await _rows_in(conn, sql, [row[1] for row in events]))
            return [
                EventRecord(
                    Event.model_validate_json(payload), seq, created_at,
                    tuple(found.get(event_id, ())),
                )
                for seq, event_id, payload, created_at in events
            ]

        return await self._read("list_events", fn)


async def _columns(conn: aiosqlite.Connection, table: str) -> tuple[str, ...]:
    async with conn.execute(f"PRAGMA table_info({table})") as cur:
        return tuple(str(row[1]) for row in await cur.fetchall())
