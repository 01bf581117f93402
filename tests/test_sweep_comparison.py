"""A sweep recognises unchanged listing entries by their fingerprint (or, for a row stored without
one, by comparing them with what the row holds), and sends only the rest through the pure diff.
Over a real socket (a local server answering the pages the test writes), each change below must
come out of a sweep exactly as the pure diff over every entry (no shortcut) makes it: the same
events, the same rows, with fingerprints and without. An entry that breaks Box's schema is set
aside even when every field the comparison reads is unchanged. A first baseline writes the rows
the pure diff makes, and an id listed both as stored and with another status is read by id."""

from __future__ import annotations

import copy
import sqlite3
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import web
from pydantic import SecretStr

from monitor.box.auth import DeveloperTokenAuth
from monitor.box.budget import RequestBudget
from monitor.box.client import BoxClient
from monitor.box.listing import parse_listing
from monitor.diff import drop_regressions, events_for, snapshot_changes
from monitor.metrics import Metrics
from monitor.model import Observation
from monitor.notify.router import Router
from monitor.poller import Poller, listed_job_state
from monitor.recorder import Recorder
from monitor.store.rows import fingerprint, observed_of
from monitor.store.sqlite import SQLiteStore

TOKEN = "comparison-token"
T0 = 1_900_000_000.0
Entry = dict[str, Any]

ACCOUNT = {"account": "default"}  # the account a `Metrics()` serves


def entry(n: int, status: str = "completed", **fields: Any) -> Entry:
    done = status in ("completed", "completed_with_error")
    body: Entry = {
        "id": f"{5000 + n}", "type": "docgen_job",
        "batch": {"id": f"b{n // 4}", "type": "docgen_batch"},
        "template_file": {"id": "t1", "type": "file"},
        "template_file_version": {"id": "tv1", "type": "file_version"},
        "output_file": {"id": f"f{n}", "type": "file"} if done else None,
        "status": status, "output_type": "pdf",
        "failures": {"errors": [], "warnings": ["logo resized"]} if n % 3 == 0 else None,
        "created_at": "2026-05-01T10:00:00Z", "created_by": {"id": "u1", "type": "user"},
        "enterprise": {"id": "e1", "type": "enterprise"}, "source": "api",
    }
    body.update(fields)
    return body


def history() -> list[Entry]:
    """Twelve jobs in three batches; batch b2 still running."""
    return [entry(n, "pending" if n >= 9 else "completed") for n in range(12)]


@dataclass
class Listing:
    """The pages the local server answers, two entries a page (the sweep reads several)."""

    entries: list[Entry] = field(default_factory=history)

    def page(self, index: int) -> bytes:
        chunk = self.entries[index * 2 : index * 2 + 2]
        more = (index + 1) * 2 < len(self.entries)
        return orjson.dumps(
            {"entries": chunk, "limit": 2, "next_marker": f"m{index + 1}" if more else None}
        )


@dataclass
class Rig:
    listing: Listing
    store: SQLiteStore
    metrics: Metrics
    poller: Callable[[float], Poller]
    path: Path
    reads: list[str] = field(default_factory=list)  # jobs read by id (each answered 404)

    def sql(self, statement: str) -> list[tuple[object, ...]]:
        """`statement` on the store's file, from a second connection (the store is idle)."""
        with sqlite3.connect(self.path) as conn:
            return conn.execute(statement).fetchall()


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    listing = Listing()

    async def jobs(request: web.Request) -> web.Response:
        assert request.headers["Authorization"] == f"Bearer {TOKEN}"
        marker = request.query.get("marker", "m0")
        return web.Response(body=listing.page(int(marker[1:])), content_type="application/json")

    reads: list[str] = []

    async def job(request: web.Request) -> web.Response:
        reads.append(request.match_info["job_id"])
        body = {"type": "error", "status": 404, "code": "not_found", "message": "no such job"}
        return web.Response(status=404, body=orjson.dumps(body), content_type="application/json")

    app = web.Application()
    app.router.add_get("/2.0/docgen_jobs", jobs)
    app.router.add_get("/2.0/docgen_jobs/{job_id}", job)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    metrics = Metrics()
    box = BoxClient(
        f"http://127.0.0.1:{port}", DeveloperTokenAuth(SecretStr(TOKEN)), metrics=metrics,
        timeout_s=5, budget=RequestBudget(6000, metrics=metrics),
    )
    path = tmp_path / "state.db"
    store = SQLiteStore(str(path))
    await store.open()

    def poller(now: float) -> Poller:
        recorder = Recorder(store, Router([]), metrics, clock=lambda: now)
        return Poller(box, store, recorder, metrics, page_size=2, clock=lambda: now)

    try:
        yield Rig(listing, store, metrics, poller, path, reads)
    finally:
        await box.aclose()
        await store.close()
        await runner.cleanup()


