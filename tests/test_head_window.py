"""The head window over real sockets: when the simulator's listing (newest first, page size 7
here) proves its order, an active round reads its head down to the oldest open job of the active
batches instead of polling them one by one. It must find what the batch polls find, cost fewer
requests, fall back to batch polls when the order breaks or a page fails, and still poll every
batch on its own now and then for a job the listing does not show."""

from __future__ import annotations

import asyncio
import itertools
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from monitor.box.models import ListedJob
from monitor.discovery import HeadWindow
from monitor.metrics import Metrics
from monitor.notify.router import Router
from monitor.poller import DIRECT_POLL_EVERY_S, Poller
from monitor.recorder import Recorder
from monitor.store.sqlite import SQLiteStore
from tests.harness import wait_until
from tests.test_poller import Rig, rig, sample, seeded

__all__ = ["rig"]  # the fixture, shared with test_poller

T0 = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)


def entry(job_id: str, age_s: float) -> ListedJob:
    return {"id": job_id, "created_at": (T0 - timedelta(seconds=age_s)).isoformat()}  # type: ignore[typeddict-item]


def at(age_s: float) -> float:
    return (T0 - timedelta(seconds=age_s)).timestamp()


def test_a_window_covers_the_batches_whose_open_jobs_it_read_past() -> None:
    """Batch a's oldest open job is 10 s old, b's 25 s, c's 60 s: a page ending at 30 s covers
    a and b and asks for more; the next, ending at 70 s, is past every target and covers c."""
    window = HeadWindow({"a": at(10), "b": at(25), "c": at(60)}, max_pages=5)
    assert window.take([entry("1", 0), entry("2", 30)])
    assert window.covered() == {"a", "b"}
    assert not window.take([entry("3", 40), entry("4", 70)])
    assert window.covered() == {"a", "b", "c"}
    assert window.pages == 2


def test_an_entry_as_old_as_a_target_does_not_cover_it() -> None:
    """A job created in the same second as the batch's oldest open one may be on the next
    page: only an entry strictly older proves the batch was read past."""
    window = HeadWindow({"a": at(10)}, max_pages=5)
    assert window.take([entry("1", 0), entry("2", 10)])
    assert window.covered() == set()


def test_the_window_stops_at_its_page_limit_and_covers_what_it_read() -> None:
    window = HeadWindow({"a": at(5), "b": at(500)}, max_pages=1)
    assert not window.take([entry("1", 0), entry("2", 20)])
    assert window.covered() == {"a"}


def test_a_listing_that_ends_covers_every_target() -> None:
    window = HeadWindow({"a": at(5), "b": at(500)}, max_pages=3)
    assert window.take([entry("1", 0), entry("2", 20)])
    window.end()
    assert window.covered() == {"a", "b"}


def test_a_broken_order_covers_nothing() -> None:
    """An entry newer than the one before it: nothing read proves anything."""
    window = HeadWindow({"a": at(5), "b": at(500)}, max_pages=3)
    assert window.take([entry("1", 0), entry("2", 100)])
    assert not window.take([entry("3", 10), entry("4", 600)])
    window.end()
    assert window.covered() == set()


# -- over the simulator --------------------------------------------------------------------


def requests(r: Rig) -> tuple[int, int, int]:
    """(listing pages, batch polls, job reads) the simulator served since the last reset."""
    stats = r.sim.state.stats
    return stats.count("list_jobs"), stats.count("batch_jobs"), stats.count("get_job")


async def step(r: Rig, poller: Any, seconds: float = 5.0) -> int:
    """Time passes at Box and for the poller; then one active round."""
    await r.advance_sim(seconds)
    r.clock.now += seconds
    return int(await poller.poll_active())


async def with_batches(r: Rig, sizes: list[int]) -> tuple[Any, list[dict[str, Any]]]:
    """A poller over 60 historic jobs that found `sizes` new batches at the listing's head
    (which proved newest-first)."""
    poller, _ = await seeded(r, 60)
    batches = [await r.control.start_batch(n) for n in sizes]
    found = await poller.discover()
    assert found.newest_first
    assert {b["batch_id"] for b in batches} <= set(poller.active)
    r.sim.state.stats.reset()
    return poller, batches


