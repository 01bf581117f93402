"""The poller over real sockets: the simulator (frozen clock, so job timelines move only when a
test says so), a SQLite store on disk, the Box client with its request budget. Nothing of ours is
mocked; the poller's own clock is a number the test sets, so thresholds are exact."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from prometheus_client import generate_latest
from pydantic import SecretStr
from structlog.testing import capture_logs

from monitor.box.auth import DeveloperTokenAuth
from monitor.box.budget import RequestBudget
from monitor.box.client import BoxClient
from monitor.metrics import Metrics
from monitor.model import Event, EventType, SnapshotChanges
from monitor.notify.router import Router
from monitor.poller import MAX_STATUS_LOG_CHARS, MAX_UNKNOWN_LOGGED, Poller
from monitor.recorder import Recorder
from monitor.simulator import RunningSimulator, SimulatorConfig, TimelineConfig, start_simulator
from monitor.store.rows import job_to_row
from monitor.store.sqlite import SQLiteStore
from monitor.stuck import StuckPolicy
from tests.harness import TOKEN, SimControl

TERMINAL = {"completed", "completed_with_error", "failed"}


class Clock:
    def __init__(self, now: float = 1_900_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@dataclass
class Rig:
    sim: RunningSimulator
    control: SimControl
    store: SQLiteStore
    box: BoxClient
    budget: RequestBudget
    metrics: Metrics
    clock: Clock
    make_poller: Callable[..., Poller]

    async def advance_sim(self, seconds: float) -> None:
        await self.control.call("POST", "/_sim/clock/advance", {"seconds": seconds})

    async def sim_status(self, batch_id: str) -> dict[str, str]:
        body = await self.control.call("GET", f"/_sim/jobs?batch_id={batch_id}")
        return {j["id"]: j["status"] for j in body["entries"]}


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    config = SimulatorConfig(
        seed=7,
        developer_tokens=[SecretStr(TOKEN)],
        frozen_clock=True,
        timeline=TimelineConfig(submitted_after_s=10, min_duration_s=20, max_duration_s=40),
    )
    sim = await start_simulator(config)
    session = aiohttp.ClientSession()
    store = SQLiteStore(str(tmp_path / "state.db"))
    await store.open()
    metrics = Metrics()
    budget = RequestBudget(6000, metrics=metrics)
    box = BoxClient(
        sim.url,
        DeveloperTokenAuth(SecretStr(TOKEN)),
        metrics=metrics,
        timeout_s=5,
        budget=budget,
        max_attempts=4,
        backoff_base_s=0.01,
        backoff_max_s=0.05,
    )
    clock = Clock()

    def make_poller(
        stuck: StuckPolicy | None = None, baseline: str = "silent", **kw: Any
    ) -> Poller:
        recorder = Recorder(store, Router([]), metrics, stuck=stuck, clock=clock,
                            baseline=baseline)
        return Poller(
            box, store, recorder, metrics, page_size=7, clock=clock, monotonic=clock, **kw
        )

    try:
        yield Rig(sim, SimControl(sim.url, session), store, box, budget, metrics, clock,
                  make_poller)
    finally:
        await box.aclose()
        await store.close()
        await session.close()
        await sim.close()


def of_type(events: tuple[Event, ...] | list[Event], type_: EventType) -> list[Event]:
    return [e for e in events if e.type is type_]


async def test_a_watched_batch_is_polled_by_its_own_endpoint_not_by_a_listing(rig: Rig) -> None:
    """After the baseline, a watched batch's jobs are discovered and followed to their outcome
    through GET /docgen_batch_jobs alone, and the batch then leaves the active set."""
    await rig.control.call("POST", "/_sim/seed", {"count": 30})
    poller = rig.make_poller()
    await poller.start()
    await poller.sweep()
    batch = await rig.control.start_batch(5)
    poller.watch(batch["batch_id"])
    rig.sim.state.stats.reset()

    events = await poller.poll_batch(batch["batch_id"])
    assert {e.job.id for e in of_type(events, EventType.JOB_DISCOVERED) if e.job} == set(
        batch["job_ids"]
    )
    await rig.advance_sim(60)
    events = await poller.poll_batch(batch["batch_id"])
    final = await rig.sim_status(batch["batch_id"])
    changed = {e.job.id: e.to_status for e in of_type(events, EventType.JOB_STATUS_CHANGED)
               if e.job}
    assert changed == final and set(final.values()) <= TERMINAL
    assert len(of_type(events, EventType.BATCH_COMPLETED)) == 1
    assert batch["batch_id"] not in poller.active
    stats = rig.sim.state.stats
    assert stats.count("batch_jobs") == 2 and stats.count("list_jobs") == 0
    durations = {s: sample(rig, "box_docgen_job_duration_seconds_count", {"outcome": s})
                 for s in TERMINAL}
    assert sum(durations.values()) == 5  # one per job that reached its outcome
    assert sample(rig, "box_docgen_active_batches") == 0


async def test_a_watched_batch_box_does_not_know_yet_stays_until_its_watch_expires(
    rig: Rig,
) -> None:
    poller = rig.make_poller(watch_ttl_s=30)
    await poller.start()
    await poller.sweep()
    poller.watch("999999999")
    assert await poller.poll_active() == 1
    assert "999999999" in poller.active
    rig.clock.now += 31
    await poller.poll_active()
    assert "999999999" not in poller.active


async def test_the_active_set_survives_a_restart(rig: Rig) -> None:
    poller = rig.make_poller()
    await poller.start()
    await poller.sweep()
    batch = await rig.control.start_batch(3)
    await poller.sweep()
    assert batch["batch_id"] in poller.active
    again = rig.make_poller()
    await again.start()
    assert set(again.active) == {batch["batch_id"]}


async def test_a_429_storm_slows_the_budget_and_loses_no_change(rig: Rig) -> None:
    """Every other batch poll answers 429 with retry-after: the rate halves, the pause holds
    for every task, and still each job's change to its outcome is reported exactly once."""
    poller = rig.make_poller()
    await poller.start()
    await poller.sweep()
    batches = [await rig.control.start_batch(4) for _ in range(3)]
    for b in batches:
        poller.watch(b["batch_id"])
    await poller.poll_active()
    await rig.advance_sim(60)
    await rig.control.fault(route="batch_jobs", kind="429", rate=0.5, count=6, retry_after_s=1)
    seen: list[Event] = []
    for _ in range(20):
        try:
            for b in batches:
                if b["batch_id"] in poller.active:
                    seen += await poller.poll_batch(b["batch_id"])
        except Exception:  # noqa: S112 - a failed poll commits nothing; the next round retries
            continue
        if not poller.active:
            break
    assert rig.budget.rate_limited >= 1
    assert rig.budget.rate_rpm < rig.budget.ceiling_rpm
    assert rig.sim.state.stats.count("batch_jobs", 429) >= 1
    for b in batches:
        final = await rig.sim_status(b["batch_id"])
        reported = {e.job.id: e.to_status for e in of_type(seen, EventType.JOB_STATUS_CHANGED)
                    if e.job and e.job.batch_id == b["batch_id"] and e.to_status in TERMINAL}
        assert reported == final
    ids = [e.id for e in seen]
    assert len(ids) == len(set(ids))


