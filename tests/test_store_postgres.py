"""What only the PostgreSQL backend has to get right (the contract suite covers the rest):
concurrent starters, staging seen from every pooled connection, connection loss (through a TCP
proxy the test cuts, so the machine's server keeps running), sslmode and the URL's password."""

from __future__ import annotations

import asyncio
from pathlib import Path
from urllib.parse import urlsplit

import asyncpg
import pytest
from pydantic import ValidationError
from structlog.testing import capture_logs

from monitor.config import StateConfig, load_config
from monitor.errors import StoreError
from monitor.model import SnapshotChanges
from monitor.store import open_store
from monitor.store.base import Fence, OutboxState, Store
from monitor.store.postgres import MIGRATIONS, PostgresStore
from monitor.store.rows import job_to_row
from tests.harness import wait_until
from tests.store_fixtures import (
    POSTGRES_URL,
    PostgresBackend,
    of_another_build,
    postgres_admin,
)
from tests.tcp_proxy import TcpProxy
from tests.test_store_contract import T0, ZERO_COUNTS, ids, job, routed


def proxied_store(
    pg_backend: PostgresBackend, pg_proxy: TcpProxy, password: str | None = None
) -> Store:
    store = PostgresStore(pg_backend.url_through(pg_proxy.port, password))
    pg_backend.built.append(store)  # closed, and checked for leaks, with the others
    return store


async def rows_in(pg_backend: PostgresBackend, table: str) -> object:
    return await postgres_admin(f'SELECT COUNT(*) FROM "{pg_backend.schema}".{table}')  # noqa: S608


async def test_concurrent_starters_migrate_an_empty_schema_exactly_once(
    pg_backend: PostgresBackend,
) -> None:
    """Four processes' worth of stores open one new schema at once: all of them open, and each
    migration step was applied once (the advisory lock makes the others wait, then skip)."""
    stores = [pg_backend.build() for _ in range(4)]
    await asyncio.gather(*(store.open() for store in stores))
    versions = await postgres_admin(
        f'SELECT array_agg(version ORDER BY version) FROM "{pg_backend.schema}".schema_version'  # noqa: S608
    )
    assert versions == list(range(1, len(MIGRATIONS) + 1))
    for store in stores:
        await store.ping()


async def test_sweep_pages_staged_on_different_pooled_connections_all_count(
    pg_backend: PostgresBackend,
) -> None:
    """Pages staged at once go over several pooled connections; the sweep sees all of them
    (a per-connection TEMP table would lose the pages staged on the other connections)."""
    store = pg_backend.build()
    await store.open()
    await store.commit(SnapshotChanges(upserts=tuple(
        job(f"old{i}", seq=1, first_seen_at=T0) for i in range(8))), [])
    generation = await store.sweep_begin()
    pages = [([(f"old{i}", "pending")], [(job_to_row(job(f"new{i}", seq=1, first_seen_at=T0)), 0)])
             for i in range(4)]
    await asyncio.gather(*(store.sweep_stage(generation, seen, rows) for seen, rows in pages))
    used = await postgres_admin(
        "SELECT COUNT(*) FROM pg_stat_activity WHERE application_name = $1", pg_backend.schema
    )
    assert used > 1  # the pages really did go over more than one connection
    assert set(await store.sweep_unseen(generation, T0 + 1)) == {f"old{i}" for i in range(4, 8)}
    await store.commit_sweep(SnapshotChanges(), [])
    assert {f"new{i}" for i in range(4)} <= set(await store.load_snapshot())