async def test_a_round_reads_the_head_once_instead_of_each_batch(rig: Rig) -> None:
    """Four batches of three jobs (two pages of seven): each round reads two pages, no batch
    poll, and records every job's move; the finished batches leave the active set."""
    poller, batches = await with_batches(rig, [3, 3, 3, 3])
    assert await step(rig, poller, 12) == 4  # past submitted_after_s: every job moved
    assert requests(rig) == (2, 0, 0)
    jobs = {j for b in batches for j in b["job_ids"]}
    stored = await rig.store.load_jobs(sorted(jobs))
    assert {j.status for j in stored.values()} == {"submitted"}
    assert sample(rig, "box_docgen_polls_total", {"kind": "window", "outcome": "ok"}) == 1
    assert poller.batches_per_round == 2  # what the plan counts: the window's pages
    for _ in range(10):
        if not poller.active:
            break
        await step(rig, poller, 5)
    assert not poller.active
    stored = await rig.store.load_jobs(sorted(jobs))
    assert all(j.status in {"completed", "failed", "completed_with_error"} for j in stored.values())
    assert requests(rig)[1:] == (0, 0)  # never a batch poll nor a job read


async def test_the_same_changes_are_found_with_and_without_the_head_window(
    rig: Rig, tmp_path: Path
) -> None:
    """Two pollers on two stores follow the same batches at the same moments: one reads the
    head (it discovered them), the other polls each batch (a sweep found them: the listing's
    order was never proved to it). Every job's moves and every batch's end are the same."""
    windowed, batches = await with_batches(rig, [4, 2, 5, 3, 6])
    store = SQLiteStore(str(tmp_path / "plain.db"))
    await store.open()
    try:
        recorder = Recorder(store, Router([]), Metrics(), clock=rig.clock, baseline="silent")
        plain = Poller(rig.box, store, recorder, Metrics(), page_size=7, clock=rig.clock,
                       monotonic=rig.clock)
        await plain.start()
        await plain.sweep()  # the baseline holds the new batches already
        assert {b["batch_id"] for b in batches} <= set(plain.active)
        moves: dict[str, list[tuple[str, str, str]]] = {"windowed": [], "plain": []}
        ids = [j for b in batches for j in b["job_ids"]]
        for _ in range(14):
            await rig.advance_sim(4)
            rig.clock.now += 4
            for name, poller in (("windowed", windowed), ("plain", plain)):
                before = await poller.store.load_jobs(ids)
                await poller.poll_active()
                after = await poller.store.load_jobs(ids)
                moves[name] += [
                    (i, before[i].status, after[i].status)
                    for i in ids if before[i].status != after[i].status
                ]
        assert not windowed.active and not plain.active
        assert sorted(moves["windowed"]) == sorted(moves["plain"])
        assert len(moves["plain"]) >= 2 * len(ids)  # each job moved at least twice
        window_rounds = sample(rig, "box_docgen_polls_total", {"kind": "window", "outcome": "ok"})
        assert window_rounds >= 5
    finally:
        await store.close()


async def test_a_job_the_listing_never_shows_is_found_by_the_batch_s_own_poll(rig: Rig) -> None:
    """The listing omits one job of a batch: head windows cannot see it move, so the batch
    stays active on that job until its own poll, never more than `DIRECT_POLL_EVERY_S` (and a
    round) after the one before, finds it finished and the batch completes. Later batches keep
    the window worth reading meanwhile."""
    poller, batches = await with_batches(rig, [3, 3])
    target = batches[0]["batch_id"]
    hidden = batches[0]["job_ids"][0]
    await rig.control.call("POST", "/_sim/listing/omit", {"job_ids": [hidden]})
    own_polls_s = [0.0]  # it joined the active set from a read of the head
    elapsed_s = 0.0
    while target in poller.active and elapsed_s < 3 * DIRECT_POLL_EVERY_S:
        if elapsed_s in (25, 50, 75):
            await rig.control.start_batch(3)
        direct_at = poller.active[target].direct_at
        polls_before = requests(rig)[1]
        await step(rig, poller, 5)
        elapsed_s += 5
        left = target not in poller.active
        if left or poller.active[target].direct_at != direct_at:
            own_polls_s.append(elapsed_s)
    assert target not in poller.active
    assert requests(rig)[1] > polls_before  # the round it left in polled batches on their own
    assert (await rig.store.load_jobs([hidden]))[hidden].status != "pending"
    gaps_s = [b - a for a, b in itertools.pairwise(own_polls_s)]
    assert max(gaps_s) <= DIRECT_POLL_EVERY_S + 5
    windows = sample(rig, "box_docgen_polls_total", {"kind": "window", "outcome": "ok"})
    assert windows >= len(own_polls_s)  # most rounds were windows


