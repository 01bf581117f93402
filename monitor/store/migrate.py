"""Moving the state from one store to another (`docgen-monitor state migrate`): SQLite to
PostgreSQL when a deployment grows replicas, or back, or between two databases.

A table-level copy, not a replay through the roles: the roles do not show everything a store
keeps (attempt counts, creation times, the order of events), and a replay would mint nothing
but could lose those. Both stores are opened as the daemon opens them, so each is migrated to
this build's schema first and the two agree on every table's columns. The source is read in one
transaction and the target written in one: a copy that fails leaves the target as it was."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from contextlib import aclosing
from pathlib import Path

from monitor.config import url_without_password
from monitor.errors import StoreError
from monitor.store.base import TableChunk
from monitor.store.registry import account_url, open_store
from monitor.store.sqlite import SQLiteStore

CHUNK_ROWS = 5_000  # rows read and written at a time: bounded memory for a million jobs


class NothingToMigrate(StoreError):
    def __init__(self, where: str, why: str) -> None:
        super().__init__(f"the source store {where} {why}; nothing was copied")


class StoreInUse(StoreError):
    def __init__(self, where: str, accounts: list[str]) -> None:
        super().__init__(
            f"replicas are running on {where} (they hold the lease of {', '.join(accounts)}); "
            "stop them first; nothing was copied"
        )


async def migrate_accounts(
    from_url: str, to_url: str, accounts: Sequence[str], *, replace: bool = False
) -> dict[str, dict[str, int]]:
    """`migrate_state` for the state of each Box account in turn (`account_url`: the
    `default` account's is the URL itself), each in its own transactions; rows per table by
    account. A failure stops there: the accounts before it are copied, the rest are not."""
    return {
        account: await migrate_state(
            account_url(from_url, account),
            account_url(to_url, account),
            replace=replace,
            leases_of=(from_url, to_url),
        )
        for account in accounts
    }


async def migrate_state(
    from_url: str,
    to_url: str,
    *,
    replace: bool = False,
    chunk_rows: int = CHUNK_ROWS,
    leases_of: tuple[str, str] | None = None,
) -> dict[str, int]:
    """Copy every table `COPIED_TABLES` names from the store at `from_url` into the one at
    `to_url`; returns rows per table. Raises `StoreNotEmpty` when the target holds state and
    not `replace`, `NothingToMigrate` for a missing or empty source or one URL for both,
    `StoreLocked` or `StoreInUse` while a daemon runs on either, `StoreError` when either
    store fails (then the target is unchanged). `leases_of`: the base stores (source, target)
    whose lease tables an account's stores share."""
    source, target = open_store(from_url), open_store(to_url)
    if leases_of is not None:
        source.share_leases_of(leases_of[0])
        target.share_leases_of(leases_of[1])
    if from_url == to_url:
        raise NothingToMigrate(url_without_password(from_url), "is also the target")
    # Opening a SQLite file that is not there would create it (a misspelt path copies nothing).
    if isinstance(source, SQLiteStore) and not await asyncio.to_thread(
        Path(source.path).is_file
    ):
        raise NothingToMigrate(repr(source), "does not exist")
    # A daemon running on either store would go on writing what the copy does not see (or
    # under it): a SQLite file's replica lock refuses while one runs, a live lease says so.
    with source.replica_lock(), target.replica_lock():
        async with source, target, aclosing(source.dump_tables(chunk_rows)) as chunks:
            for store in (source, target):
                if live := sorted(a for a, lease in (await store.leases()).items() if lease.live):
                    raise StoreInUse(repr(store), live)
            # Looked at before the target is touched: `replace` must not empty it for nothing.
            first = await anext(chunks, None)
            if first is None:
                raise NothingToMigrate(repr(source), "holds no state")
            return await target.load_tables(_chain(first, chunks), replace=replace)


async def _chain(first: TableChunk, rest: AsyncIterator[TableChunk]) -> AsyncIterator[TableChunk]:
    yield first
    async for chunk in rest:
        yield chunk