async def test_two_stores_on_one_schema_keep_their_sweeps_apart(
    pg_backend: PostgresBackend,
) -> None:
    """A sweep that begins in another process forgets nothing this process staged."""
    first, second = pg_backend.build(), pg_backend.build()
    await first.open()
    await second.open()
    mine = await first.sweep_begin()
    await first.sweep_stage(mine, [("a", "pending")], [(job_to_row(job("a", seq=1)), 0)])
    theirs = await second.sweep_begin()
    await second.sweep_stage(theirs, [("b", "pending")], [(job_to_row(job("b", seq=1)), 0)])
    await first.commit_sweep(SnapshotChanges(), [])
    assert set(await first.load_snapshot()) == {"a"}
    await second.commit_sweep(SnapshotChanges(), [])
    assert set(await first.load_snapshot()) == {"a", "b"}


async def test_a_read_outlasts_a_short_outage_and_each_retry_is_logged(
    pg_backend: PostgresBackend, pg_proxy: TcpProxy
) -> None:
    store = proxied_store(pg_backend, pg_proxy)
    await store.open()
    await store.commit(SnapshotChanges(upserts=(job("j1"),)), [])
    await pg_proxy.cut()
    with capture_logs() as logs:
        read = asyncio.create_task(store.load_snapshot())
        await wait_until(lambda: _logged(logs, "store.retry"), 5, "a first retry")
        await pg_proxy.restore()
        assert set(await asyncio.wait_for(read, 10)) == {"j1"}
    retries = [entry for entry in logs if entry["event"] == "store.retry"]
    assert retries and all(r["op"] == "load_snapshot" and r["log_level"] == "warning"
                           for r in retries)


async def _logged(logs: list[dict[str, object]], event: str) -> bool:
    return any(entry["event"] == event for entry in logs)