async def test_stuck_fires_once_per_crossing_and_rearms_after_a_transition(rig: Rig) -> None:
    poller = rig.make_poller(stuck=StuckPolicy(after_s=100))
    await poller.start()
    await poller.sweep()
    batch = await rig.control.start_batch(1)
    job_id = batch["job_ids"][0]
    poller.watch(batch["batch_id"])
    await poller.poll_batch(batch["batch_id"])  # discovered, pending
    rig.clock.now += 50
    assert of_type(await poller.poll_batch(batch["batch_id"]), EventType.JOB_STUCK) == []
    rig.clock.now += 51
    first = of_type(await poller.poll_batch(batch["batch_id"]), EventType.JOB_STUCK)
    assert [e.id for e in first] == [f"{job_id}:1:stuck"]
    assert first[0].wire()["threshold_s"] == 100
    rig.clock.now += 500
    assert of_type(await poller.poll_batch(batch["batch_id"]), EventType.JOB_STUCK) == []
    await rig.advance_sim(15)  # pending -> submitted: the mark no longer applies
    events = await poller.poll_batch(batch["batch_id"])
    assert of_type(events, EventType.JOB_STATUS_CHANGED) and not of_type(
        events, EventType.JOB_STUCK
    )
    rig.clock.now += 101
    second = of_type(await poller.poll_batch(batch["batch_id"]), EventType.JOB_STUCK)
    assert [e.id for e in second] == [f"{job_id}:2:stuck"]


