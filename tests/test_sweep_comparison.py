"""A sweep recognises unchanged listing entries by comparing them with what their rows hold, and
sends only the rest through the pure diff. Over a real socket (a local server answering the pages
the test writes), each change below must come out of a sweep exactly as the pure diff over every
entry (no shortcut) makes it: the same events, the same rows. An entry that breaks Box's schema is
set aside even when every field the comparison reads is unchanged."""

from __future__ import annotations

import copy
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


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    listing = Listing()

    async def jobs(request: web.Request) -> web.Response:
        assert request.headers["Authorization"] == f"Bearer {TOKEN}"
        marker = request.query.get("marker", "m0")
        return web.Response(body=listing.page(int(marker[1:])), content_type="application/json")

    app = web.Application()
    app.router.add_get("/2.0/docgen_jobs", jobs)
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
    store = SQLiteStore(str(tmp_path / "state.db"))
    await store.open()

    def poller(now: float) -> Poller:
        recorder = Recorder(store, Router([]), metrics, clock=lambda: now)
        return Poller(box, store, recorder, metrics, page_size=2, clock=lambda: now)

    try:
        yield Rig(listing, store, metrics, poller)
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
    "a finished job listed as running (behind)": (change(5, status="pending"), 0),
    "no creator (schema)": (drop(6, "created_by"), 1),
    "another type (schema)": (change(7, type="docgen_batch"), 1),
    "a numeric id (schema)": (change(8, id=5008), 1),
    "a status that is not text (schema)": (change(9, status=["pending"]), 1),
}


@pytest.mark.parametrize("case", list(CASES))
async def test_a_sweep_makes_the_changes_the_pure_diff_makes_over_every_entry(
    rig: Rig, case: str
) -> None:
    await rig.poller(T0).sweep()  # the baseline
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
    assert await rig.store.load_snapshot() == {**before, **{j.id: j for j in changes.upserts}}
    assert (rig.metrics.registry.get_sample_value(invalid, ACCOUNT) or 0) - invalid_before == broken