async def test_an_outage_longer_than_the_retries_is_a_store_error_without_the_password(
    pg_backend: PostgresBackend, pg_proxy: TcpProxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Retries are bounded: past the last one the caller gets StoreError. The URL's password
    shows neither in the error nor in the retry logs."""
    monkeypatch.setattr("monitor.store.postgres.RETRY_DELAYS_S", (0.05, 0.05))
    store = proxied_store(pg_backend, pg_proxy, password="hunter2")
    await store.open()
    await pg_proxy.cut()
    with capture_logs() as logs, pytest.raises(StoreError) as failed:
        await store.load_snapshot()
    assert [entry["delay_s"] for entry in logs if entry["event"] == "store.retry"] == [0.05, 0.05]
    assert "hunter2" not in str(failed.value) and "hunter2" not in repr(logs)
    assert "load_snapshot failed" in str(failed.value)


async def test_a_server_that_falls_silent_fails_a_read_in_bounded_time(
    pg_backend: PostgresBackend, pg_proxy: TcpProxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A partition sends no reset: without a statement limit the read would wait forever.
    It fails after the limit and the retries, and the store works again once the network
    does (the limits are shortened here: this test is about them)."""
    monkeypatch.setattr("monitor.store.postgres.COMMAND_TIMEOUT_S", 0.5)
    monkeypatch.setattr("monitor.store.postgres.RETRY_DELAYS_S", (0.05,))
    store = PostgresStore(pg_backend.url_through(pg_proxy.port) + "&connect_timeout=0.5")
    pg_backend.built.append(store)
    await store.open()
    await store.commit(SnapshotChanges(upserts=(job("j1"),)), [])
    pg_proxy.freeze()
    with capture_logs() as logs, pytest.raises(StoreError):
        await asyncio.wait_for(store.load_snapshot(), 10)
    assert [entry["op"] for entry in logs if entry["event"] == "store.retry"] == ["load_snapshot"]
    pg_proxy.thaw()
    assert set(await asyncio.wait_for(store.load_snapshot(), 10)) == {"j1"}


async def test_a_commit_in_flight_when_postgresql_goes_away_commits_nothing(
    pg_backend: PostgresBackend, pg_proxy: TcpProxy
) -> None:
    """The connection drops while the commit's transaction waits inside PostgreSQL: the caller
    gets StoreError, none of it is committed, and the same commit made again lands whole."""
    store = proxied_store(pg_backend, pg_proxy)
    await store.open()
    jobs = tuple(job(f"j{i:05d}") for i in range(1000))
    admin = await asyncpg.connect(POSTGRES_URL)
    try:
        # Hold the meta table so that the commit stops at its last statement, mid-transaction.
        blocker = admin.transaction()
        await blocker.start()
        await admin.execute(f'LOCK TABLE "{pg_backend.schema}".meta IN ACCESS EXCLUSIVE MODE')
        commit = asyncio.create_task(store.commit(
            SnapshotChanges(upserts=jobs), [routed("e1", "slack")], meta={"k": "v"}, now=T0))

        async def waiting_on_the_lock() -> bool:
            return bool(await postgres_admin(
                "SELECT COUNT(*) FROM pg_stat_activity WHERE application_name = $1 "
                "AND wait_event_type = 'Lock'", pg_backend.schema))

        await wait_until(waiting_on_the_lock, 10, "the commit to wait on the meta lock")
        await pg_proxy.cut()
        with pytest.raises(StoreError):
            await asyncio.wait_for(commit, 10)
        await blocker.rollback()
    finally:
        await admin.close()

    async def gone() -> bool:  # PostgreSQL rolls the orphaned transaction back as it ends
        return not await postgres_admin(
            "SELECT COUNT(*) FROM pg_stat_activity WHERE application_name = $1", pg_backend.schema)

    await wait_until(gone, 10, "the orphaned session to end")
    assert await rows_in(pg_backend, "jobs") == 0
    assert await rows_in(pg_backend, "events") == 0
    assert await rows_in(pg_backend, "meta") == 0

    await pg_proxy.restore()
    assert await store.commit(
        SnapshotChanges(upserts=jobs), [routed("e1", "slack")], meta={"k": "v"}, now=T0) == 1
    assert len(await store.load_snapshot()) == len(jobs)
    assert ids(await store.list_outbox(OutboxState.PENDING)) == ["e1"]


async def test_sslmode_is_honoured(pg_backend: PostgresBackend) -> None:
    """`sslmode=require` never falls back to a plain connection (a server without TLS is
    refused at once, without retries); `disable` never uses TLS."""
    server_ssl = await postgres_admin("SHOW ssl") == "on"
    plain = PostgresStore(f"{pg_backend.url}&sslmode=disable")
    pg_backend.built.append(plain)
    await plain.open()
    assert await postgres_admin(
        "SELECT bool_or(s.ssl) FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) "
        "WHERE a.application_name = $1", pg_backend.schema) is False
    await plain.close()
    required = PostgresStore(f"{pg_backend.url}&sslmode=require")
    pg_backend.built.append(required)
    if server_ssl:
        await required.open()
        assert await postgres_admin(
            "SELECT bool_and(s.ssl) FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) "
            "WHERE a.application_name = $1", pg_backend.schema) is True
    else:
        with capture_logs() as logs, pytest.raises(StoreError, match="SSL"):
            await required.open()
        assert not await _logged(logs, "store.retry")  # a refusal is final, not an outage


async def test_the_url_password_comes_from_the_environment_and_is_never_rendered(
    pg_backend: PostgresBackend, tmp_path: Path
) -> None:
    parts = urlsplit(pg_backend.url)
    url = parts._replace(netloc=f"postgres:${{PG_PASSWORD}}@{parts.hostname}:{parts.port}").geturl()
    path = tmp_path / "config.yaml"
    path.write_text(
        "box: {auth: {method: developer_token, token: t}}\n"
        f"state: {{url: '{url}'}}\n"
    )
    config = load_config(path, env={"PG_PASSWORD": "hunter2"})
    assert ":hunter2@" in config.state.url
    rendered = config.redacted()["state"]["url"]
    assert "hunter2" not in rendered and ":**********@" in rendered
    async with open_store(config.state.url) as store:
        assert "hunter2" not in repr(store)
        await store.ping()


def test_a_malformed_postgresql_url_names_the_expected_form() -> None:
    with pytest.raises(ValidationError, match="expected postgresql://user:password@host"):
        StateConfig(url="postgresql:///no-host")
    with pytest.raises(ValidationError, match="connect_timeout= needs a number of seconds"):
        StateConfig(url="postgresql://h/db?connect_timeout=soon")


async def test_the_delivered_counter_starts_from_the_rows_an_older_build_delivered(
    pg_backend: PostgresBackend,
) -> None:
    """Schema v5 counts delivered rows once, at migration; its trigger keeps the count through
    deliveries and deletions from then on."""
    async with of_another_build(PostgresStore, -(len(MIGRATIONS) - 4))(pg_backend.url) as older:
        await older.commit(SnapshotChanges(), [routed(f"e{i}", "slack") for i in range(3)])
    await postgres_admin(  # what the older build's mark_delivered wrote
        f'UPDATE "{pg_backend.schema}".outbox SET state = \'delivered\' '  # noqa: S608
        "WHERE event_id IN ('e0', 'e1')"
    )
    store = pg_backend.build()
    await store.open()
    assert await store.outbox_counts() == {
        "slack": {**ZERO_COUNTS, OutboxState.DELIVERED: 2, OutboxState.PENDING: 1}}
    await store.mark_delivered("e2", "slack")
    assert (await store.outbox_counts())["slack"][OutboxState.DELIVERED] == 3
    await store.prune(before=float("inf"))
    assert await store.outbox_counts() == {}


async def test_claimers_in_two_processes_never_hand_out_one_row_twice(
    pg_backend: PostgresBackend,
) -> None:
    """Two stores on one schema (two processes' pools) claim at once, over and over: every row
    is handed out exactly once (the rows a claim takes are locked, and skipped by the other)."""
    first, second = pg_backend.build(), pg_backend.build()
    await first.open()
    await second.open()
    await first.commit(SnapshotChanges(), [routed(f"e{i:03d}", "slack") for i in range(200)])
    claimed: list[str] = []
    while True:
        rounds = await asyncio.gather(
            *(store.claim_due("slack", T0 + 1e6, 7, 30.0) for store in (first, second) * 3)
        )
        batch = [event_id for entries in rounds for event_id in ids(entries)]
        if not batch:
            break
        claimed += batch
    assert sorted(claimed) == [f"e{i:03d}" for i in range(200)]


async def test_a_takeover_waits_for_the_holders_write_in_flight_but_a_renewal_does_not(
    pg_backend: PostgresBackend,
) -> None:
    """The fence's row lock (held here by a transaction standing for the holder's write in
    flight) serialises an acquisition behind it, and never a renewal: a steady stream of the
    holder's writes must not starve its own renewals."""
    a, b = PostgresStore(pg_backend.url), PostgresStore(pg_backend.url)
    await a.open()
    await b.open()
    try:
        fence = await a.acquire_lease("acme", "a", 0.0)  # expired at once: free to take over
        assert fence is not None
        writer = await asyncpg.connect(pg_backend.url.split("?")[0], timeout=5)
        try:
            in_flight = writer.transaction()
            await in_flight.start()
            await writer.execute(
                f'SELECT 1 FROM "{pg_backend.schema}".leases WHERE account = $1 AND epoch = $2 '  # noqa: S608
                "FOR KEY SHARE", "acme", fence.epoch)
            assert await asyncio.wait_for(a.renew_lease(fence, 0.0), 1.0) is True
            takeover = asyncio.ensure_future(b.acquire_lease("acme", "b", 60.0))
            await asyncio.sleep(0.5)
            assert not takeover.done()  # waits for the write in flight
            await in_flight.commit()
            assert (await asyncio.wait_for(takeover, 2.0)) == Fence("acme", "b", fence.epoch + 1)
        finally:
            await writer.close()
    finally:
        await a.close()
        await b.close()
