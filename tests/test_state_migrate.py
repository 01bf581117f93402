"""`docgen-monitor state migrate`: a store populated through the commit paths moves from
SQLite to PostgreSQL (this test's schema of the machine's server, dropped after) and back,
every table equal, read with plain SQL on both sides; a target that holds state is refused,
bad URLs exit 2, and no password is ever printed. The command runs as a user runs it, as a
subprocess."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import sys
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import pytest

from monitor.identity import claim, stored_identity
from monitor.model import BoxIdentity, Event, EventJob, EventType, JobState, SnapshotChanges
from monitor.store.base import (
    COPIED_TABLES,
    NOT_COPIED_TABLES,
    EventQuery,
    OutboxState,
    RoutedEvent,
    Silence,
    Store,
    ThreadRef,
)
from monitor.store.postgres import PostgresStore
from monitor.store.sqlite import SQLiteStore

try:  # `python -m pytest` from the repository root, as the README says
    from tests.store_fixtures import POSTGRES_URL, PostgresBackend
except ModuleNotFoundError:  # plain `pytest`: only tests/ itself is on sys.path
    from store_fixtures import POSTGRES_URL, PostgresBackend  # type: ignore[no-redef]

CLI = [sys.executable, "-m", "monitor.cli"]
T0 = 1_800_000_000.0
PASSWORD = "s3cret-Migrate-pw"  # the test server trusts every local login and ignores it
IDENTITY = BoxIdentity("user-77", "ent-9")


def job(job_id: str, batch_id: str, status: str, seq: int, **kw: Any) -> JobState:
    return JobState(
        id=job_id,
        batch_id=batch_id,
        status=status,
        template_file_id="t1",
        output_type="pdf",
        seq=seq,
        first_seen_at=T0,
        changed_at=T0 + seq,
        **kw,
    )


def change(job_id: str, batch_id: str, to_status: str, kind: EventType) -> Event:
    return Event(
        id=f"{job_id}:{kind.value}:{to_status}",
        type=kind,
        detected_at=datetime(2027, 1, 15, 12, 0, tzinfo=UTC),
        from_status="pending",
        to_status=to_status,
        job=EventJob(
            id=job_id,
            batch_id=batch_id,
            status=to_status,
            template_file_id="t1",
            output_file_id=None,
            output_type="pdf",
        ),
    )


async def populate(store: Store) -> None:
    """Something in every table `state migrate` copies, written the way the daemon writes it:
    commits of snapshot rows with their events, deliveries, failures, dead letters, claims,
    threads, replies in doubt, groups, stuck and vanish marks, suspects, the identity."""
    await claim(store, IDENTITY, adopt=False, now=T0)
    jobs = [job(f"j{i}", f"b{i % 3}", "completed" if i % 2 else "pending", i) for i in range(40)]
    jobs.append(job("j-err", "b0", "failed", 7, errors=("bad «template»", "x\ny"),
                    warnings=("w",), output_file_id="f1", created_by_id="u1",
                    created_at="2027-01-15T12:00:00Z"))
    events = [
        RoutedEvent(change(j.id, j.batch_id, j.status, EventType.JOB_STATUS_CHANGED),
                    ("slack", "audit"))
        for j in jobs
    ]
    events.append(RoutedEvent(change("j2", "b2", "pending", EventType.JOB_STUCK), ("audit",)))
    await store.commit(SnapshotChanges(upserts=tuple(jobs)), events, meta={"k": "v"}, now=T0)
    await store.commit(SnapshotChanges(removals=("j0", "j1")), [], now=T0 + 5)
    await store.commit_sweep(SnapshotChanges(), [], now=T0 + 6, suspects={"j4": T0 + 6})
    ids = [e.event.id for e in events]
    await store.mark_delivered_many("slack", ids[:10])
    await store.mark_failed(ids[10], "slack", "HTTP 500: \x00 body", T0 + 60, now=T0 + 1)
    await store.mark_failed(ids[11], "slack", "gone", None, now=T0 + 1)  # dead
    await store.claim_due("audit", T0 + 1, 3, 30.0)  # claimed, as a crash leaves them
    await store.mark_throttled("audit", ids[20:22], T0 + 90)
    await store.save_thread("slack", "b0", ThreadRef("C1", "1700000000.000100"))
    await store.set_pending_edit("slack", "b0", "edited text", T0 + 2)
    await store.start_thread_post("slack", "b1", T0 + 3)  # a parent post in doubt
    await store.start_reply_post("slack", "b0", "reply-1", T0 + 4)
    await store.set_group_flushed("slack", "batch:b0", T0 + 7)
    await store.add_silence(Silence("s1", {"template_id": ("t1",)}, T0, T0 + 7200,
                                    "fixing «tags»", "alice", T0))
    await store.mark_silenced("audit", {ids[30]: "s1"})


async def roles_view(store: Store) -> dict[str, Any]:
    """What the daemon reads back through the roles."""
    batches = ["b0", "b1", "b2"]
    return {
        "snapshot": await store.load_snapshot(),
        # The NUL PostgreSQL cannot hold reads as U+FFFD from both.
        "outbox": {
            s: [replace(e, last_error=clean(e.last_error))
                for e in await store.list_outbox(s, limit=10_000)]
            for s in OutboxState
        },
        "counts": await store.outbox_counts(),
        "threads": [await store.get_thread("slack", b) for b in batches],
        "edits": await store.pending_edits("slack"),
        "replies": [await store.reply_posts_in_doubt("slack", b) for b in batches],
        "groups": await store.group_flushed_at("slack", "batch:b0"),
        "stuck": await store.stuck_marks(["j2"]),
        "vanished": await store.vanished_seqs(["j0", "j1", "j2"]),
        "suspects": await store.load_suspects(),
        "identity": await stored_identity(store),
        "meta": await store.get_meta("k"),
        "due": await store.next_due_at("slack"),
        "silences": await store.list_silences(),
        "history": [(r.seq, r.event.id, [(d.notifier, d.outcome, d.silence_id)
                                         for d in r.deliveries])
                    for r in await store.list_events(EventQuery(limit=1000))],
    }


def sqlite_tables(path: Path) -> dict[str, list[tuple[Any, ...]]]:
    """Every table of the file, every row with its column names, by plain SQL."""
    with sqlite3.connect(path) as conn:
        names = [r[0] for r in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'")]
        return {name: _rows(conn.execute(f"SELECT * FROM {name}")) for name in names}  # noqa: S608


def _rows(cur: sqlite3.Cursor) -> list[tuple[Any, ...]]:
    columns = [d[0] for d in cur.description]
    return sorted((tuple(zip(columns, row, strict=True)) for row in cur), key=repr)


async def postgres_tables(schema: str) -> dict[str, list[tuple[Any, ...]]]:
    conn = await asyncpg.connect(POSTGRES_URL, timeout=5)
    try:
        names = [r[0] for r in await conn.fetch(
            "SELECT tablename FROM pg_tables WHERE schemaname = $1", schema)]
        return {
            name: sorted((tuple(r.items()) for r in await conn.fetch(
                f'SELECT * FROM "{schema}"."{name}"')), key=repr)  # noqa: S608
            for name in names
        }
    finally:
        await conn.close()


def clean(value: Any) -> Any:
    """PostgreSQL text cannot hold NUL: the store keeps U+FFFD for it."""
    return value.replace("\x00", "\ufffd") if isinstance(value, str) else value


def copied(tables: dict[str, list[tuple[Any, ...]]]) -> dict[str, list[tuple[Any, ...]]]:
    """The tables a move carries, each row's (column, value) pairs by column name."""
    return {
        t: sorted((tuple(sorted((c, clean(v)) for c, v in row)) for row in tables[t]), key=repr)
        for t in COPIED_TABLES
    }