def change(n: int, **fields: Any) -> Callable[[list[Entry]], None]:
    def apply(entries: list[Entry]) -> None:
        entries[n].update(fields)

    return apply


def drop(n: int, key: str) -> Callable[[list[Entry]], None]:
    def apply(entries: list[Entry]) -> None:
        del entries[n][key]

    return apply


def add(n: int) -> Callable[[list[Entry]], None]:
    def apply(entries: list[Entry]) -> None:
        entries.insert(0, entry(n, "pending"))

    return apply


def repeat(n: int, at: int) -> Callable[[list[Entry]], None]:
    """Entry `n` listed again at `at` (a page boundary moved under the listing)."""

    def apply(entries: list[Entry]) -> None:
        entries.insert(at, copy.deepcopy(entries[n]))

    return apply


def both(*changes: Callable[[list[Entry]], None]) -> Callable[[list[Entry]], None]:
    def apply(entries: list[Entry]) -> None:
        for one in changes:
            one(entries)

    return apply


CASES: dict[str, tuple[Callable[[list[Entry]], None], int]] = {
    # name: (the change to the listing, entries that break Box's schema)
    "nothing": (lambda entries: None, 0),
    "a status": (change(10, status="completed", output_file={"id": "f10"}), 0),
    "a status, to a failure with texts": (
        change(11, status="failed", failures={"errors": ["tag <x> missing"], "warnings": []}), 0
    ),
    "an output file appears": (change(9, output_file={"id": "late"}), 0),
    "an output file changes": (change(1, output_file={"id": "other"}), 0),
    "an error text": (change(3, failures={"errors": ["new"], "warnings": ["logo resized"]}), 0),
    "a warning added": (change(1, failures={"errors": [], "warnings": ["w"]}), 0),
    "failures gone": (change(0, failures=None), 0),
    "a template": (change(2, template_file={"id": "t9"}), 0),
    "an output type": (change(2, output_type="docx"), 0),
    "a batch": (change(2, batch={"id": "b9"}), 0),
    "a creation time (not observed)": (change(4, created_at="2026-06-01T00:00:00Z"), 0),
    "a creator (not observed)": (change(4, created_by={"id": "u9"}), 0),
    "a new job": (add(40), 0),
    "a repeat, as stored": (repeat(2, 7), 0),
    "new jobs at the head shift the pages: one repeats": (both(add(40), add(41), repeat(5, 2)), 0),
    "a change, repeated": (both(change(3, output_file={"id": "x"}), repeat(3, 9)), 0),
    "a change, and a repeat as stored after it": (
        both(repeat(3, 9), change(3, output_file={"id": "x"})), 0
    ),
    "a finished job listed as running (behind)": (change(5, status="pending"), 0),
    "no creator (schema)": (drop(6, "created_by"), 1),
    "another type (schema)": (change(7, type="docgen_batch"), 1),
    "a numeric id (schema)": (change(8, id=5008), 1),
    "a status that is not text (schema)": (change(9, status=["pending"]), 1),
}


def stored_fingerprints(rig: Rig) -> dict[str, object]:
    return {str(job_id): fp for job_id, fp in rig.sql("SELECT id, fingerprint FROM jobs")}