async def test_changes_made_while_stopped_come_back_late_and_nothing_else_repeats(
    rig: Rig,
) -> None:
    poller = rig.make_poller()
    await poller.start()
    await rig.control.call("POST", "/_sim/seed", {"count": 20})
    await poller.sweep()
    batch = await rig.control.start_batch(3)
    await poller.sweep()  # discovered while running: not late
    await poller.recorder.heartbeat()
    stopped_at = rig.clock.now
    # the daemon is stopped; Box moves on
    await rig.advance_sim(60)
    rig.clock.now += 600
    restarted = rig.make_poller()
    await restarted.start()
    assert restarted.recorder.last_running_at == stopped_at
    events = await restarted.poll_batch(batch["batch_id"])
    assert events and all(e.extra.get("late") is True for e in events)
    assert {e.wire()["last_running_at"] for e in events} == {"2030-03-17T17:46:40Z"}
    assert {e.job.id for e in of_type(events, EventType.JOB_STATUS_CHANGED) if e.job} == set(
        batch["job_ids"]
    )
    sweep = await restarted.sweep()
    assert sweep.events == ()  # the seeded history and the batch: nothing announced again


async def test_a_sweep_that_fails_part_way_changes_nothing(rig: Rig) -> None:
    await rig.control.call("POST", "/_sim/seed", {"count": 40})
    poller = rig.make_poller()
    await poller.start()
    await poller.sweep()
    before = await rig.store.load_snapshot()
    victim = next(iter(before))
    await rig.control.call("DELETE", f"/_sim/jobs/{victim}")
    await rig.control.start_batch(2)
    rig.sim.state.stats.reset()
    # seed 7's fault draws start 0.247, 0.004: page 1 passes, page 2 fails
    await rig.control.fault(route="list_jobs", kind="500", rate=0.2, count=100)
    async with BoxClient(rig.sim.url, DeveloperTokenAuth(SecretStr(TOKEN)), max_attempts=1) as box:
        poller.box = box  # no retry: the first 500 ends the sweep
        with pytest.raises(Exception, match="500"):
            await poller.sweep()
    poller.box = rig.box
    assert rig.sim.state.stats.count("list_jobs", 200) >= 1, rig.sim.state.stats.snapshot()
    assert await rig.store.load_snapshot() == before
    await rig.control.clear_faults()
    rig.clock.now += 1
    result = await poller.sweep()
    assert [e.job.id for e in of_type(result.events, EventType.JOB_VANISHED) if e.job] == [
        victim
    ]
    assert len(of_type(result.events, EventType.JOB_DISCOVERED)) == 2
    assert victim not in await rig.store.load_snapshot()


async def test_a_sweep_does_not_roll_back_what_an_active_poll_committed_meanwhile(
    rig: Rig,
) -> None:
    """A job a sweep staged as `submitted`, then an active poll saw reach its outcome, keeps its
    outcome: the stale staged row is skipped at the sweep's commit."""
    poller = rig.make_poller()
    await poller.start()
    await poller.sweep()
    batch = await rig.control.start_batch(3)
    poller.watch(batch["batch_id"])
    await poller.poll_batch(batch["batch_id"])
    stored = await rig.store.load_jobs(batch["job_ids"])
    generation = await rig.store.sweep_begin()
    staged = [
        (job_to_row(replace(j, status="submitted", seq=j.seq + 1)), j.seq) for j in stored.values()
    ]
    await rig.store.sweep_stage(generation, [(i, "pending") for i in stored], staged)
    await rig.advance_sim(60)
    await poller.poll_batch(batch["batch_id"])  # the outcome, committed while the sweep runs
    assert await rig.store.sweep_stale_ids() == set(batch["job_ids"])
    await rig.store.commit_sweep(SnapshotChanges(), [])
    after = await rig.store.load_jobs(batch["job_ids"])
    assert {j.status for j in after.values()} <= TERMINAL