async def migrate(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        *CLI, "state", "migrate", *args, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), timeout=60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def with_password(url: str) -> str:
    parts = urlsplit(url)
    return parts._replace(
        netloc=f"{parts.username or 'postgres'}:{PASSWORD}@{parts.hostname}:{parts.port or 5432}"
    ).geturl()


@pytest.fixture
async def populated(tmp_path: Path) -> Path:
    path = tmp_path / "state.db"
    async with SQLiteStore(str(path)) as store:
        await populate(store)
    return path


async def test_sqlite_to_postgres_copies_every_table_and_the_daemon_reads_it_the_same(
    populated: Path, pg_backend: PostgresBackend
) -> None:
    target = with_password(pg_backend.url)
    code, out, err = await migrate("--from", f"sqlite:///{populated}", "--to", target)
    assert code == 0, err
    assert PASSWORD not in out + err
    assert "postgres:**********@" in err
    rows = {table: int(n) for account, table, n in (line.split("\t") for line in out.splitlines())
            if account == "default"}
    assert set(rows) == set(COPIED_TABLES) and rows["jobs"] == 39 and rows["outbox"] > 80

    source_tables = sqlite_tables(populated)
    target_tables = await postgres_tables(pg_backend.schema)
    for tables in (source_tables, target_tables):  # every table is copied or known not to be
        assert set(COPIED_TABLES) <= set(tables) <= set(COPIED_TABLES) | set(NOT_COPIED_TABLES)
    assert all(source_tables[t] for t in COPIED_TABLES), "populate() must fill every table"
    assert copied(target_tables) == copied(source_tables)

    async with SQLiteStore(str(populated)) as src, PostgresStore(pg_backend.url) as dst:
        before, after = await roles_view(src), await roles_view(dst)
        assert after == before
        assert after["identity"] == IDENTITY
        # New events are ordered after the copied ones (the event sequence moved past them).
        new = RoutedEvent(change("j9", "b0", "failed", EventType.JOB_STATUS_CHANGED), ("late",))
        await dst.commit(SnapshotChanges(), [new], now=T0 - 1000)
        seqs = await postgres_tables(pg_backend.schema)
        top = max(seqs["events"], key=lambda row: dict(row)["seq"])
        assert dict(top)["id"] == new.event.id


