"""Discovery over real sockets: the head of the simulator's listing (newest first, page size 7
in these tests) is read and recorded, further pages only while the listing proves newest-first
and shows no known job; a listing that breaks the order (a duplicated old job at the head, jobs
inserted between two pages) is read at its head only, and the sweep still finds the rest."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from monitor.box.models import ListedJob
from monitor.discovery import NewestFirst, created_s
from monitor.model import EventType
from tests.test_poller import Rig, of_type, rig, sample, seeded, sweep

__all__ = ["rig"]  # the fixture, shared with test_poller


def discovered(events: object) -> set[str]:
    return {e.job.id for e in of_type(events, EventType.JOB_DISCOVERED) if e.job}  # type: ignore[arg-type]


def listings(r: Rig) -> int:
    return r.sim.state.stats.count("list_jobs")


async def test_a_new_batch_is_found_by_one_read_of_the_head(rig: Rig) -> None:
    """Three new jobs and four known ones on the first page: one request, three events, and
    the batch joins the active set; a second read finds nothing new."""
    poller, _ = await seeded(rig, 100)  # 15 pages of history
    batch = await rig.control.start_batch(3)
    result = await poller.discover()
    assert discovered(result.events) == set(batch["job_ids"])
    assert (result.requests, result.newest_first) == (1, True)
    assert listings(rig) == 1
    assert batch["batch_id"] in poller.active
    assert sample(rig, "box_docgen_listing_newest_first") == 1
    again = await poller.discover()
    assert (again.events, again.requests) == ((), 1)


async def test_pages_past_the_head_are_read_only_until_a_known_job(rig: Rig) -> None:
    """Ten new jobs span two pages: the second page shows known jobs, so the read stops there,
    two requests out of sixteen, and every new job is recorded once."""
    poller, _ = await seeded(rig, 100)
    first = await rig.control.start_batch(4)
    second = await rig.control.start_batch(6)
    result = await poller.discover()
    assert discovered(result.events) == set(first["job_ids"]) | set(second["job_ids"])
    assert result.requests == 2 and listings(rig) == 2
    assert {first["batch_id"], second["batch_id"]} <= set(poller.active)
    assert (await sweep(rig, poller)).events == ()  # the sweep agrees: nothing left to find


async def test_a_duplicated_old_job_at_the_head_breaks_the_order_and_the_sweep_finds_the_rest(
    rig: Rig,
) -> None:
    """The simulator lists an old job a second time, at the head, with another status: older
    than what follows it, so the listing is not newest-first. Discovery records the head page
    only (the old job is not taken back), and the sweep finds the new jobs beyond it."""
    poller, ids = await seeded(rig, 100)
    old = ids[-1]
    await rig.control.call("POST", "/_sim/listing/duplicate", {"job_id": old})
    batch = await rig.control.start_batch(10)
    result = await poller.discover()
    assert result.requests == 1 and not result.newest_first
    assert sample(rig, "box_docgen_listing_newest_first") == 0
    head = discovered(result.events)
    assert head and head < set(batch["job_ids"])  # the head page's share of them, no more
    assert old not in {e.job.id for e in result.events if e.job}
    rest = discovered((await sweep(rig, poller)).events)
    assert rest == set(batch["job_ids"]) - head


async def test_jobs_inserted_between_two_pages_break_the_order_of_that_read(rig: Rig) -> None:
    """Batch A, then a second later batch B, span two pages; a shift inserts batch C at the
    head once the first page is served, so the second page starts with B's jobs again, newer
    than the first page ended with (A's). The read stops there; the next read finds C at the
    head; with the sweep, every new job is announced exactly once."""
    poller, history = await seeded(rig, 100)
    a = await rig.control.start_batch(6)
    await rig.advance_sim(1)
    b = await rig.control.start_batch(6)
    await rig.control.call("POST", "/_sim/listing/shift", {"after_page": 1, "insert": 3})
    first = await poller.discover()
    assert (first.requests, first.newest_first) == (2, False)
    second = await poller.discover()
    assert second.newest_first
    rest = await sweep(rig, poller)
    c = set(await rig.control.jobs()) - {*history, *a["job_ids"], *b["job_ids"]}
    announced = [e.job.id for r in (first.events, second.events, rest.events)
                 for e in of_type(r, EventType.JOB_DISCOVERED) if e.job]
    assert len(c) == 3 and discovered(second.events) == c
    assert sorted(announced) == sorted({*a["job_ids"], *b["job_ids"], *c})


async def test_an_omitted_job_is_found_by_its_batch_poll(rig: Rig) -> None:
    """The listing omits one job of a new batch: discovery records the others and makes the
    batch active; the batch's own poll finds the omitted one."""
    poller, _ = await seeded(rig, 20)
    batch = await rig.control.start_batch(3)
    hidden = batch["job_ids"][0]
    await rig.control.call("POST", "/_sim/listing/omit", {"job_ids": [hidden]})
    result = await poller.discover()
    assert discovered(result.events) == set(batch["job_ids"]) - {hidden}
    events = await poller.poll_batch(batch["batch_id"])
    assert discovered(events) == {hidden}


async def test_a_malformed_entry_at_the_head_is_set_aside_not_recorded(rig: Rig) -> None:
    poller, _ = await seeded(rig, 20)
    batch = await rig.control.start_batch(3)
    broken = batch["job_ids"][1]
    await rig.control.call("POST", "/_sim/listing/malformed",
                           {"job_ids": [broken], "kind": "null_batch"})
    result = await poller.discover()
    assert discovered(result.events) == set(batch["job_ids"]) - {broken}
    assert await rig.store.load_jobs([broken]) == {}
    assert sample(rig, "box_docgen_listing_invalid_entries_total") == 1


async def test_nothing_is_discovered_before_the_baseline(rig: Rig) -> None:
    """The first sweep records the baseline; a read of the head before it would flood."""
    await rig.control.call("POST", "/_sim/seed", {"count": 20})
    poller = rig.make_poller(baseline="notify")
    await poller.start()
    result = await poller.discover()
    assert (result.events, result.requests) == ((), 0)
    assert listings(rig) == 0


def entry(job_id: str, created_at: str | None) -> ListedJob:
    return {"id": job_id, "created_at": created_at}  # type: ignore[typeddict-item]


def test_newest_first_holds_across_pages_until_one_entry_is_newer_or_undated() -> None:
    t0 = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)
    iso = [(t0 - timedelta(seconds=s)).isoformat() for s in range(6)]
    proof = NewestFirst()
    assert proof.check([entry("a", iso[0]), entry("b", iso[0]), entry("c", iso[2])])
    assert proof.check([entry("d", iso[3])])
    assert not proof.check([entry("e", iso[1])])  # newer than the page before ended with
    assert not proof.check([entry("f", iso[5])])  # once broken, broken for the read
    undated = NewestFirst()
    assert not undated.check([entry("a", iso[0]), entry("b", None)])
    offsets = NewestFirst()  # the same instant in two offsets is not newer
    assert offsets.check([entry("a", "2026-12-07T04:00:00-08:00"),
                          entry("b", "2026-12-07T12:00:00Z")])


def test_created_at_is_read_with_its_offset_and_anything_else_is_unreadable() -> None:
    assert created_s("2026-12-07T04:00:00-08:00") == created_s("2026-12-07T12:00:00Z")
    assert created_s("2026-12-07T12:00:00") is None  # no offset: no instant
    assert created_s("yesterday") is None
    assert created_s(None) is None