async def test_a_lone_straggler_is_read_by_its_own_id(rig: Rig) -> None:
    """Once one job of a batch is left running, the poll asks for that job alone; its outcome
    still completes the batch."""
    poller = rig.make_poller()
    await poller.start()
    await poller.sweep()
    batch = await rig.control.start_batch(3)
    first, second, last = batch["job_ids"]
    for job_id in (first, second):
        await rig.control.call("PUT", f"/_sim/jobs/{job_id}", {"status": "completed"})
    await rig.control.call("PUT", f"/_sim/jobs/{last}", {"status": "submitted"})
    poller.watch(batch["batch_id"])
    await poller.poll_batch(batch["batch_id"])  # all three known now, one still running
    rig.sim.state.stats.reset()
    assert of_type(await poller.poll_batch(batch["batch_id"]), EventType.JOB_STATUS_CHANGED) == []
    await rig.control.call("PUT", f"/_sim/jobs/{last}", {"status": "failed"})
    events = await poller.poll_batch(batch["batch_id"])
    assert [(e.job.id, e.to_status) for e in of_type(events, EventType.JOB_STATUS_CHANGED)
            if e.job] == [(last, "failed")]
    assert len(of_type(events, EventType.BATCH_COMPLETED)) == 1
    stats = rig.sim.state.stats
    assert (stats.count("get_job"), stats.count("batch_jobs")) == (2, 0)
    assert batch["batch_id"] not in poller.active


async def test_watches_box_does_not_list_take_a_bounded_share_of_each_round(rig: Rig) -> None:
    """1,000 watches of ids Box does not know: a real batch is still polled every round, a round
    polls at most `WATCH_POLLS_PER_ROUND` of the unknown ones (fewest tries first), and the
    budget plan counts no more than that."""
    from monitor.box.budget import Degradation, plan_intervals
    from monitor.poller import WATCH_POLLS_PER_ROUND

    poller = rig.make_poller()
    await poller.start()
    await poller.sweep()
    batch = await rig.control.start_batch(2)
    assert poller.watch(batch["batch_id"])
    await poller.poll_active()  # Box lists it: followed from now on
    bogus = [str(9_000_000_000 + i) for i in range(1000)]
    assert all(poller.watch(b) for b in bogus)
    assert not poller.watch("8999999999")  # http.max_watched_batches reached
    assert poller.watch(bogus[0]) and poller.watch(batch["batch_id"])  # known ids: no new slot
    assert poller.batches_per_round == 1 + WATCH_POLLS_PER_ROUND
    plan = plan_intervals(600, poller.batches_per_round, 1, 60, 5)
    assert plan.level is Degradation.NORMAL and plan.active_interval_s == 5

    before = rig.sim.state.stats.count("batch_jobs")
    for _ in range(3):
        assert await poller.poll_active() == 1 + WATCH_POLLS_PER_ROUND
        rig.clock.now += 5
    assert rig.sim.state.stats.count("batch_jobs") - before <= 3 * (1 + WATCH_POLLS_PER_ROUND)
    assert poller.active[batch["batch_id"]].observed_at == rig.clock.now - 5
    fresh = "8999999998"
    del poller.active[bogus[-1]]
    assert poller.watch(fresh)
    await poller.poll_active()
    assert poller.active[fresh].tries == 1  # a new watch goes before those tried already
    assert poller.detection_lag_s() == 0.0  # unknown watches are no detection delay