async def test_a_broken_order_falls_back_to_batch_polls_in_the_same_round(rig: Rig) -> None:
    """An old job listed again at the head: the window proves nothing and covers nothing, so
    the round polls each batch; the next rounds do not try a window until the order is proved
    again (by discovery)."""
    poller, batches = await with_batches(rig, [3, 3, 3])
    oldest = list(await rig.control.jobs())[-1]
    await rig.control.call("POST", "/_sim/listing/duplicate", {"job_id": oldest})
    assert await step(rig, poller, 12) == 3
    pages, polls, _ = requests(rig)
    assert (pages, polls) == (1, 3)
    assert sample(rig, "box_docgen_listing_newest_first") == 0
    rig.sim.state.stats.reset()
    await step(rig, poller, 5)
    assert requests(rig)[:2] == (0, 3)
    jobs = [j for b in batches for j in b["job_ids"]]
    assert {j.status for j in (await rig.store.load_jobs(jobs)).values()} <= {
        "submitted", "completed", "failed", "completed_with_error"
    }


async def test_a_failed_page_falls_back_to_batch_polls_and_records_nothing_of_it(
    rig: Rig,
) -> None:
    poller, batches = await with_batches(rig, [3, 3, 3])
    await rig.control.fault(route="list_jobs", kind="500", count=100)
    assert await step(rig, poller, 12) == 3
    pages, polls, _ = requests(rig)
    assert polls == 3 and pages >= 1
    assert sample(rig, "box_docgen_polls_total", {"kind": "window", "outcome": "error"}) == 1
    jobs = [j for b in batches for j in b["job_ids"]]
    assert {j.status for j in (await rig.store.load_jobs(jobs)).values()} == {"submitted"}


async def test_a_malformed_entry_in_the_window_is_set_aside_not_recorded(rig: Rig) -> None:
    poller, batches = await with_batches(rig, [3, 3])
    broken = batches[1]["job_ids"][1]
    await rig.control.call("POST", "/_sim/listing/malformed",
                           {"job_ids": [broken], "kind": "null_batch"})
    await step(rig, poller, 12)
    assert requests(rig)[:2] == (1, 0)
    stored = await rig.store.load_jobs([broken])
    assert stored[broken].status == "pending"  # its own poll recorded it before; not since
    assert sample(rig, "box_docgen_listing_invalid_entries_total") >= 1


async def test_the_sweep_fetches_no_page_while_an_active_round_runs(rig: Rig) -> None:
    """A round whose batch poll Box answers slowly (a second): a sweep started meanwhile
    waits, every sample of the round showing no listing request, then lists everything."""
    poller, _ = await with_batches(rig, [3])
    await rig.control.fault(route="batch_jobs", kind="latency", latency_s=1.0, count=1)
    rig.clock.now += 60
    round_task = asyncio.create_task(poller.poll_active())
    await wait_until(lambda: _true(poller.round_running), 5, "the round to start")
    sweep_task = asyncio.create_task(poller.sweep())
    samples = 0
    while not round_task.done():
        assert requests(rig)[0] == 0, "the sweep fetched a page during the round"
        samples += 1
        await asyncio.sleep(0.02)  # a sampling interval; each sample asserts
    assert await round_task == 1
    assert samples >= 10  # the round lasted its second: the samples cover it
    result = await asyncio.wait_for(sweep_task, 10)
    assert result.jobs_seen == 63 and requests(rig)[0] == 9  # 60 + 3 jobs, seven a page


async def _true(value: bool) -> bool:
    return value