async def test_a_target_that_holds_state_is_refused_and_left_as_it_was_unless_replace(
    populated: Path, pg_backend: PostgresBackend
) -> None:
    async with PostgresStore(pg_backend.url) as other:
        await claim(other, BoxIdentity("someone-else"), adopt=False, now=T0)
    before = await postgres_tables(pg_backend.schema)

    code, out, err = await migrate("--from", f"sqlite:///{populated}", "--to", pg_backend.url)
    assert code == 2 and out == ""
    assert "already holds state (meta)" in err and "--replace" in err
    assert "Traceback" not in err
    assert await postgres_tables(pg_backend.schema) == before

    code, _, err = await migrate(
        "--from", f"sqlite:///{populated}", "--to", pg_backend.url, "--replace")
    assert code == 0, err
    assert copied(await postgres_tables(pg_backend.schema)) == copied(sqlite_tables(populated))
    async with PostgresStore(pg_backend.url) as dst:
        assert await stored_identity(dst) == IDENTITY  # the other identity is gone


async def test_a_round_trip_through_postgresql_gives_back_the_same_sqlite_file(
    populated: Path, pg_backend: PostgresBackend, tmp_path: Path
) -> None:
    back = tmp_path / "back" / "state.db"
    code, _, err = await migrate("--from", f"sqlite:///{populated}", "--to", pg_backend.url)
    assert code == 0, err
    code, _, err = await migrate("--from", pg_backend.url, "--to", f"sqlite:///{back}")
    assert code == 0, err
    assert copied(sqlite_tables(back)) == copied(sqlite_tables(populated))
    async with SQLiteStore(str(populated)) as src, SQLiteStore(str(back)) as dst:
        # The NUL byte became U+FFFD in PostgreSQL and stays so: everything else is equal.
        [failed] = [e for e in (await dst.list_outbox(OutboxState.PENDING)) if e.last_error]
        assert failed.last_error == "HTTP 500: \ufffd body"
        assert (await roles_view(dst))["snapshot"] == (await roles_view(src))["snapshot"]
        assert await dst.outbox_counts() == await src.outbox_counts()