async def test_invented_statuses_become_one_unknown_label_and_short_log_lines(rig: Rig) -> None:
    """300 statuses Box never documented (long ones too) leave a bounded set of series, no
    metrics line longer than 200 characters, and at most one short log line per status up to
    a cap: the raw text reaches neither labels nor logs as it is."""
    poller = rig.make_poller()
    await poller.start()
    await poller.sweep()
    batch = await rig.control.start_batch(3)
    poller.watch(batch["batch_id"])
    await poller.poll_batch(batch["batch_id"])
    with capture_logs() as logs:
        for i in range(100):
            for n, job_id in enumerate(batch["job_ids"]):
                status = f"invented-{i}-{n}-" + "x" * (i * 40)
                await rig.control.call("PUT", f"/_sim/jobs/{job_id}", {"status": status})
            assert of_type(await poller.poll_batch(batch["batch_id"]),
                           EventType.JOB_STATUS_CHANGED)
        for job_id in batch["job_ids"]:
            await rig.control.call("PUT", f"/_sim/jobs/{job_id}", {"status": "failed"})
        await poller.poll_batch(batch["batch_id"])
        await poller.sweep()

    text = generate_latest(rig.metrics.registry).decode()
    assert max(len(line) for line in text.splitlines()) <= 200
    transitions = [line for line in text.splitlines()
                   if line.startswith("box_docgen_job_transitions_total{")]
    assert 'from_status="unknown",to_status="unknown"' in text
    assert 'from_status="unknown",to_status="failed"' in text
    assert len(transitions) <= 6 * 6
    jobs = [line for line in text.splitlines() if line.startswith("box_docgen_jobs{")]
    assert {line.split('"')[3] for line in jobs} == {
        "pending", "submitted", "completed", "completed_with_error", "failed", "unknown"}
    assert "invented" not in text
    assert sample(rig, "box_docgen_unknown_status_total") >= 300
    logged = [e for e in logs if e["event"] == "unknown_job_status"]
    assert 0 < len(logged) <= MAX_UNKNOWN_LOGGED
    assert all(len(e["status"]) <= MAX_STATUS_LOG_CHARS for e in logged)
    assert [e["event"] for e in logs].count("unknown_job_statuses_unlogged") == 1


async def test_the_late_marking_memory_holds_only_batches_still_being_caught_up(
    rig: Rig,
) -> None:
    """After a restart, batches polled before the first sweep are remembered (their later
    events are not late) only while they are active; the first sweep forgets them all."""
    poller = rig.make_poller()
    await poller.start()
    await poller.sweep()
    await poller.recorder.heartbeat()
    restarted = rig.make_poller()
    await restarted.start()
    batches = [await rig.control.start_batch(2) for _ in range(5)]
    for batch in batches:
        restarted.watch(batch["batch_id"])
        await restarted.poll_batch(batch["batch_id"])
    assert restarted.recorder.catching_up == {b["batch_id"] for b in batches}
    await rig.advance_sim(120)  # every job reaches its outcome
    for batch in batches[:4]:
        events = await restarted.poll_batch(batch["batch_id"])
        assert events and not any(e.extra.get("late") for e in events)
        assert batch["batch_id"] not in restarted.active
    assert restarted.recorder.catching_up == {batches[4]["batch_id"]}
    await restarted.sweep()
    assert restarted.recorder.catching_up == frozenset()


@pytest.mark.parametrize("kind", ["missing_status", "null_batch", "integer_id", "lone_surrogate"])
async def test_one_malformed_listing_entry_is_set_aside_and_the_rest_is_recorded(
    rig: Rig, kind: str
) -> None:
    """The bad entry is counted and logged once, its job stays as it was, the other jobs'
    changes are recorded, and that listing vanishes nothing (today: every sweep fails)."""
    await rig.control.call("POST", "/_sim/seed", {"count": 20})
    poller = rig.make_poller(baseline="notify")
    await poller.start()
    await poller.sweep()
    victim, *others = list(await rig.control.jobs())[:3]
    before = (await rig.store.load_jobs([victim]))[victim]
    await rig.control.call("POST", "/_sim/listing/malformed", {"job_ids": [victim], "kind": kind})
    batch = await rig.control.start_batch(2)
    for job_id in others:
        await rig.control.call("PUT", f"/_sim/jobs/{job_id}", {"status": "failed"})
    with capture_logs() as logs:
        first = await poller.sweep()
        second = await poller.sweep()
    assert not of_type(first.events + second.events, EventType.JOB_VANISHED)
    assert {e.job.id for e in of_type(first.events, EventType.JOB_DISCOVERED) if e.job} == set(
        batch["job_ids"])
    stored = await rig.store.load_jobs([victim, *others])
    assert stored[victim] == before
    assert all(stored[j].status == "failed" for j in others)
    assert sample(rig, "box_docgen_listing_invalid_entries_total") == 2
    lines = [e for e in logs if e["event"] == "listing_entries_invalid"]
    assert len(lines) == 1 and lines[0]["entries"] == 1
    assert lines[0]["samples"][0]["job_id"] in (victim, None)
    await rig.control.call("DELETE", "/_sim/listing")
    assert not of_type((await poller.sweep()).events, EventType.JOB_VANISHED)


