"""The PostgreSQL state store, reached through an asyncpg pool: for a database operators
already run, and shared by several processes.

Reads take any pooled connection and no lock: PostgreSQL's MVCC never shows them another
transaction's uncommitted rows. Writes run as one transaction each, inside a task the caller's
cancellation cannot reach (`asyncio.shield`), so a commit lands whole or rolls back whole;
`close()` waits for them. Claims lock the rows they take (`FOR UPDATE SKIP LOCKED`), so two
claimers never hand out one row twice. Bulk writes are one statement per table, the rows
travelling as arrays (`unnest`, which keeps `ON CONFLICT`); a large snapshot write (a
100,000-job baseline) is COPYed into a table of that transaction first: a third faster end
to end (`bench/store_baseline.py`: 1.8 s against 2.6 s, medians of three), and used only
for large writes because creating a table each time churns the catalog.

The schema mirrors SQLite's, version for version (`MIGRATIONS[i]` is SQLite's step i in this
dialect), so "schema v5" means the same on both backends. Starters that open one database at
once take a transaction-scoped advisory lock per schema, so exactly one applies each step.

A streaming sweep stages into UNLOGGED tables keyed by the sweep's generation (a sequence):
any pooled connection sees them, no fsync is paid, and each process only ever reads its own
generation. A generation is deleted by the next `sweep_begin` or by `close`; one a crashed
process left behind goes after `_STAGE_MAX_AGE_S`.

Connection loss: an operation that could not get a connection, and a read whose connection
broke, are tried again with backoff (`RETRY_DELAYS_S`, each retry logged). A write whose
connection broke inside its transaction is not: PostgreSQL rolled it back, so it committed
nothing, and it raises `StoreError`; its caller (the next poll, the next delivery round) tries
again, and a replayed commit mints nothing twice (event ids are unique). A break during COMMIT
itself leaves the outcome unknown to the client; the replay rule covers that case too.

Leases (schema v8): the lease and replica tables are the store's own, and expiry is judged by
the server's clock. A fenced write locks its account's lease row `FOR KEY SHARE` inside its
transaction after checking the epoch; an acquisition locks the row `FOR UPDATE`, which waits
for the writes in flight (and every later write waits for it, then sees the new epoch), while
a renewal, a plain UPDATE of no key column, never waits for the holder's own writes: under a
steady stream of writes a share lock would starve it until the lease ran out. `lease_schema`
names the schema of the lease table the check reads (default: this store's), for handles whose
own tables live in another schema than the leases all accounts share. A holder paused inside
a transaction (SIGSTOP, a frozen VM) keeps that lock: the server ends a session idle in a
transaction after `IDLE_IN_TRANSACTION_S`, so a takeover waits at most that long.

URL: `postgresql://user:password@host:port/database?sslmode=...&schema=...`. Query parameters
are libpq's as asyncpg reads them (`sslmode`, `sslrootcert`, `application_name`, ...), plus two
read here: libpq's `connect_timeout` (seconds), which asyncpg lacks, and `schema`, the schema
the tables live in (created on open when missing; default: the server's `search_path`,
normally `public`).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import socket
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
    Mapping,
    Sequence,
)
from typing import Any, ClassVar, NamedTuple, Self, TypeAlias, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import asyncpg
import structlog
from asyncpg.pool import PoolConnectionProxy
from asyncpg.transaction import Transaction

from monitor.config import url_without_password
from monitor.errors import SchemaTooNew, StoreError, StoreNotEmpty
from monitor.model import (
    DEFAULT_ACCOUNT,
    TERMINAL_STATUSES,
    Event,
    EventType,
    JobState,
    Observed,
    SnapshotChanges,
)
from monitor.store import rows
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
    JOB_COLUMNS,
    OBSERVED_COLUMNS,
    ROW_COLUMNS,
    SILENCE_COLUMNS,
    copy_target,
    deliveries_by_event,
    entry_from_row,
    event_filters,
    fingerprints_of,
    job_from_row,
    job_order_sql,
    job_to_row,
    silence_from_row,
    silence_to_row,
    truncate_error,
)
from monitor.store.shield import ShieldedWrites

_T = TypeVar("_T")
_Conn: TypeAlias = "PoolConnectionProxy[asyncpg.Record]"  # what the pool hands out
_log = structlog.get_logger(__name__)

SCHEMES = ("postgresql", "postgres")
POOL_MIN_SIZE = 1
POOL_MAX_SIZE = 4  # the poller, the dispatcher, the web handlers: a few at once at most
CONNECT_TIMEOUT_S = 10.0  # default of the URL's `connect_timeout`
# Every statement's limit: a server that stops answering without closing the connection (a
# network partition) fails the operation instead of hanging it. A 100,000-job baseline takes
# about 2 s; a million-job one about 20 s.
COMMAND_TIMEOUT_S = 60.0
CLOSE_TIMEOUT_S = 10.0
# A session idle inside a transaction this long is ended by the server (its locks go): a paused
# holder must not keep a lease row locked past a takeover. No write of ours idles that long.
IDLE_IN_TRANSACTION_S = 10.0
# An acquisition or renewal waits this long at most for a lock on the lease row, so a keeper's
# round never hangs behind a stuck writer; it tries again next round.
LEASE_LOCK_TIMEOUT_S = 2.0
# Waits before each retry of an operation that lost its connection: about 7 s in all, enough
# for a server restart or a failover of a managed database, short enough for a poll cycle.
RETRY_DELAYS_S = (0.1, 0.4, 1.5, 5.0)
_STAGE_MAX_AGE_S = 86_400.0  # no sweep runs a day: older staging was left by a dead process

#: A schema step: SQL statements, or a function of the connection for what SQL cannot say.
Migration = tuple[str | Callable[[_Conn], Awaitable[None]], ...]
#: Rows a migration that computes in Python reads (and writes) at once.
_MIGRATE_CHUNK = 10_000


async def _fingerprint_jobs(conn: _Conn) -> None:
    """v12: the fingerprint of every stored job (`rows.fingerprint`; every later write
    computes its own), a chunk of rows at a time in id order."""
    sql = (
        f"SELECT id, {', '.join(OBSERVED_COLUMNS)} FROM jobs "  # noqa: S608 (constant names)
        "WHERE id > $1 ORDER BY id LIMIT $2"
    )
    after = ""
    while rows := await conn.fetch(sql, after, _MIGRATE_CHUNK):
        found = fingerprints_of(tuple(row) for row in rows)
        await conn.execute(
            "UPDATE jobs SET fingerprint = f.fp FROM unnest($1::bigint[], $2::text[]) "
            "AS f (fp, id) WHERE jobs.id = f.id",
            [fp for fp, _ in found],
            [job_id for _, job_id in found],
        )
        after = rows[-1][0]

# The delivered counter (schema v5): one trigger function keeps `outbox_delivered` in step with
# the rows that enter or leave the delivered state.
_DELIVERED_COUNTER = """CREATE FUNCTION outbox_delivered_count() RETURNS trigger
    LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
BEGIN
    IF TG_OP <> 'DELETE' AND NEW.state = 'delivered'
       AND (TG_OP = 'INSERT' OR OLD.state <> 'delivered') THEN
        INSERT INTO outbox_delivered (notifier, n) VALUES (NEW.notifier, 1)
        ON CONFLICT (notifier) DO UPDATE SET n = outbox_delivered.n + 1;
    END IF;
    IF TG_OP <> 'INSERT' AND OLD.state = 'delivered' THEN
        IF TG_OP = 'DELETE' OR NEW.state <> 'delivered' THEN
            UPDATE outbox_delivered SET n = n - 1 WHERE notifier = OLD.notifier;
        END IF;
    END IF;
    RETURN NULL;