@pytest.mark.parametrize("rows", ["fingerprinted", "some without a fingerprint"])
@pytest.mark.parametrize("case", list(CASES))
async def test_a_sweep_makes_the_changes_the_pure_diff_makes_over_every_entry(
    rig: Rig, case: str, rows: str
) -> None:
    await rig.poller(T0).sweep()  # the baseline
    if rows != "fingerprinted":  # rows a migration could not reach: compared with their rows
        rig.sql("UPDATE jobs SET fingerprint = NULL WHERE CAST(id AS INTEGER) % 2 = 0")
    mutate, broken = CASES[case]
    before = await rig.store.load_snapshot()
    entries = copy.deepcopy(rig.listing.entries)
    mutate(entries)
    rig.listing.entries = entries
    invalid = "box_docgen_listing_invalid_entries_total"
    invalid_before = rig.metrics.registry.get_sample_value(invalid, ACCOUNT) or 0

    now = T0 + 100
    result = await rig.poller(now).sweep()

    # The reference: every entry read in full, no comparison with stored rows.
    valid = parse_listing(orjson.dumps({"entries": entries, "next_marker": None})).entries
    jobs, _ = drop_regressions(before, (listed_job_state(e) for e in valid))
    changes = snapshot_changes(before, Observation(tuple(jobs), False, now), now)
    expected = events_for(before, changes, now)
    assert sorted(e.id for e in result.events) == sorted(e.id for e in expected)
    after = await rig.store.load_snapshot()
    assert after == {**before, **{j.id: j for j in changes.upserts}}
    assert (rig.metrics.registry.get_sample_value(invalid, ACCOUNT) or 0) - invalid_before == broken
    for job in changes.upserts:  # a written row carries the fingerprint of what it holds
        assert stored_fingerprints(rig)[job.id] == fingerprint(job.id, observed_of(job))
    assert rig.reads == []  # nothing was missing or listed twice with two statuses


async def test_a_first_baseline_writes_the_rows_the_pure_diff_makes(rig: Rig) -> None:
    rig.listing.entries.insert(5, copy.deepcopy(rig.listing.entries[1]))  # a repeat
    result = await rig.poller(T0).sweep()
    assert result.baseline and result.events == ()
    valid = parse_listing(orjson.dumps({"entries": rig.listing.entries})).entries
    changes = snapshot_changes({}, Observation(tuple(map(listed_job_state, valid)), False, T0), T0)
    assert await rig.store.load_snapshot() == {j.id: j for j in changes.upserts}
    assert stored_fingerprints(rig) == {
        j.id: fingerprint(j.id, observed_of(j)) for j in changes.upserts
    }


@pytest.mark.parametrize("order", ["stored copy first", "other status first"])
@pytest.mark.parametrize("rows", ["fingerprinted", "without a fingerprint"])
async def test_an_id_listed_as_stored_and_with_another_status_is_read_by_id(
    rig: Rig, order: str, rows: str
) -> None:
    """The copy shown as stored passes by its fingerprint, the other is compared with the row;
    together they are a conflict whichever comes first: Box is asked (here it answers 404, so
    the job stays as it was), and neither copy is recorded."""
    await rig.poller(T0).sweep()
    if rows != "fingerprinted":
        rig.sql("UPDATE jobs SET fingerprint = NULL")
    before = await rig.store.load_snapshot()
    other = entry(10, "completed", output_file={"id": "f10"})  # job 10 is stored pending
    rig.listing.entries.insert(0 if order == "other status first" else 11, other)
    result = await rig.poller(T0 + 100).sweep()
    assert result.events == ()
    assert rig.reads == ["5010"]
    assert await rig.store.load_snapshot() == before
    conflicts = "box_docgen_listing_conflicts_total"
    assert rig.metrics.registry.get_sample_value(conflicts, ACCOUNT) == 1


@pytest.mark.parametrize("rows", ["fingerprinted", "some without a fingerprint"])
async def test_a_job_the_listing_no_longer_shows_is_confirmed_by_id_then_vanishes(
    rig: Rig, rows: str
) -> None:
    """Only the stored fingerprints no entry matched (and rows without one) can be unseen: the
    missing job is found among them, read by id, and vanishes on Box's 404."""
    await rig.poller(T0).sweep()
    if rows != "fingerprinted":
        rig.sql("UPDATE jobs SET fingerprint = NULL WHERE CAST(id AS INTEGER) % 2 = 0")
    del rig.listing.entries[4], rig.listing.entries[5]  # jobs 5004 and 5006 (even: no fingerprint)
    result = await rig.poller(T0 + 100).sweep()
    assert sorted(rig.reads) == ["5004", "5006"]
    vanished = sorted(e.job.id for e in result.events if e.type.value == "job.vanished" and e.job)
    assert vanished == ["5004", "5006"]
    assert set(await rig.store.load_snapshot()) == {f"{5000 + n}" for n in range(12)} - {
        "5004", "5006"
    }