# -- a job is gone only when Box says so (listing distortions) ------------------------------


def sample(r: Rig, name: str, labels: dict[str, str] | None = None) -> float:
    """A sample of the rig's account (`default`: the one a `Metrics()` serves); 0 if absent."""
    value = r.metrics.registry.get_sample_value(name, {"account": "default", **(labels or {})})
    return value or 0.0


async def seeded(r: Rig, count: int, **kw: Any) -> tuple[Any, list[str]]:
    """A poller with a baseline of `count` historic jobs, and their ids (newest first)."""
    await r.control.call("POST", "/_sim/seed", {"count": count})
    poller = r.make_poller(baseline="notify", **kw)
    await poller.start()
    await poller.sweep()
    r.sim.state.stats.reset()
    return poller, list(await r.control.jobs())


async def sweep(r: Rig, poller: Any) -> Any:
    """One sweep a minute after the last (the poller's clock is the test's)."""
    r.clock.now += 60
    return await poller.sweep()


def job_events(events: tuple[Event, ...]) -> list[tuple[str, str | None]]:
    return [(e.type.value, e.job.id if e.job else None) for e in events
            if e.type is not EventType.BATCH_COMPLETED]


async def test_a_job_the_listing_misses_but_box_returns_by_id_is_not_vanished(rig: Rig) -> None:
    """The answer by id is recorded (its new status becomes the event), the miss is counted."""
    poller, ids = await seeded(rig, 20)
    hidden = ids[5]
    await rig.control.call("POST", "/_sim/listing/omit", {"job_ids": [hidden]})
    await rig.control.call("PUT", f"/_sim/jobs/{hidden}", {"status": "failed"})
    result = await sweep(rig, poller)
    assert job_events(result.events) == [("job.status_changed", hidden)]
    assert (await rig.store.load_jobs([hidden]))[hidden].status == "failed"
    assert rig.sim.state.stats.count("get_job") == 1
    assert sample(rig, "box_docgen_listing_misses_total") == 1
    assert sample(rig, "box_docgen_vanish_confirmations_total", {"outcome": "present"}) == 1
    assert job_events((await sweep(rig, poller)).events) == []  # still hidden: nothing new


async def test_a_job_box_answers_404_for_vanishes_and_its_return_is_announced(rig: Rig) -> None:
    """404 by id makes the vanish; when the job is listed again it gets `job.reappeared` with
    an id of its own (today the store swallowed its second `discovered`)."""
    poller, ids = await seeded(rig, 20)
    gone = ids[3]
    await rig.control.call("POST", "/_sim/listing/omit", {"job_ids": [gone]})
    await rig.control.fault(route="get_job", kind="404", count=1)
    vanished = await sweep(rig, poller)
    (event,) = of_type(vanished.events, EventType.JOB_VANISHED)
    assert event.job is not None and event.job.id == gone
    assert await rig.store.load_jobs([gone]) == {}
    await rig.control.call("DELETE", "/_sim/listing")
    back = await sweep(rig, poller)
    (again,) = of_type(back.events, EventType.JOB_REAPPEARED)
    assert again.job is not None and again.job.id == gone
    assert again.id != event.id and again.id.endswith(":reappeared")
    assert again.to_status == (await rig.control.jobs())[gone]["status"]
    assert job_events((await sweep(rig, poller)).events) == []