END
$$"""

# Ordered schema steps; step i takes the schema from version i to version i + 1, in one
# transaction. Never edit a released step: append a new one (and SQLite's twin).
# The job an event is about, as the index `events_job_seq` spells it (NULL for batch events).
_EVENT_JOB_ID = "(payload::jsonb -> 'job' ->> 'id')"
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
            seq              BIGINT NOT NULL,
            first_seen_at    DOUBLE PRECISION NOT NULL,
            changed_at       DOUBLE PRECISION NOT NULL
        )""",
        "CREATE INDEX jobs_batch_id ON jobs (batch_id)",
        # seq orders events by insertion within one commit and across commits of one writer.
        """CREATE TABLE events (
            seq        BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            id         TEXT NOT NULL UNIQUE,
            type       TEXT NOT NULL,
            batch_id   TEXT,
            payload    TEXT NOT NULL,
            created_at DOUBLE PRECISION NOT NULL
        )""",
        "CREATE INDEX events_batch_id ON events (batch_id)",
        """CREATE TABLE outbox (
            event_id        TEXT NOT NULL REFERENCES events (id),
            notifier        TEXT NOT NULL CHECK (notifier <> ''),
            state           TEXT NOT NULL
                            CHECK (state IN ('pending', 'claimed', 'delivered', 'dead')),
            attempts        INTEGER NOT NULL DEFAULT 0,
            next_attempt_at DOUBLE PRECISION NOT NULL,
            claimed_until   DOUBLE PRECISION,
            last_error      TEXT,
            updated_at      DOUBLE PRECISION NOT NULL,
            PRIMARY KEY (event_id, notifier)
        )""",
        "CREATE INDEX outbox_due ON outbox (notifier, state, next_attempt_at)",
        "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
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
            created_at DOUBLE PRECISION NOT NULL,
            PRIMARY KEY (notifier, batch_id)
        )""",
        """CREATE TABLE notify_groups (
            notifier      TEXT NOT NULL,
            group_key     TEXT NOT NULL,
            last_flush_at DOUBLE PRECISION NOT NULL,
            PRIMARY KEY (notifier, group_key)
        )""",
    ),
    # v3: stuck marks, the index the active set is read from, and the sweep's staging (SQLite
    # keeps that in TEMP tables; here any pooled connection must see it, see the docstring).
    (
        "CREATE INDEX jobs_status_batch ON jobs (status, batch_id)",
        """CREATE TABLE stuck_marks (
            job_id   TEXT PRIMARY KEY,
            event_id TEXT NOT NULL
        )""",
        "CREATE SEQUENCE sweep_generation",
        """CREATE UNLOGGED TABLE sweep_runs (
            generation BIGINT PRIMARY KEY,
            started_at DOUBLE PRECISION NOT NULL
        )""",
        """CREATE UNLOGGED TABLE sweep_seen (
            generation BIGINT NOT NULL,
            id         TEXT NOT NULL,
            PRIMARY KEY (generation, id)
        )""",
        # The jobs table's columns (as of this version) and the seq the sweep read.
        """CREATE UNLOGGED TABLE sweep_stage (
            generation BIGINT NOT NULL,
            LIKE jobs,
            base_seq   BIGINT NOT NULL,
            PRIMARY KEY (generation, id)
        )""",
    ),
    # v4: a parent post is recorded as started before it is sent (channel and ts stay NULL
    # until Slack answers), and a failed parent edit waits in the thread's row for its retry.
    (
        "ALTER TABLE threads ALTER COLUMN channel DROP NOT NULL",
        "ALTER TABLE threads ALTER COLUMN ts DROP NOT NULL",
        "ALTER TABLE threads ADD COLUMN pending_edit TEXT",
        "ALTER TABLE threads ADD COLUMN edit_attempts INTEGER NOT NULL DEFAULT 0",
        "ALTER TABLE threads ADD COLUMN edit_failing_since DOUBLE PRECISION",
    ),
    # v5 (delivery survives an outage): when a row's current run of failures began; the rows
    # still owed through a partial index; the delivered count from a counter a trigger keeps.
    (
        "ALTER TABLE outbox ADD COLUMN first_failed_at DOUBLE PRECISION",
        "CREATE INDEX outbox_open ON outbox (notifier, state) WHERE state <> 'delivered'",
        """CREATE TABLE outbox_delivered (
            notifier TEXT PRIMARY KEY,
            n        BIGINT NOT NULL
        )""",
        "INSERT INTO outbox_delivered (notifier, n) "
        "SELECT notifier, COUNT(*) FROM outbox WHERE state = 'delivered' GROUP BY notifier",
        _DELIVERED_COUNTER,
        """CREATE TRIGGER outbox_delivered_count
            AFTER INSERT OR UPDATE OF state OR DELETE ON outbox
            FOR EACH ROW EXECUTE FUNCTION outbox_delivered_count()""",
    ),
    # v6: what a job's vanish left behind (the seq of its `job.vanished`, so a return is
    # announced with a new id), the jobs a complete listing missed but Box has not confirmed
    # gone, and the status each sweep first listed a job with (a repeat with another one is a
    # conflict the poller settles by reading the job).
    (
        "ALTER TABLE sweep_seen ADD COLUMN status TEXT NOT NULL DEFAULT ''",
        "ALTER TABLE sweep_seen ADD COLUMN conflict BOOLEAN NOT NULL DEFAULT false",
        """CREATE TABLE vanished (
            job_id      TEXT PRIMARY KEY,
            seq         BIGINT NOT NULL,
            vanished_at DOUBLE PRECISION NOT NULL
        )""",
        """CREATE TABLE suspects (
            job_id TEXT PRIMARY KEY,
            since  DOUBLE PRECISION NOT NULL
        )""",
    ),
    # v7: a thread reply recorded as started before it is sent, forgotten in the transaction
    # that marks its events delivered; a start left behind is a reply in doubt.
    (
        """CREATE TABLE reply_posts (
            notifier   TEXT NOT NULL,
            batch_id   TEXT NOT NULL,
            reply_key  TEXT NOT NULL,
            started_at DOUBLE PRECISION NOT NULL,
            PRIMARY KEY (notifier, batch_id, reply_key)
        )""",
    ),
    # v8 (HA): a lease per Box account and the live replicas; an outbox claim names the
    # replica and lease epoch that took it.
    (
        """CREATE TABLE leases (
            account    TEXT PRIMARY KEY,
            owner      TEXT,
            epoch      BIGINT NOT NULL,
            expires_at DOUBLE PRECISION NOT NULL
        )""",
        """CREATE TABLE replicas (
            id         TEXT PRIMARY KEY,
            expires_at DOUBLE PRECISION NOT NULL
        )""",
        "ALTER TABLE outbox ADD COLUMN claim_owner TEXT",
        "ALTER TABLE outbox ADD COLUMN claim_epoch BIGINT",
    ),
    # v9: a job's events by their order (a claim in job order finds a row's earlier ones).
    (f"CREATE INDEX events_job_seq ON events (({_EVENT_JOB_ID}), seq)",),
    # v10: silences, and which silence settled an outbox row instead of a delivery.
    (
        """CREATE TABLE silences (
            id         TEXT PRIMARY KEY,
            match      TEXT NOT NULL,
            starts_at  DOUBLE PRECISION NOT NULL,
            ends_at    DOUBLE PRECISION NOT NULL,
            comment    TEXT NOT NULL,
            created_by TEXT NOT NULL,
            created_at DOUBLE PRECISION NOT NULL
        )""",
        "CREATE INDEX silences_ends_at ON silences (ends_at)",
        "ALTER TABLE outbox ADD COLUMN silence_id TEXT",
    ),
    # v11: the template version a job was built from (the staging table follows `jobs`), and
    # the jobs of a template by time (failure ratios per template version).
    (
        "ALTER TABLE jobs ADD COLUMN template_file_version_id TEXT",
        "ALTER TABLE sweep_stage ADD COLUMN template_file_version_id TEXT",
        "CREATE INDEX jobs_template_changed ON jobs (template_file_id, changed_at)",
    ),
    # v12: the fingerprint of what each job's row observed (a sweep recognises an unchanged
    # listing entry by it, without reading the row); the staging table follows `jobs`.
    (
        "ALTER TABLE jobs ADD COLUMN fingerprint BIGINT",
        "ALTER TABLE sweep_stage ADD COLUMN fingerprint BIGINT",
        _fingerprint_jobs,
    ),
)

_SCHEMA_VERSION_TABLE = """CREATE TABLE IF NOT EXISTS schema_version (
    version    INTEGER PRIMARY KEY,
    applied_at DOUBLE PRECISION NOT NULL
)"""

_JOB_TYPES = {
    "seq": "bigint", "first_seen_at": "float8", "changed_at": "float8", "fingerprint": "bigint"
}
_JOB_SELECT = f"SELECT {', '.join(JOB_COLUMNS)} FROM jobs"  # noqa: S608 (constant names)
# What a write gives each row (`rows.job_to_row`): JobState's fields and the fingerprint.
_JOB_LIST = ", ".join(ROW_COLUMNS)
_JOB_ARRAYS = ", ".join(
    f"${i}::{_JOB_TYPES.get(c, 'text')}[]" for i, c in enumerate(ROW_COLUMNS, start=1)
)
_OBSERVED_SELECT = (
    f"SELECT id, {', '.join(OBSERVED_COLUMNS)} FROM jobs WHERE id = ANY($1::text[])"  # noqa: S608
)
_JOB_SET = ", ".join(f"{c} = EXCLUDED.{c}" for c in ROW_COLUMNS if c != "id")
_JOB_UPSERT = (
    f"INSERT INTO jobs ({_JOB_LIST}) SELECT * FROM unnest({_JOB_ARRAYS}) "  # noqa: S608
    f"ON CONFLICT (id) DO UPDATE SET {_JOB_SET}"
)
# From this many rows on, a snapshot write goes through COPY (see the docstring).
COPY_AT_ROWS = 5_000
_JOBS_IN = (
    "CREATE TEMP TABLE jobs_in (LIKE jobs) ON COMMIT DROP",
    f"INSERT INTO jobs ({_JOB_LIST}) SELECT {_JOB_LIST} FROM jobs_in "  # noqa: S608
    f"ON CONFLICT (id) DO UPDATE SET {_JOB_SET}",
)
_BASE_SEQ_ARG = len(ROW_COLUMNS) + 1
_GENERATION_ARG = len(ROW_COLUMNS) + 2
_STAGE_INSERT = (
    f"INSERT INTO sweep_stage (generation, {_JOB_LIST}, base_seq) "  # noqa: S608
    f"SELECT ${_GENERATION_ARG}::bigint, * FROM unnest({_JOB_ARRAYS}, ${_BASE_SEQ_ARG}::bigint[]) "
    "ON CONFLICT (generation, id) DO NOTHING"
)
# A staged row is stale when the job changed after the sweep read it (an active poll committed
# in between): applying it would roll the job back.
_STAGE_FRESH = "COALESCE((SELECT j.seq FROM jobs j WHERE j.id = s.id), 0) = s.base_seq"
_STAGE_APPLY = (
    f"INSERT INTO jobs ({_JOB_LIST}) "  # noqa: S608 (constant names)
    f"SELECT {', '.join('s.' + c for c in ROW_COLUMNS)} FROM sweep_stage s "
    f"WHERE s.generation = $1 AND {_STAGE_FRESH} "
    f"ON CONFLICT (id) DO UPDATE SET {_JOB_SET}"
)
# A removed job leaves the seq of its `job.vanished` event behind; a job written again is back.
_TOMBSTONE_INSERT = (
    "INSERT INTO vanished (job_id, seq, vanished_at) SELECT id, seq + 1, $2::float8 FROM jobs "
    "WHERE id = ANY($1::text[]) ON CONFLICT (job_id) DO UPDATE SET seq = EXCLUDED.seq, "
    "vanished_at = EXCLUDED.vanished_at"
)
_FINGERPRINTS = (
    "SELECT string_agg(int8send(fingerprint), ''::bytea), COUNT(*) - COUNT(fingerprint) "
    "FROM jobs"
)
_SUSPECTS_INSERT = (
    "INSERT INTO suspects (job_id, since) SELECT s.id, s.since "
    "FROM unnest($1::text[], $2::float8[]) AS s (id, since) "
    "WHERE EXISTS (SELECT 1 FROM jobs j WHERE j.id = s.id)"
)
_SEEN_INSERT = (
    "INSERT INTO sweep_seen (generation, id, status, conflict) "
    "SELECT $1::bigint, * FROM unnest($2::text[], $3::text[], $4::bool[]) "
    "ON CONFLICT (generation, id) DO UPDATE SET conflict = sweep_seen.conflict "
    "OR EXCLUDED.conflict OR sweep_seen.status <> EXCLUDED.status"
)
_TERMINAL_SQL = ", ".join(f"'{s}'" for s in sorted(TERMINAL_STATUSES))
# Rows come back in the order given (ORDINALITY), so `seq` follows the order given to commit;
# RETURNING names the events this transaction inserted: only they get outbox rows, so a
# replayed event id never gets a second row.
_EVENT_INSERT = (
    "INSERT INTO events (id, type, batch_id, payload, created_at) "
    "SELECT id, type, batch_id, payload, $5::float8 FROM "
    "unnest($1::text[], $2::text[], $3::text[], $4::text[]) WITH ORDINALITY "
    "AS e (id, type, batch_id, payload, ord) ORDER BY ord "
    "ON CONFLICT (id) DO NOTHING RETURNING id"
)
_OUTBOX_INSERT = (
    "INSERT INTO outbox (event_id, notifier, state, attempts, next_attempt_at, updated_at) "
    "SELECT event_id, notifier, 'pending', 0, $3::float8, $3::float8 "
    "FROM unnest($1::text[], $2::text[]) AS r (event_id, notifier) "
    "ON CONFLICT (event_id, notifier) DO NOTHING"
)
_STUCK_UPSERT = (
    "INSERT INTO stuck_marks (job_id, event_id) SELECT * FROM unnest($1::text[], $2::text[]) "
    "ON CONFLICT (job_id) DO UPDATE SET event_id = EXCLUDED.event_id"
)
_META_UPSERT = (
    "INSERT INTO meta (key, value) SELECT * FROM unnest($1::text[], $2::text[]) "
    "ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value"
)
# A batch's thread is kept while its batch runs (a non-terminal job), while its notifier still
# owes an event of the batch (pending, claimed or dead: a dead row may be retried), and while
# a parent edit waits.
_THREAD_PRUNE = (
    "DELETE FROM threads WHERE created_at < $1 AND pending_edit IS NULL "  # noqa: S608
    "AND NOT EXISTS (SELECT 1 FROM jobs j WHERE j.batch_id = threads.batch_id "
    f"AND j.status NOT IN ({_TERMINAL_SQL})) "
    "AND NOT EXISTS (SELECT 1 FROM events e JOIN outbox o ON o.event_id = e.id "
    "WHERE e.batch_id = threads.batch_id AND o.notifier = threads.notifier "
    "AND o.state <> 'delivered')"
)
# Back to pending without an attempt; a throttle answer also ends the run of failures.
_DEFER = (
    "UPDATE outbox SET state = 'pending', next_attempt_at = $1, claimed_until = NULL, "
    "updated_at = $2 WHERE event_id = ANY($3::text[]) AND notifier = $4 "
    "AND state IN ('pending', 'claimed')"
)
_THROTTLE = _DEFER.replace("updated_at = $2", "first_failed_at = NULL, updated_at = $2")
_MARK_FAILED = (
    "UPDATE outbox o SET state = r.state, attempts = o.attempts + 1, last_error = $2, "
    "next_attempt_at = COALESCE(r.retry_at, o.next_attempt_at), claimed_until = NULL, "
    "first_failed_at = COALESCE(o.first_failed_at, $3), updated_at = $3 "
    "FROM unnest($4::text[], $5::text[], $6::float8[]) AS r (event_id, state, retry_at) "
    "WHERE o.event_id = r.event_id AND o.notifier = $1 AND o.state IN ('pending', 'claimed')"
)
_ENTRY_COLUMNS = (
    "e.payload, o.notifier, o.state, o.attempts, o.next_attempt_at, o.last_error, "
    "o.first_failed_at"
)
_ENTRY_FROM = "FROM outbox o JOIN events e ON e.id = o.event_id"
_OLDEST_FIRST = "ORDER BY e.created_at, e.seq, o.notifier"
# Lock the due rows (skipping those another claimer holds), claim them, and hand them back in
# the order they were picked.
_CLAIM = (
    "WITH due AS (SELECT o.event_id, e.created_at, e.seq "  # noqa: S608 (constant names)
    f"{_ENTRY_FROM} WHERE o.notifier = $1 AND ("
    "(o.state = 'pending' AND o.next_attempt_at <= $2) "
    "OR (o.state = 'claimed' AND o.claimed_until <= $2)){job_head} "
    f"{_OLDEST_FIRST} LIMIT $3 FOR UPDATE OF o SKIP LOCKED), "
    "claimed AS (UPDATE outbox o SET state = 'claimed', claimed_until = $4, updated_at = $2, "
    "claim_owner = $5, claim_epoch = $6 "
    "FROM due WHERE o.event_id = due.event_id AND o.notifier = $1 "
    "RETURNING o.*, due.created_at AS created_at_, due.seq AS seq_) "
    f"SELECT {_ENTRY_COLUMNS} FROM claimed o JOIN events e ON e.id = o.event_id "
    "ORDER BY o.created_at_, o.seq_"
)
_NEXT_DUE = (
    "SELECT MIN(CASE state WHEN 'pending' THEN next_attempt_at ELSE claimed_until END) "
    "FROM outbox WHERE notifier = $1 AND state IN ('pending', 'claimed')"
)
_JOB_HEAD, _NEXT_DUE_IN_JOB_ORDER = job_order_sql(_EVENT_JOB_ID, "$1")
_CLAIMS = {
    False: _CLAIM.replace("{job_head}", ""),
    True: _CLAIM.replace("{job_head}", _JOB_HEAD),
}

# Leases: times by the server's clock, in unix seconds like every other time column.
_DB_NOW = "EXTRACT(EPOCH FROM clock_timestamp())::float8"
# An acquisition: the row made to exist (free, epoch 0), locked FOR UPDATE (behind the
# holder's writes in flight, see the module docstring), then taken with the next epoch if
# nobody holds it (never held, released or expired).
_LEASE_ROW = (
    "INSERT INTO leases (account, owner, epoch, expires_at) VALUES ($1, NULL, 0, 0) "
    "ON CONFLICT (account) DO NOTHING"
)
_LEASE_LOCK = "SELECT 1 FROM leases WHERE account = $1 FOR UPDATE"
# A lease another replica holds is seen without a lock, so a standby's rounds never hold up
# the holder's writes.
_LEASE_HELD = (
    f"SELECT owner IS NOT NULL AND expires_at > {_DB_NOW} FROM leases "  # noqa: S608
    "WHERE account = $1"
)
_LEASE_ACQUIRE = (
    f"UPDATE leases SET owner = $2, epoch = epoch + 1, expires_at = {_DB_NOW} + $3 "  # noqa: S608
    f"WHERE account = $1 AND (owner IS NULL OR expires_at <= {_DB_NOW}) RETURNING epoch"
)
_LEASE_RENEW = (
    f"UPDATE leases SET expires_at = {_DB_NOW} + $4 "  # noqa: S608 (constants)
    "WHERE account = $1 AND owner = $2 AND epoch = $3"
)
_LEASE_RELEASE = (
    f"UPDATE leases SET owner = NULL, expires_at = {_DB_NOW} "  # noqa: S608 (constants)
    "WHERE account = $1 AND owner = $2 AND epoch = $3"
)
_LEASES = (
    f"SELECT account, owner, epoch, owner IS NOT NULL AND expires_at > {_DB_NOW} "  # noqa: S608
    "FROM leases ORDER BY account"
)
_REPLICA_BEAT = (
    f"INSERT INTO replicas (id, expires_at) VALUES ($1, {_DB_NOW} + $2) "  # noqa: S608
    "ON CONFLICT (id) DO UPDATE SET expires_at = EXCLUDED.expires_at"
)
_REPLICAS_LIVE = f"SELECT COUNT(*) FROM replicas WHERE expires_at > {_DB_NOW}"  # noqa: S608
# A replica that died without leaving is forgotten an hour after its last heartbeat.
_REPLICAS_FORGET = f"DELETE FROM replicas WHERE expires_at < {_DB_NOW} - 3600"  # noqa: S608

# Failures that say the connection, not the statement, failed: worth another try. Not every
# OSError: asyncpg raises a bare ConnectionError for a refused TLS upgrade, which is final.
_TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    ConnectionRefusedError,
    ConnectionResetError,
    ConnectionAbortedError,
    BrokenPipeError,
    TimeoutError,
    socket.gaierror,  # a name server that does not answer yet (a pod just started)
    asyncpg.exceptions.PostgresConnectionError,  # SQLSTATE class 08, and a connection lost
    asyncpg.exceptions.CannotConnectNowError,  # starting up or shutting down
    asyncpg.exceptions.AdminShutdownError,
    asyncpg.exceptions.CrashShutdownError,
    asyncpg.exceptions.TooManyConnectionsError,
)
_TRANSIENT_ERRNOS = frozenset({errno.ENETUNREACH, errno.EHOSTUNREACH, errno.ETIMEDOUT})


def _transient(exc: BaseException) -> bool:
    if isinstance(exc, _TRANSIENT_ERRORS):
        return True
    return isinstance(exc, OSError) and exc.errno in _TRANSIENT_ERRNOS


# What a failed statement or connection raises; everything else is a bug and propagates.
_BACKEND_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
)


def _job_columns(jobs: Iterable[JobState]) -> list[list[Any]]:
    """One array per column of `jobs` (the last sighting of an id wins), for `unnest`."""
    return _row_columns({job.id: job_to_row(job) for job in jobs}.values())


def _row_columns(rows: Iterable[JobRow]) -> list[list[Any]]:
    """One array per column (`ROW_COLUMNS`) of these rows, for `unnest`."""
    return [list(column) for column in zip(*rows, strict=True)] or [[] for _ in ROW_COLUMNS]


def _row_count(status: str) -> int:
    """The row count of a command status such as `INSERT 0 3` or `UPDATE 2`."""
    return int(status.rsplit(" ", 1)[-1])


class _Target(NamedTuple):
    dsn: str  # for asyncpg: the URL without our own parameters
    schema: str | None
    settings: dict[str, str]  # session settings to add
    connect_timeout_s: float


def _parse_url(url: str) -> _Target:
    """Our own parameters (`schema`; `connect_timeout`, libpq's, which asyncpg lacks) taken
    out of the URL, and `application_name` set unless the URL sets one."""
    parts = urlsplit(url)
    if parts.scheme not in SCHEMES or not parts.hostname:
        raise ValueError("expected postgresql://user:password@host:port/database")
    query = parse_qsl(parts.query, keep_blank_values=True)
    ours = {key: value for key, value in query if key in ("schema", "connect_timeout")}
    rest = [(key, value) for key, value in query if key not in ours]
    if ours.get("schema") == "":
        raise ValueError("schema= needs a name")
    try:
        connect_timeout_s = float(ours.get("connect_timeout", CONNECT_TIMEOUT_S))
    except ValueError:
        connect_timeout_s = 0.0
    if not 0 < connect_timeout_s < float("inf"):
        raise ValueError("connect_timeout= needs a number of seconds above 0")
    settings = {} if any(key == "application_name" for key, _ in rest) else {
        "application_name": "docgen-monitor"}
    schema = ours.get("schema")
    if schema is not None:
        settings["search_path"] = _quote_ident(schema)
    dsn = urlunsplit(parts._replace(query=urlencode(rest)))
    return _Target(dsn, schema, settings, connect_timeout_s)


def _quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


async def _mark_delivered(conn: _Conn, notifier: str, ids: list[str]) -> None:
    await conn.execute(
        "UPDATE outbox SET state = 'delivered', attempts = attempts + 1, "
        "claimed_until = NULL, first_failed_at = NULL, updated_at = $1 "
        "WHERE event_id = ANY($2::text[]) AND notifier = $3 AND state <> 'delivered'",
        time.time(),
        ids,
        notifier,
    )


async def _saved_thread(
    conn: _Conn, notifier: str, batch_id: str
) -> ThreadRef | None:
    row = await conn.fetchrow(
        "SELECT channel, ts FROM threads WHERE notifier = $1 AND batch_id = $2 AND ts IS NOT NULL",
        notifier,
        batch_id,
    )
    return None if row is None else ThreadRef(str(row[0]), str(row[1]))


async def _upsert_jobs(conn: _Conn, columns: list[list[Any]]) -> None:
    """Write snapshot rows given as column arrays (`_job_columns`): one statement, or COPY
    into a table this transaction drops for a large write."""
    if len(columns[0]) < COPY_AT_ROWS:
        await conn.execute(_JOB_UPSERT, *columns)
        return
    create, apply = _JOBS_IN
    await conn.execute(create)
    await conn.copy_records_to_table(
        "jobs_in", records=zip(*columns, strict=True), columns=list(ROW_COLUMNS)
    )
    await conn.execute(apply)


_Work = Callable[[_Conn], Awaitable[_T]]


class PostgresStore(ShieldedWrites, Fencing, Store):
    """The state in one PostgreSQL database (and schema) named by `url`."""

    migrations: ClassVar[tuple[Migration, ...]] = MIGRATIONS

    def __init__(self, url: str) -> None:
        ShieldedWrites.__init__(self)
        Fencing.__init__(self)
        self.url = url
        self._target = _parse_url(url)
        self.schema = self._target.schema
        self._pool: asyncpg.Pool | None = None
        self._closing = False
        self.lease_schema = self.schema  # see the module docstring
        self._sweep_generation = 0

    @classmethod
    def from_url(cls, url: str) -> Self:
        """`postgresql://user:password@host:port/database[?sslmode=...&schema=...]`."""
        return cls(url)

    @classmethod
    def account_url(cls, url: str, account: str) -> str:
        """A schema of its own: `<schema>_<account>`, the URL's `schema=` (or `public`) as the
        base (`default` keeps the URL's own schema). The lease table stays in the base schema."""
        if account == DEFAULT_ACCOUNT:
            return url
        parts = urlsplit(url)
        query = parse_qsl(parts.query, keep_blank_values=True)
        base = next((value for key, value in query if key == "schema"), None) or "public"
        query = [(k, v) for k, v in query if k != "schema"] + [("schema", f"{base}_{account}")]
        return urlunsplit(parts._replace(query=urlencode(query)))

    def __repr__(self) -> str:
        return f"PostgresStore({url_without_password(self.url)!r})"

    # -- lifecycle --------------------------------------------------------------------------

    async def open(self) -> None:
        if self._pool is not None:
            raise StoreError(f"{self!r} is already open")
        try:
            pool = await self._retrying(
                "open",
                lambda: asyncpg.create_pool(
                    self._target.dsn,
                    min_size=POOL_MIN_SIZE,
                    max_size=POOL_MAX_SIZE,
                    timeout=self._target.connect_timeout_s,
                    command_timeout=COMMAND_TIMEOUT_S,
                    server_settings={
                        "idle_in_transaction_session_timeout": f"{IDLE_IN_TRANSACTION_S:.0f}s",
                        **self._target.settings,
                    },
                ),
            )
        except _BACKEND_ERRORS as exc:
            raise StoreError(f"cannot open {self!r}: {exc}") from exc
        try:
            async with pool.acquire() as conn:
                await self._migrate(conn)
        except BaseException as exc:
            await self._close_pool(pool)
            if isinstance(exc, _BACKEND_ERRORS):
                raise StoreError(f"cannot open {self!r}: {exc}") from exc
            raise
        self._pool = pool
        self._closing = False

    @staticmethod
    async def _close_pool(pool: asyncpg.Pool) -> None:
        try:
            await asyncio.wait_for(pool.close(), CLOSE_TIMEOUT_S)
        except _BACKEND_ERRORS:
            pool.terminate()

    async def _migrate(self, conn: _Conn) -> None:
        known = len(self.migrations)
        schema = self.schema or await conn.fetchval("SELECT current_schema()") or "public"
        while True:
            async with conn.transaction():
                # Concurrent starters on one schema: the first migrates, the others wait here
                # and then find the step applied. Released at the end of the transaction.
                await conn.execute(
                    "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))",
                    f"docgen-monitor schema {schema}",
                )
                if self.schema is not None:
                    await conn.execute(f"CREATE SCHEMA IF NOT EXISTS {_quote_ident(schema)}")
                await conn.execute(_SCHEMA_VERSION_TABLE)
                version = int(
                    await conn.fetchval("SELECT COALESCE(MAX(version), 0) FROM schema_version")
                )
                if version > known:
                    raise SchemaTooNew(version, known)
                if version == known:
                    return
                for statement in self.migrations[version]:
                    if isinstance(statement, str):
                        await conn.execute(statement)
                    else:
                        await statement(conn)
                await conn.execute(
                    "INSERT INTO schema_version (version, applied_at) VALUES ($1, $2)",
                    version + 1,
                    time.time(),
                )
            _log.info("store.migrated", store=repr(self), schema_version=version + 1)

    async def close(self) -> None:
        if self._pool is None:
            return
        self._closing = True  # refuse new work; let shielded writes finish
        await self._writes_done()
        pool, self._pool = self._pool, None
        if self._sweep_generation:
            try:
                async with pool.acquire(timeout=self._target.connect_timeout_s) as conn:
                    await self._forget_sweep(conn, self._sweep_generation)
            except _BACKEND_ERRORS as exc:
                # Left behind, it is deleted by age (`_STAGE_MAX_AGE_S`); no reader sees it.
                _log.warning("store.sweep_stage_left", store=repr(self), error=str(exc))
        await self._close_pool(pool)

    def share_leases_of(self, url: str) -> None:
        if url != self.url:
            # The base's schema, or the one an account's own schema is named after.
            self.lease_schema = _parse_url(url).schema or "public"

    def replica_lock(self) -> contextlib.AbstractContextManager[None]:
        return contextlib.nullcontext()  # replicas share it: leases say who works what

    async def ping(self) -> None:
        pool = self._open_pool()
        try:
            await pool.fetchval("SELECT 1", timeout=self._target.connect_timeout_s)
        except _BACKEND_ERRORS as exc:
            raise StoreError(f"{self!r} does not answer: {exc}") from exc

    # -- plumbing ---------------------------------------------------------------------------

    def _open_pool(self) -> asyncpg.Pool:
        if self._pool is None or self._closing:
            raise StoreError(f"{self!r} is not open")
        return self._pool

    async def _retrying(self, op: str, attempt: Callable[[], Awaitable[_T]]) -> _T:
        """`attempt()`, tried again after each delay of `RETRY_DELAYS_S` while it fails for a
        transient reason (`_transient`); every other failure propagates at once."""
        for delay_s in (*RETRY_DELAYS_S, None):
            try:
                return await attempt()
            except _BACKEND_ERRORS as exc:
                if delay_s is None or self._closing or not _transient(exc):
                    raise
                _log.warning(
                    "store.retry", store=repr(self), op=op, delay_s=delay_s, error=str(exc)
                )
                await asyncio.sleep(delay_s)
        raise AssertionError("unreachable")  # the last round returns or raises

    async def _read(self, op: str, fn: _Work[_T]) -> _T:
        """`fn` on a pooled connection; a lost connection is tried again (reads are
        idempotent)."""
        pool = self._open_pool()

        async def attempt() -> _T:
            async with pool.acquire() as conn:
                return await fn(conn)

        try:
            return await self._retrying(op, attempt)
        except _BACKEND_ERRORS as exc:
            raise StoreError(f"postgresql store {op} failed: {exc}") from exc

    async def _write(self, op: str, fn: _Work[_T], *, fenced: bool = True) -> _T:
        """Run `fn` in one transaction that the caller's cancellation cannot tear: the caller
        sees CancelledError at once, the transaction still commits or rolls back whole. With a
        fence set (and `fenced`), the transaction first checks and locks the lease row."""
        pool = self._open_pool()
        fence = self._fence if fenced else None
        return await self._shielded(self._transaction(op, pool, fn, fence))

    async def _check_fence(self, conn: _Conn, fence: Fence) -> None:
        schema = self.lease_schema
        table = "leases" if schema is None else f"{_quote_ident(schema)}.leases"
        held = await conn.fetchval(
            f"SELECT true FROM {table} WHERE account = $1 AND owner = $2 "  # noqa: S608
            "AND epoch = $3 FOR KEY SHARE",
            fence.account,
            fence.owner,
            fence.epoch,
        )
        if not held:
            raise self._lease_lost(fence)

    async def _transaction(
        self, op: str, pool: asyncpg.Pool, fn: _Work[_T], fence: Fence | None = None
    ) -> _T:
        async def begin() -> tuple[_Conn, Transaction]:
            conn = await pool.acquire()
            try:
                transaction = conn.transaction()
                await transaction.start()
            except BaseException:
                await pool.release(conn)
                raise
            return conn, transaction

        try:
            # Only getting a connection and beginning are tried again: once the transaction
            # began, a lost connection means it rolled back, and the caller decides.
            conn, transaction = await self._retrying(op, begin)
        except _BACKEND_ERRORS as exc:
            raise StoreError(f"postgresql store {op} failed: {exc}") from exc
        try:
            try:
                if fence is not None:
                    await self._check_fence(conn, fence)
                result = await fn(conn)
            except BaseException:
                await transaction.rollback()
                raise
            await transaction.commit()
            return result
        except _BACKEND_ERRORS as exc:
            raise StoreError(f"postgresql store {op} failed: {exc}") from exc
        finally:
            await pool.release(conn)

    # -- snapshot ---------------------------------------------------------------------------

    async def load_snapshot(self) -> dict[str, JobState]:
        async def fn(conn: _Conn) -> dict[str, JobState]:
            return {row[0]: job_from_row(row) for row in await conn.fetch(_JOB_SELECT)}

        return await self._read("load_snapshot", fn)

    async def load_batches(self, batch_ids: Iterable[str]) -> dict[str, JobState]:
        ids = sorted(set(batch_ids))

        async def fn(conn: _Conn) -> dict[str, JobState]:
            rows = await conn.fetch(f"{_JOB_SELECT} WHERE batch_id = ANY($1::text[])", ids)
            return {row[0]: job_from_row(row) for row in rows}

        return await self._read("load_batches", fn)

    async def status_counts(self) -> dict[str, int]:
        async def fn(conn: _Conn) -> dict[str, int]:
            rows = await conn.fetch("SELECT status, COUNT(*) FROM jobs GROUP BY status")
            return {status: count for status, count in rows}

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
        # Serialised before the transaction: nothing below depends on the database.
        job_columns = _job_columns(changes.upserts)
        removals = list(changes.removals)
        event_columns = [
            [r.event.id for r in events],
            [r.event.type.value for r in events],
            [r.event.batch_id for r in events],
            [r.event.model_dump_json() for r in events],
        ]
        routes = [(r.event.id, notifier) for r in events for notifier in r.notifiers]
        stuck = {
            r.event.job.id: r.event.id
            for r in events
            if r.event.type is EventType.JOB_STUCK and r.event.job is not None
        }
        generation = self._sweep_generation

        async def fn(conn: _Conn) -> int:
            if changes.upserts:
                await _upsert_jobs(conn, job_columns)
                await conn.execute(
                    "DELETE FROM vanished WHERE job_id = ANY($1::text[])",
                    [j.id for j in changes.upserts],
                )
            if removals:
                await conn.execute(_TOMBSTONE_INSERT, removals, at)
                await conn.execute("DELETE FROM jobs WHERE id = ANY($1::text[])", removals)
                await conn.execute(
                    "DELETE FROM stuck_marks WHERE job_id = ANY($1::text[])", removals
                )
                await conn.execute("DELETE FROM suspects WHERE job_id = ANY($1::text[])", removals)
            if stuck:
                await conn.execute(_STUCK_UPSERT, list(stuck), list(stuck.values()))
            if sweep:
                await conn.execute(
                    "DELETE FROM vanished WHERE job_id IN "
                    "(SELECT id FROM sweep_stage WHERE generation = $1)",
                    generation,
                )
                await conn.execute(_STAGE_APPLY, generation)
                await self._forget_sweep(conn, generation, keep_run=True)
            added = 0
            if events:
                inserted = {row[0] for row in await conn.fetch(_EVENT_INSERT, *event_columns, at)}
                rows = [(e, n) for e, n in routes if e in inserted]
                if rows:
                    status = await conn.execute(
                        _OUTBOX_INSERT, [e for e, _ in rows], [n for _, n in rows], at
                    )
                    added = _row_count(status)
            if meta:
                await conn.execute(_META_UPSERT, list(meta), list(meta.values()))
            if suspects is not None:
                await conn.execute("DELETE FROM suspects")
                await conn.execute(_SUSPECTS_INSERT, list(suspects), list(suspects.values()))
            return added

        return await self._write("commit_sweep" if sweep else "commit", fn)

    async def get_meta(self, key: str) -> str | None:
        async def fn(conn: _Conn) -> str | None:
            value = await conn.fetchval("SELECT value FROM meta WHERE key = $1", key)
            return None if value is None else str(value)

        return await self._read("get_meta", fn)

    # -- outbox -----------------------------------------------------------------------------

    async def claim_due(
        self, notifier: str, now: float, limit: int, lease_s: float, *, job_order: bool = False
    ) -> list[OutboxEntry]:
        if limit <= 0:
            return []

        async def fn(conn: _Conn) -> list[OutboxEntry]:
            fence = self._fence
            owner, epoch = (None, None) if fence is None else (fence.owner, fence.epoch)
            rows = await conn.fetch(
                _CLAIMS[job_order], notifier, now, limit, now + lease_s, owner, epoch
            )
            return [entry_from_row(row, OutboxState.CLAIMED) for row in rows]

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
        # PostgreSQL text cannot hold NUL; a receiver's error body may (it is untrusted bytes).
        text = truncate_error(error).replace("\x00", "\ufffd")
        event_ids = list(retry_at)
        states = [
            OutboxState.PENDING.value if at is not None else OutboxState.DEAD.value
            for at in retry_at.values()
        ]
        times = list(retry_at.values())

        async def fn(conn: _Conn) -> None:
            await conn.execute(_MARK_FAILED, notifier, text, now, event_ids, states, times)

        if event_ids:
            await self._write("mark_failed", fn)

    async def mark_throttled(self, notifier: str, event_ids: Sequence[str], until: float) -> None:
        await self._defer("mark_throttled", _THROTTLE, notifier, event_ids, until)

    async def next_due_at(self, notifier: str, *, job_order: bool = False) -> float | None:
        sql = _NEXT_DUE_IN_JOB_ORDER if job_order else _NEXT_DUE

        async def fn(conn: _Conn) -> float | None:
            value = await conn.fetchval(sql, notifier)
            return None if value is None else float(value)

        return await self._read("next_due_at", fn)

    async def outbox_counts(self) -> dict[str, dict[OutboxState, int]]:
        async def fn(conn: _Conn) -> dict[str, dict[OutboxState, int]]:
            counts: dict[str, dict[OutboxState, int]] = {}
            # The rows still owed through the partial index `outbox_open`; delivered ones from
            # the counter (schema v5).
            rows = await conn.fetch(
                "SELECT notifier, state, COUNT(*) FROM outbox WHERE state <> 'delivered' "
                "GROUP BY notifier, state "
                "UNION ALL SELECT notifier, 'delivered', n FROM outbox_delivered WHERE n > 0"
            )
            for notifier, state, count in rows:
                per_state = counts.setdefault(notifier, dict.fromkeys(OutboxState, 0))
                per_state[OutboxState(state)] = count
            return counts

        return await self._read("outbox_counts", fn)

    async def list_outbox(
        self, state: OutboxState, notifier: str | None = None, limit: int = 1000
    ) -> list[OutboxEntry]:
        async def fn(conn: _Conn) -> list[OutboxEntry]:
            sql = (
                f"SELECT {_ENTRY_COLUMNS} {_ENTRY_FROM} "
                "WHERE o.state = $1 AND ($2::text IS NULL OR o.notifier = $2) "
                f"{_OLDEST_FIRST} LIMIT $3"
            )
            rows = await conn.fetch(sql, state.value, notifier, limit)
            return [entry_from_row(row) for row in rows]

        return await self._read("list_outbox", fn)

    async def batch_summaries(self, batch_ids: Iterable[str]) -> dict[str, BatchSummary]:
        ids = sorted(set(batch_ids))

        async def fn(conn: _Conn) -> dict[str, BatchSummary]:
            sql = (
                f"{rows.BATCH_SUMMARY_SELECT} WHERE batch_id = ANY($1::text[]) "
                f"{rows.BATCH_SUMMARY_GROUP}"
            )
            return rows.batch_summaries(await conn.fetch(sql, ids))

        return await self._read("batch_summaries", fn)

    async def recent_failures(self, since: float, limit: int) -> list[JobState]:
        async def fn(conn: _Conn) -> list[JobState]:
            sql = (
                f"{_JOB_SELECT} WHERE status = ANY($1::text[]) AND changed_at >= $2 "
                "ORDER BY changed_at DESC, id LIMIT $3"
            )
            found = await conn.fetch(sql, list(rows.FAILED_STATUSES), since, limit)
            return [job_from_row(row) for row in found]

        return await self._read("recent_failures", fn)

    async def notifier_activity(self) -> dict[str, NotifierActivity]:
        async def fn(conn: _Conn) -> dict[str, NotifierActivity]:
            delivered = await conn.fetch(
                "SELECT notifier, MAX(updated_at) FROM outbox WHERE state = 'delivered' "
                "GROUP BY notifier"
            )
            errors = await conn.fetch(
                "SELECT DISTINCT ON (notifier) notifier, last_error, updated_at FROM outbox "
                "WHERE state <> 'delivered' AND last_error IS NOT NULL "
                "ORDER BY notifier, updated_at DESC"
            )
            return rows.notifier_activity(delivered, errors)

        return await self._read("notifier_activity", fn)

    async def requeue_dead(
        self, now: float, event_id: str | None = None, notifier: str | None = None
    ) -> int:
        async def fn(conn: _Conn) -> int:
            status = await conn.execute(
                "UPDATE outbox SET state = 'pending', attempts = 0, next_attempt_at = $1, "
                "claimed_until = NULL, first_failed_at = NULL, updated_at = $1 "
                "WHERE state = 'dead' AND ($2::text IS NULL OR event_id = $2) "
                "AND ($3::text IS NULL OR notifier = $3)",
                now,
                event_id,
                notifier,
            )
            return _row_count(status)

        return await self._write("requeue_dead", fn)

    async def drop_dead(self, event_id: str | None = None, notifier: str | None = None) -> int:
        # The event row stays: its id must keep blocking a replay from minting new rows.
        async def fn(conn: _Conn) -> int:
            status = await conn.execute(
                "DELETE FROM outbox WHERE state = 'dead' AND ($1::text IS NULL OR event_id = $1) "
                "AND ($2::text IS NULL OR notifier = $2)",
                event_id,
                notifier,
            )
            return _row_count(status)

        return await self._write("drop_dead", fn)

    async def prune(self, before: float) -> int:
        async def fn(conn: _Conn) -> int:
            await conn.execute(
                "DELETE FROM outbox WHERE state = 'delivered' AND updated_at < $1", before
            )
            status = await conn.execute(
                "DELETE FROM events WHERE created_at < $1 AND NOT EXISTS "
                "(SELECT 1 FROM outbox o WHERE o.event_id = events.id)",
                before,
            )
            # Notification bookkeeping of batches that are over: a thread goes only when
            # nothing more can be said in it.
            await conn.execute(_THREAD_PRUNE, before)
            await conn.execute("DELETE FROM notify_groups WHERE last_flush_at < $1", before)
            await conn.execute("DELETE FROM reply_posts WHERE started_at < $1", before)
            await conn.execute("DELETE FROM silences WHERE ends_at < $1", before)
            return _row_count(status)

        return await self._write("prune", fn)

    # -- notifications ----------------------------------------------------------------------

    async def defer(self, notifier: str, event_ids: Sequence[str], until: float) -> None:
        await self._defer("defer", _DEFER, notifier, event_ids, until)

    async def _defer(
        self, op: str, sql: str, notifier: str, event_ids: Sequence[str], until: float
    ) -> None:
        now = time.time()
        ids = list(event_ids)

        async def fn(conn: _Conn) -> None:
            await conn.execute(sql, until, now, ids, notifier)

        if ids:
            await self._write(op, fn)

    async def get_thread(self, notifier: str, batch_id: str) -> ThreadRef | None:
        async def fn(conn: _Conn) -> ThreadRef | None:
            return await _saved_thread(conn, notifier, batch_id)

        return await self._read("get_thread", fn)

    async def save_thread(self, notifier: str, batch_id: str, thread: ThreadRef) -> ThreadRef:
        async def fn(conn: _Conn) -> ThreadRef:
            await conn.execute(
                "INSERT INTO threads (notifier, batch_id, channel, ts, created_at) "
                "VALUES ($1, $2, $3, $4, $5) ON CONFLICT (notifier, batch_id) DO UPDATE SET "
                "channel = EXCLUDED.channel, ts = EXCLUDED.ts WHERE threads.ts IS NULL",
                notifier,
                batch_id,
                thread.channel,
                thread.ts,
                time.time(),
            )
            saved = await _saved_thread(conn, notifier, batch_id)
            assert saved is not None
            return saved

        return await self._write("save_thread", fn)

    async def start_thread_post(self, notifier: str, batch_id: str, at: float) -> float | None:
        async def fn(conn: _Conn) -> float | None:
            inserted = await conn.fetchval(
                "INSERT INTO threads (notifier, batch_id, created_at) VALUES ($1, $2, $3) "
                "ON CONFLICT (notifier, batch_id) DO NOTHING RETURNING true",
                notifier,
                batch_id,
                at,
            )
            if inserted:
                return None
            row = await conn.fetchrow(
                "SELECT ts, created_at FROM threads WHERE notifier = $1 AND batch_id = $2",
                notifier,
                batch_id,
            )
            return None if row is None or row[0] is not None else float(row[1])

        return await self._write("start_thread_post", fn)

    async def start_reply_post(
        self, notifier: str, batch_id: str, reply_key: str, at: float
    ) -> None:
        async def fn(conn: _Conn) -> None:
            await conn.execute(
                "INSERT INTO reply_posts (notifier, batch_id, reply_key, started_at) "
                "VALUES ($1, $2, $3, $4) ON CONFLICT (notifier, batch_id, reply_key) DO NOTHING",
                notifier,
                batch_id,
                reply_key,
                at,
            )

        await self._write("start_reply_post", fn)

    async def reply_posts_in_doubt(self, notifier: str, batch_id: str) -> float | None:
        async def fn(conn: _Conn) -> float | None:
            value = await conn.fetchval(
                "SELECT MIN(started_at) FROM reply_posts WHERE notifier = $1 AND batch_id = $2",
                notifier,
                batch_id,
            )
            return None if value is None else float(value)

        return await self._read("reply_posts_in_doubt", fn)

    async def finish_reply_posts(
        self,
        notifier: str,
        batch_id: str,
        reply_keys: Sequence[str] | None,
        event_ids: Sequence[str],
    ) -> None:
        ids = list(event_ids)
        keys = None if reply_keys is None else list(reply_keys)

        async def fn(conn: _Conn) -> None:
            if ids:
                await _mark_delivered(conn, notifier, ids)
            await conn.execute(
                "DELETE FROM reply_posts WHERE notifier = $1 AND batch_id = $2 "
                "AND ($3::text[] IS NULL OR reply_key = ANY($3::text[]))",
                notifier,
                batch_id,
                keys,
            )

        await self._write("finish_reply_posts", fn)

    async def set_pending_edit(
        self, notifier: str, batch_id: str, content: str, at: float
    ) -> None:
        async def fn(conn: _Conn) -> None:
            await conn.execute(
                "UPDATE threads SET pending_edit = $1, edit_attempts = edit_attempts + 1, "
                "edit_failing_since = COALESCE(edit_failing_since, $2) "
                "WHERE notifier = $3 AND batch_id = $4 AND ts IS NOT NULL",
                content,
                at,
                notifier,
                batch_id,
            )

        await self._write("set_pending_edit", fn)

    async def pending_edits(self, notifier: str) -> list[PendingEdit]:
        async def fn(conn: _Conn) -> list[PendingEdit]:
            rows = await conn.fetch(
                "SELECT batch_id, channel, ts, pending_edit, edit_attempts, edit_failing_since "
                "FROM threads WHERE notifier = $1 AND pending_edit IS NOT NULL "
                "ORDER BY edit_failing_since, batch_id",
                notifier,
            )
            return [
                PendingEdit(str(b), ThreadRef(str(c), str(t)), str(p), int(n), float(since))
                for b, c, t, p, n, since in rows
            ]

        return await self._read("pending_edits", fn)

    async def clear_pending_edit(self, notifier: str, batch_id: str) -> None:
        async def fn(conn: _Conn) -> None:
            await conn.execute(
                "UPDATE threads SET pending_edit = NULL, edit_attempts = 0, "
                "edit_failing_since = NULL WHERE notifier = $1 AND batch_id = $2",
                notifier,
                batch_id,
            )

        await self._write("clear_pending_edit", fn)

    async def group_flushed_at(self, notifier: str, group_key: str) -> float | None:
        async def fn(conn: _Conn) -> float | None:
            value = await conn.fetchval(
                "SELECT last_flush_at FROM notify_groups WHERE notifier = $1 AND group_key = $2",
                notifier,
                group_key,
            )
            return None if value is None else float(value)

        return await self._read("group_flushed_at", fn)

    async def set_group_flushed(self, notifier: str, group_key: str, at: float) -> None:
        async def fn(conn: _Conn) -> None:
            await conn.execute(
                "INSERT INTO notify_groups (notifier, group_key, last_flush_at) "
                "VALUES ($1, $2, $3) ON CONFLICT (notifier, group_key) DO UPDATE SET "
                "last_flush_at = EXCLUDED.last_flush_at",
                notifier,
                group_key,
                at,
            )

        await self._write("set_group_flushed", fn)

    async def release_claims(self, notifier: str, now: float) -> int:
        async def fn(conn: _Conn) -> int:
            status = await conn.execute(
                "UPDATE outbox SET state = 'pending', next_attempt_at = $1, "
                "claimed_until = NULL, updated_at = $1 WHERE notifier = $2 AND state = 'claimed'",
                now,
                notifier,
            )
            return _row_count(status)

        return await self._write("release_claims", fn)

    async def mark_delivered_many(self, notifier: str, event_ids: Sequence[str]) -> None:
        ids = list(event_ids)

        async def fn(conn: _Conn) -> None:
            await _mark_delivered(conn, notifier, ids)

        if ids:
            await self._write("mark_delivered", fn)

    # -- active set, streaming sweeps, stuck marks ---------------------------------------------

    async def active_batch_ids(self) -> set[str]:
        async def fn(conn: _Conn) -> set[str]:
            sql = f"SELECT DISTINCT batch_id FROM jobs WHERE status NOT IN ({_TERMINAL_SQL})"  # noqa: S608
            return {row[0] for row in await conn.fetch(sql)}

        return await self._read("active_batch_ids", fn)

    async def load_jobs(self, job_ids: Sequence[str]) -> dict[str, JobState]:
        ids = list(dict.fromkeys(job_ids))

        async def fn(conn: _Conn) -> dict[str, JobState]:
            rows = await conn.fetch(f"{_JOB_SELECT} WHERE id = ANY($1::text[])", ids)
            return {row[0]: job_from_row(row) for row in rows}

        return await self._read("load_jobs", fn)

    async def load_observed(self, job_ids: Sequence[str]) -> dict[str, Observed]:
        ids = list(dict.fromkeys(job_ids))

        async def fn(conn: _Conn) -> dict[str, Observed]:
            rows = await conn.fetch(_OBSERVED_SELECT, ids)
            return {row[0]: tuple(row[1:]) for row in rows}

        return await self._read("load_observed", fn)

    async def sweep_begin(self) -> int:
        previous = self._sweep_generation
        now = time.time()

        async def fn(conn: _Conn) -> int:
            await self._forget_sweep(conn, previous)
            # What a process that died mid-sweep left behind (no live sweep is that old).
            for stale in await conn.fetch(
                "SELECT generation FROM sweep_runs WHERE started_at < $1",
                now - _STAGE_MAX_AGE_S,
            ):
                await self._forget_sweep(conn, stale[0])
            generation = int(await conn.fetchval("SELECT nextval('sweep_generation')"))
            await conn.execute(
                "INSERT INTO sweep_runs (generation, started_at) VALUES ($1, $2)",
                generation,
                now,
            )
            return generation

        self._sweep_generation = await self._write("sweep_begin", fn)
        return self._sweep_generation

    @staticmethod
    async def _forget_sweep(
        conn: _Conn, generation: int, *, keep_run: bool = False
    ) -> None:
        await conn.execute("DELETE FROM sweep_stage WHERE generation = $1", generation)
        await conn.execute("DELETE FROM sweep_seen WHERE generation = $1", generation)
        if not keep_run:
            await conn.execute("DELETE FROM sweep_runs WHERE generation = $1", generation)

    def _check_generation(self, generation: int) -> None:
        if generation != self._sweep_generation:
            raise StoreError(f"sweep {generation} was superseded by {self._sweep_generation}")

    async def sweep_fingerprints(self) -> StoredFingerprints:
        async def fn(conn: _Conn) -> StoredFingerprints:
            # One bytea of 8 big-endian bytes a fingerprint: no row or object per job.
            row = await conn.fetchrow(_FINGERPRINTS)
            packed, without = (None, 0) if row is None else (row[0], row[1])
            known = array("q", packed or b"")
            if sys.byteorder == "little":
                known.byteswap()
            marks = int(await conn.fetchval("SELECT COUNT(*) FROM vanished"))
            return StoredFingerprints(known, int(without), marks)

        return await self._read("sweep_fingerprints", fn)

    async def sweep_stage(
        self,
        generation: int,
        seen: Sequence[tuple[str, str]],
        staged: Sequence[tuple[JobRow, int]],
    ) -> None:
        self._check_generation(generation)
        # One row per id and statement (ON CONFLICT cannot touch a row twice): the first status
        # counts, a repeat with another one within the page is a conflict already.
        listed: dict[str, list[Any]] = {}
        for job_id, status in seen:
            pair = listed.setdefault(job_id, [status, False])
            pair[1] = pair[1] or pair[0] != status
        # The first staging of a job counts: keep each id's first row.
        first: dict[str, tuple[JobRow, int]] = {}
        for row, base in staged:
            first.setdefault(row[0], (row, base))
        columns = _row_columns(row for row, _ in first.values())
        bases = [base for _, base in first.values()]

        async def fn(conn: _Conn) -> None:
            await conn.execute(
                _SEEN_INSERT,
                generation,
                list(listed),
                [row[0] for row in listed.values()],
                [row[1] for row in listed.values()],
            )
            if first:
                await conn.execute(_STAGE_INSERT, *columns, bases, generation)

        await self._write("sweep_stage", fn)

    async def sweep_unseen(
        self, generation: int, seen_before: float, unmatched: Collection[int] | None = None
    ) -> dict[str, JobState]:
        self._check_generation(generation)
        among = ""
        args: list[Any] = [seen_before, generation]
        if unmatched is not None:
            among = (
                " AND (fingerprint IS NULL OR fingerprint IN (SELECT unnest($3::bigint[])))"
            )
            args.append(list(unmatched))

        async def fn(conn: _Conn) -> dict[str, JobState]:
            sql = (
                f"{_JOB_SELECT} WHERE first_seen_at < $1{among} AND NOT EXISTS "  # noqa: S608
                "(SELECT 1 FROM sweep_seen s WHERE s.generation = $2 AND s.id = jobs.id)"
            )
            rows = await conn.fetch(sql, *args)
            return {row[0]: job_from_row(row) for row in rows}

        return await self._read("sweep_unseen", fn)

    async def sweep_stale_ids(self) -> set[str]:
        generation = self._sweep_generation

        async def fn(conn: _Conn) -> set[str]:
            sql = f"SELECT s.id FROM sweep_stage s WHERE s.generation = $1 AND NOT ({_STAGE_FRESH})"  # noqa: S608
            return {row[0] for row in await conn.fetch(sql, generation)}

        return await self._read("sweep_stale_ids", fn)

    async def sweep_conflicts(self, generation: int) -> set[str]:
        self._check_generation(generation)

        async def fn(conn: _Conn) -> set[str]:
            sql = "SELECT id FROM sweep_seen WHERE generation = $1 AND conflict"
            return {row[0] for row in await conn.fetch(sql, generation)}

        return await self._read("sweep_conflicts", fn)

    async def sweep_unstage(self, generation: int, job_ids: Sequence[str]) -> None:
        self._check_generation(generation)

        async def fn(conn: _Conn) -> None:
            await conn.execute(
                "DELETE FROM sweep_stage WHERE generation = $1 AND id = ANY($2::text[])",
                generation,
                list(job_ids),
            )

        if job_ids:
            await self._write("sweep_unstage", fn)

    async def commit_sweep(
        self,
        changes: SnapshotChanges,
        events: Sequence[RoutedEvent],
        meta: Mapping[str, str] | None = None,
        now: float | None = None,
        suspects: Mapping[str, float] | None = None,
    ) -> int:
        return await self._commit(changes, events, meta, now, sweep=True, suspects=suspects)

    # -- vanish bookkeeping (schema v6) --------------------------------------------------------

    async def vanished_seqs(self, job_ids: Sequence[str]) -> dict[str, int]:
        ids = list(dict.fromkeys(job_ids))
        if not ids:
            return {}

        async def fn(conn: _Conn) -> dict[str, int]:
            rows = await conn.fetch(
                "SELECT job_id, seq FROM vanished WHERE job_id = ANY($1::text[])", ids
            )
            return {row[0]: int(row[1]) for row in rows}

        return await self._read("vanished_seqs", fn)

    async def load_suspects(self) -> dict[str, float]:
        async def fn(conn: _Conn) -> dict[str, float]:
            rows = await conn.fetch("SELECT job_id, since FROM suspects")
            return {row[0]: float(row[1]) for row in rows}

        return await self._read("load_suspects", fn)

    async def stuck_marks(self, job_ids: Sequence[str]) -> dict[str, str]:
        ids = list(dict.fromkeys(job_ids))

        async def fn(conn: _Conn) -> dict[str, str]:
            rows = await conn.fetch(
                "SELECT job_id, event_id FROM stuck_marks WHERE job_id = ANY($1::text[])", ids
            )
            return {row[0]: row[1] for row in rows}

        return await self._read("stuck_marks", fn)

    async def template_version_counts(
        self, template_ids: Sequence[str], since: float
    ) -> dict[tuple[str, str], tuple[int, int, float]]:
        ids = list(dict.fromkeys(template_ids))

        async def fn(conn: _Conn) -> dict[tuple[str, str], tuple[int, int, float]]:
            found = await conn.fetch(
                "SELECT template_file_id, template_file_version_id, COUNT(*), "
                "COUNT(*) FILTER (WHERE status = ANY($3::text[])), MIN(first_seen_at) FROM jobs "
                "WHERE template_file_id = ANY($1::text[]) AND changed_at >= $2 "
                "AND status = ANY($4::text[]) AND template_file_version_id IS NOT NULL "
                "GROUP BY template_file_id, template_file_version_id",
                ids, since, list(rows.FAILED_STATUSES), sorted(TERMINAL_STATUSES),
            )
            return {(r[0], r[1]): (r[2], r[3], r[4]) for r in found}

        return await self._read("template_version_counts", fn)

    # -- leases (schema v8) ---------------------------------------------------------------------

    async def heartbeat(self, replica: str, ttl_s: float) -> int:
        async def fn(conn: _Conn) -> int:
            await conn.execute(_REPLICA_BEAT, replica, ttl_s)
            await conn.execute(_REPLICAS_FORGET)
            return int(await conn.fetchval(_REPLICAS_LIVE))

        return await self._write("heartbeat", fn, fenced=False)

    async def leave(self, replica: str) -> None:
        async def fn(conn: _Conn) -> None:
            await conn.execute("DELETE FROM replicas WHERE id = $1", replica)

        await self._write("leave", fn, fenced=False)

    async def acquire_lease(self, account: str, owner: str, ttl_s: float) -> Fence | None:
        async def fn(conn: _Conn) -> Fence | None:
            await conn.execute(f"SET LOCAL lock_timeout = '{LEASE_LOCK_TIMEOUT_S:.0f}s'")
            if await conn.fetchval(_LEASE_HELD, account):
                return None
            await conn.execute(_LEASE_ROW, account)
            await conn.execute(_LEASE_LOCK, account)
            epoch = await conn.fetchval(_LEASE_ACQUIRE, account, owner, ttl_s)
            return None if epoch is None else Fence(account, owner, int(epoch))

        return await self._write("acquire_lease", fn, fenced=False)

    async def renew_lease(self, fence: Fence, ttl_s: float) -> bool:
        async def fn(conn: _Conn) -> bool:
            await conn.execute(f"SET LOCAL lock_timeout = '{LEASE_LOCK_TIMEOUT_S:.0f}s'")
            status = await conn.execute(
                _LEASE_RENEW, fence.account, fence.owner, fence.epoch, ttl_s
            )
            return _row_count(status) == 1

        return await self._write("renew_lease", fn, fenced=False)

    async def release_lease(self, fence: Fence) -> None:
        async def fn(conn: _Conn) -> None:
            await conn.execute(_LEASE_RELEASE, fence.account, fence.owner, fence.epoch)

        await self._write("release_lease", fn, fenced=False)

    async def leases(self) -> dict[str, Lease]:
        async def fn(conn: _Conn) -> dict[str, Lease]:
            return {
                row[0]: Lease(row[0], row[1], int(row[2]), bool(row[3]))
                for row in await conn.fetch(_LEASES)
            }

        return await self._read("leases", fn)
    # -- whole tables, for `state migrate` ------------------------------------------------------

    async def dump_tables(self, chunk_rows: int) -> AsyncGenerator[TableChunk, None]:
        pool = self._open_pool()
        try:
            async with (
                pool.acquire() as conn,
                conn.transaction(isolation="repeatable_read", readonly=True),
            ):
                for table in COPIED_TABLES:
                    columns = await _columns(conn, table)
                    sql = f"SELECT {', '.join(columns)} FROM {table}"  # noqa: S608
                    cursor = await conn.cursor(sql)
                    while batch := await cursor.fetch(chunk_rows):
                        yield TableChunk(table, columns, [tuple(r) for r in batch])
        except _BACKEND_ERRORS as exc:
            raise StoreError(f"postgresql store dump_tables failed: {exc}") from exc

    async def load_tables(
        self, chunks: AsyncIterable[TableChunk], *, replace: bool
    ) -> dict[str, int]:
        async def fn(conn: _Conn) -> dict[str, int]:
            if replace:
                for table in reversed(COPIED_TABLES):  # the outbox before its events
                    await conn.execute(f"DELETE FROM {table}")  # noqa: S608 (constant names)
            else:
                held = [
                    table
                    for table in COPIED_TABLES
                    if await conn.fetchval(f"SELECT EXISTS (SELECT 1 FROM {table})")  # noqa: S608
                ]
                if held:
                    raise StoreNotEmpty(repr(self), held)
            copied = dict.fromkeys(COPIED_TABLES, 0)
            async for chunk in chunks:
                table, _ = copy_target(chunk)
                # PostgreSQL text cannot hold NUL; SQLite keeps one from an error body.
                records = [
                    tuple(v.replace("\x00", "\ufffd") if isinstance(v, str) else v for v in row)
                    for row in chunk.rows
                ]
                await conn.copy_records_to_table(
                    table, records=records, columns=list(chunk.columns)
                )
                copied[table] += len(records)
            # COPY writes identity columns as given; their sequences must move past them.
            for table, column in await conn.fetch(
                "SELECT table_name, column_name FROM information_schema.columns "
                "WHERE table_schema = current_schema() AND is_identity = 'YES' "
                "AND table_name = ANY($1::text[])",
                list(COPIED_TABLES),
            ):
                await conn.execute(
                    f"SELECT setval(pg_get_serial_sequence($1, $2), "  # noqa: S608
                    f"COALESCE(MAX({column}), 0) + 1, false) FROM {table}",
                    table,
                    column,
                )
            return copied

        return await self._write("load_tables", fn)

    # -- silences and the event history (v10) -------------------------------------------------

    async def add_silence(self, silence: Silence) -> None:
        async def fn(conn: _Conn) -> None:
            await conn.execute(
                f"INSERT INTO silences ({', '.join(SILENCE_COLUMNS)}) "  # noqa: S608 (constants)
                "VALUES ($1, $2, $3, $4, $5, $6, $7)",
                *silence_to_row(silence),
            )

        # An operator's write: any replica takes it, lease or not.
        await self._write("add_silence", fn, fenced=False)

    async def list_silences(self, ended_after: float | None = None) -> list[Silence]:
        async def fn(conn: _Conn) -> list[Silence]:
            rows = await conn.fetch(
                f"SELECT {', '.join(SILENCE_COLUMNS)} FROM silences "  # noqa: S608 (constants)
                "WHERE $1::float8 IS NULL OR ends_at > $1 ORDER BY created_at DESC, id",
                ended_after,
            )
            return [silence_from_row(row) for row in rows]

        return await self._read("list_silences", fn)

    async def expire_silence(self, silence_id: str, now: float) -> Silence | None:
        async def fn(conn: _Conn) -> Silence | None:
            await conn.execute(
                "UPDATE silences SET ends_at = GREATEST($1, starts_at) "
                "WHERE id = $2 AND ends_at > $1",
                now,
                silence_id,
            )
            row = await conn.fetchrow(
                f"SELECT {', '.join(SILENCE_COLUMNS)} FROM silences "  # noqa: S608 (constants)
                "WHERE id = $1",
                silence_id,
            )
            return None if row is None else silence_from_row(row)

        return await self._write("expire_silence", fn, fenced=False)

    async def mark_silenced(self, notifier: str, silenced: Mapping[str, str]) -> None:
        now = time.time()

        async def fn(conn: _Conn) -> None:
            await conn.execute(
                "UPDATE outbox o SET state = 'delivered', silence_id = s.silence_id, "
                "claimed_until = NULL, updated_at = $1 "
                "FROM unnest($2::text[], $3::text[]) AS s (event_id, silence_id) "
                "WHERE o.event_id = s.event_id AND o.notifier = $4 "
                "AND o.state IN ('pending', 'claimed')",
                now,
                list(silenced),
                list(silenced.values()),
                notifier,
            )

        if silenced:
            await self._write("mark_silenced", fn)

    async def list_events(self, query: EventQuery) -> list[EventRecord]:
        def json_text(path: str) -> str:
            # Written as `_EVENT_JOB_ID` is, so that a job's filter uses its index (v9).
            *parents, leaf = path.split(".")
            steps = "".join(f" -> '{p}'" for p in parents)
            return f"(payload::jsonb{steps} ->> '{leaf}')"

        where, args = event_filters(query, lambda n: f"${n}", json_text)

        async def fn(conn: _Conn) -> list[EventRecord]:
            events = await conn.fetch(
                f"SELECT seq, id, payload, created_at FROM events WHERE {where} "  # noqa: S608
                f"ORDER BY seq DESC LIMIT ${len(args) + 1}",
                *args,
                query.limit,
            )
            found = deliveries_by_event(
                await conn.fetch(
                    f"SELECT {DELIVERY_COLUMNS} FROM outbox "  # noqa: S608 (constants)
                    "WHERE event_id = ANY($1::text[])",
                    [row[1] for row in events],
                )
            )
            return [
                EventRecord(
                    Event.model_validate_json(row[2]),
                    row[0],
                    row[3],
                    tuple(found.get(row[1], ())),
                )
                for row in events
            ]

        return await self._read("list_events", fn)


async def _columns(conn: _Conn, table: str) -> tuple[str, ...]:
    rows = await conn.fetch(
        "SELECT column_name FROM information_schema.columns "
        "WHERE table_schema = current_schema() AND table_name = $1 ORDER BY ordinal_position",
        table,
    )
    return tuple(str(row[0]) for row in rows)