async def test_bad_urls_exit_2_listing_each_problem_without_the_password(
    tmp_path: Path, pg_backend: PostgresBackend
) -> None:
    env = {"PATH": "/usr/bin:/bin", "PG_PASSWORD": PASSWORD}
    code, out, err = await migrate(
        "--from", "mysql://root:hunter2-x@db/monitor",
        "--to", "postgresql://monitor:${PG_PASSWORD}@/nohost",
        env=env,
    )
    assert code == 2 and out == ""
    assert "--from: unsupported state url scheme 'mysql'" in err
    assert "--to: expected postgresql://" in err
    assert "Traceback" not in err and PASSWORD not in err

    code, _, err = await migrate(
        "--from", f"sqlite:///{tmp_path}/missing.db", "--to", "postgresql://u:${UNSET_PW}@h/db",
        env={"PATH": "/usr/bin:/bin"})
    assert code == 2
    assert "--to: environment variable UNSET_PW is not set" in err

    code, _, err = await migrate(
        "--from", f"sqlite:///{tmp_path}/missing.db", "--to", pg_backend.url)
    assert code == 2 and "does not exist; nothing was copied" in err
    assert not (tmp_path / "missing.db").exists()

    empty = tmp_path / "empty.db"
    async with SQLiteStore(str(empty)):
        pass
    code, _, err = await migrate("--from", f"sqlite:///{empty}", "--to", pg_backend.url)
    assert code == 2 and "holds no state; nothing was copied" in err


async def test_an_unreachable_target_fails_with_exit_1_naming_it_without_its_password(
    populated: Path, unused_tcp_port: int
) -> None:
    url = f"postgresql://monitor:{PASSWORD}@127.0.0.1:{unused_tcp_port}/db?connect_timeout=1"
    code, out, err = await migrate("--from", f"sqlite:///{populated}", "--to", url)
    assert code == 1 and out == ""
    assert f"127.0.0.1:{unused_tcp_port}" in err and "monitor:**********@" in err
    assert PASSWORD not in err and "Traceback" not in err


async def test_a_store_a_daemon_runs_on_is_refused_sqlite_by_its_lock_postgresql_by_a_lease(
    populated: Path, pg_backend: PostgresBackend
) -> None:
    """A copy of a store in use would miss what the daemon writes after it (or write under
    it): a SQLite file whose replica lock is held, and a PostgreSQL with a live lease, refuse."""
    with SQLiteStore(str(populated)).replica_lock():  # as `docgen-monitor run` holds it
        code, out, err = await migrate("--from", f"sqlite:///{populated}", "--to", pg_backend.url)
    assert code == 2 and out == ""
    assert f"another docgen-monitor (pid {os.getpid()}) is running" in err

    async with PostgresStore(pg_backend.url) as running:
        fence = await running.acquire_lease("default", "replica-a", 60.0)
        assert fence is not None
        code, _, err = await migrate("--from", f"sqlite:///{populated}", "--to", pg_backend.url)
        assert code == 2 and "replicas are running on" in err and "lease of default" in err
        await running.release_lease(fence)
    code, _, err = await migrate("--from", f"sqlite:///{populated}", "--to", pg_backend.url)
    assert code == 0, err


async def test_each_named_account_moves_into_its_own_store_beside_the_target(
    populated: Path, pg_backend: PostgresBackend, tmp_path: Path
) -> None:
    """With `accounts:`, each account's state is its own store (a sibling file, a schema of
    its own): `--account` moves each into the target's place for it."""
    acme = tmp_path / "state.acme.db"  # SQLiteStore.account_url's sibling of state.db
    async with SQLiteStore(str(acme)) as store:
        await claim(store, BoxIdentity("acme-user"), adopt=False, now=T0)
    code, out, err = await migrate("--from", f"sqlite:///{populated}", "--to", pg_backend.url,
                                   "--account", "default", "--account", "acme")
    assert code == 0, err
    assert {line.split("\t")[0] for line in out.splitlines()} == {"default", "acme"}
    acme_schema = f"{pg_backend.schema}_acme"  # PostgresStore.account_url's schema
    try:
        assert copied(await postgres_tables(acme_schema)) == copied(sqlite_tables(acme))
        assert copied(await postgres_tables(pg_backend.schema)) == copied(sqlite_tables(populated))
    finally:
        conn = await asyncpg.connect(POSTGRES_URL, timeout=5)
        try:
            await conn.execute(f'DROP SCHEMA IF EXISTS "{acme_schema}" CASCADE')
        finally:
            await conn.close()

    code, _, err = await migrate("--from", f"sqlite:///{populated}", "--to", pg_backend.url,
                                 "--account", "Bad Name")
    assert code == 2 and "--account: 'Bad Name' is not an account name" in err