async def test_beyond_the_confirm_cap_the_missing_wait_as_suspects_for_later_sweeps(
    rig: Rig,
) -> None:
    poller, ids = await seeded(rig, 40, vanish_confirm_max=2)
    deleted = ids[10:15]
    for job_id in deleted:
        await rig.control.call("DELETE", f"/_sim/jobs/{job_id}")
    vanished: list[str] = []
    for left in (3, 1, 0):
        rig.sim.state.stats.reset()
        result = await sweep(rig, poller)
        vanished += [e.job.id for e in of_type(result.events, EventType.JOB_VANISHED) if e.job]
        assert rig.sim.state.stats.count("get_job") <= 2
        assert len(await rig.store.load_suspects()) == left
        assert sample(rig, "box_docgen_vanish_suspects") == left
    assert sorted(vanished) == sorted(deleted)


async def test_a_listing_missing_more_than_a_fifth_of_the_jobs_is_refused(rig: Rig) -> None:
    """No vanish, no read by id, a metric and a refusal the daemon's /readyz reports; a
    whole listing clears it."""
    poller, _ = await seeded(rig, 50)
    await rig.control.call("POST", "/_sim/listing/omit", {"fraction": 0.3})
    for _ in range(2):
        result = await sweep(rig, poller)
        assert job_events(result.events) == []
    assert rig.sim.state.stats.count("get_job") == 0
    assert poller.refusal is not None and "of 50 jobs" in poller.refusal
    assert sample(rig, "box_docgen_mass_change_refused_total", {"reason": "vanish"}) == 2
    assert len(await rig.store.load_jobs(list(await rig.control.jobs()))) == 50
    await rig.control.call("DELETE", "/_sim/listing")
    assert job_events((await sweep(rig, poller)).events) == []
    assert poller.refusal is None


async def test_accepting_a_mass_vanish_still_asks_box_job_by_job(rig: Rig) -> None:
    poller, _ = await seeded(rig, 30, accept_mass_vanish=True)
    await rig.control.call("POST", "/_sim/listing/omit", {"fraction": 0.5})
    result = await sweep(rig, poller)
    assert job_events(result.events) == [] and poller.refusal is None
    hidden = rig.sim.state.stats.count("get_job")
    assert hidden >= 10 and sample(rig, "box_docgen_listing_misses_total") == hidden


async def test_one_id_listed_with_two_statuses_is_settled_by_reading_it(rig: Rig) -> None:
    """The copy on the first page and the real entry further on disagree: Box's answer by id
    decides, sweep after sweep, and nothing flip-flops."""
    poller, ids = await seeded(rig, 30)
    old = ids[-1]  # the oldest: listed on the last page
    truth = (await rig.control.jobs())[old]["status"]
    await rig.control.call("POST", "/_sim/listing/duplicate", {"job_id": old})
    events: list[Event] = []
    for _ in range(4):
        events += (await sweep(rig, poller)).events
    assert job_events(tuple(events)) == []
    assert (await rig.store.load_jobs([old]))[old].status == truth
    assert sample(rig, "box_docgen_listing_conflicts_total") == 4
    assert rig.sim.state.stats.count("get_job") == 4


async def test_a_stale_listing_never_takes_a_finished_job_back(rig: Rig) -> None:
    """The batch poll committed the outcome; a listing that still shows the job running is
    ignored and counted, never a backward `job.status_changed`."""
    poller, _ = await seeded(rig, 10)
    batch = await rig.control.start_batch(2)
    poller.watch(batch["batch_id"])
    await poller.poll_batch(batch["batch_id"])
    await rig.advance_sim(60)
    await poller.poll_batch(batch["batch_id"])
    job_id = batch["job_ids"][0]
    assert (await rig.store.load_jobs([job_id]))[job_id].status in (
        "completed", "completed_with_error", "failed")
    await rig.control.call("POST", "/_sim/listing/omit", {"job_ids": [job_id]})
    await rig.control.call("POST", "/_sim/listing/duplicate",
                           {"job_id": job_id, "status": "submitted"})
    result = await sweep(rig, poller)
    assert job_events(result.events) == []
    assert sample(rig, "box_docgen_listing_regressions_total") == 1
    assert (await rig.store.load_jobs([job_id]))[job_id].status != "submitted"
