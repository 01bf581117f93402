"""End to end over real sockets: the simulator, `docgen-monitor run` as a subprocess, and a
webhook receiver that checks every signature. Every change must arrive, each with exactly one
event id, through crashes and faults."""

from __future__ import annotations

import asyncio
import shutil
import signal
import subprocess
from collections import Counter, defaultdict
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from monitor.poller import DIRECT_POLL_EVERY_S
from monitor.simulator import SimulatorConfig, TimelineConfig
from tests.harness import TOKEN, World, wait_until, webhook_world

pytestmark = pytest.mark.e2e

TERMINAL = {"completed", "completed_with_error", "failed"}


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    sim_config = SimulatorConfig(
        seed=42, developer_tokens=[SecretStr(TOKEN)],
        timeline=TimelineConfig(submitted_after_s=0.3, min_duration_s=1.0, max_duration_s=4.0),
    )
    async for w in webhook_world(tmp_path, sim_config, World):
        yield w


def change_key(event: dict[str, Any]) -> tuple[str | None, ...]:
    if event["type"] == "batch.completed":
        return ("batch.completed", event["batch"]["id"])
    return (event["type"], event["job"]["id"], event["from_status"], event["to_status"])


def check_delivered(events: dict[str, dict[str, Any]], sim_jobs: dict[str, dict[str, Any]],
                    batch_ids: set[str]) -> list[str]:
    """What is still missing or wrong; empty when every change has arrived exactly once."""
    problems: list[str] = []
    ids_per_change: dict[tuple[str | None, ...], set[str]] = defaultdict(set)
    per_job: dict[str, list[dict[str, Any]]] = defaultdict(list)
    completed: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for event_id, event in events.items():
        ids_per_change[change_key(event)].add(event_id)
        if event["type"] == "batch.completed":
            completed[event["batch"]["id"]].append(event)
        else:
            per_job[event["job"]["id"]].append(event)
        if event["type"] == "job.vanished":
            problems.append(f"job {event['job']['id']} falsely reported vanished")
    for key, ids in ids_per_change.items():
        if len(ids) > 1:
            problems.append(f"change {key} has {len(ids)} ids: {sorted(ids)}")
    for job_id, job in sim_jobs.items():
        if job["batch_id"] not in batch_ids:
            continue
        evs = per_job.get(job_id, [])
        found = [e for e in evs if e["type"] == "job.discovered"]
        if len(found) != 1:
            problems.append(f"job {job_id}: {len(found)} discovered events")
            continue
        status = found[0]["to_status"]
        steps = {e["from_status"]: e["to_status"] for e in evs
                 if e["type"] == "job.status_changed"}
        while status in steps:
            status = steps.pop(status)
        if status != job["status"] or steps:
            problems.append(f"job {job_id}: chain ends at {status}, Box says {job['status']}")
    for batch_id in batch_ids:
        jobs = [j for j in sim_jobs.values() if j["batch_id"] == batch_id]
        if not all(j["status"] in TERMINAL for j in jobs):
            problems.append(f"batch {batch_id} still running in the simulator")
            continue
        evs = completed.get(batch_id, [])
        if len(evs) != 1:
            problems.append(f"batch {batch_id}: {len(evs)} batch.completed events")
        elif evs[0]["batch"]["counts"] != dict(Counter(j["status"] for j in jobs)):
            problems.append(f"batch {batch_id}: counts {evs[0]['batch']['counts']}")
    return problems


async def wait_all_delivered(w: World, batch_ids: set[str], timeout_s: float = 60) -> None:
    last: list[str] = []

    async def done() -> bool:
        nonlocal last
        last = check_delivered(w.receiver.events(), await w.control.jobs(), batch_ids)
        return not last

    try:
        await wait_until(done, timeout_s, "every change delivered", interval_s=0.3)
    except AssertionError:
        raise AssertionError(f"{last[:10]}\n--- daemon log tail ---\n"
                             f"{w.daemon.logs()[-4000:]}") from None


async def start_batches(w: World, n_batches: int, jobs_each: int) -> set[str]:
    batch_ids = set()
    for i in range(n_batches):
        outcomes = {"completed": 0.7, "completed_with_error": 0.15, "failed": 0.15}
        body = await w.control.start_batch(jobs_each, outcomes=outcomes,
                                           output_type="pdf" if i % 2 else "docx")
        batch_ids.add(body["batch_id"])
    return batch_ids


async def test_every_change_of_200_jobs_in_10_batches_arrives_once(world: World) -> None:
    w = world
    await w.control.call("POST", "/_sim/seed", {"count": 500})  # history: the silent baseline
    w.daemon.start()
    await w.daemon.wait_ready()
    batch_ids = await start_batches(w, 10, 20)
    await wait_all_delivered(w, batch_ids)
    assert w.receiver.bad_signatures == 0
    assert len(w.receiver.events()) >= 200 * 2 + 10
    historic = {j for j, v in (await w.control.jobs()).items() if v["batch_id"] not in batch_ids}
    assert not historic & {e["job"]["id"] for e in w.receiver.events().values() if "job" in e}
    assert await w.daemon.stop(signal.SIGTERM) == 0


async def test_sigkill_mid_scenario_loses_nothing_and_mints_no_second_id(world: World) -> None:
    w = world
    w.daemon.start()
    await w.daemon.wait_ready()
    batch_ids = await start_batches(w, 10, 20)
    await w.receiver.wait_for(lambda r: len(r.ids()) >= 150, 30)
    w.daemon.kill()
    delivered_before = w.receiver.ids()
    moved_before = len((await w.control.call("GET", "/_sim/transitions"))["entries"])

    async def jobs_moved_while_down() -> bool:
        entries = (await w.control.call("GET", "/_sim/transitions"))["entries"]
        return len(entries) >= moved_before + 20

    await wait_until(jobs_moved_while_down, 20, "jobs to move while the daemon is down")
    w.daemon.start()
    await w.daemon.wait_ready()
    await wait_all_delivered(w, batch_ids)
    assert delivered_before <= w.receiver.ids()
    assert await w.daemon.stop(signal.SIGTERM) == 0


@pytest.fixture
async def ccg_world(tmp_path: Path) -> AsyncIterator[World]:
    """The daemon signs in with the Client Credentials Grant, and the simulator's tokens live
    3 s, so `/oauth2/token` is asked again and again while faults fire on it."""
    sim_config = SimulatorConfig(
        seed=43, token_expires_in_s=3,
        timeline=TimelineConfig(submitted_after_s=0.3, min_duration_s=1.0, max_duration_s=4.0),
    )
    auth = {"method": "ccg", "client_id": sim_config.client_id,
            "client_secret": sim_config.client_secret.get_secret_value(),
            "subject_type": "enterprise", "subject_id": sim_config.enterprise_id}
    async for w in webhook_world(tmp_path, sim_config, World, box={"auth": auth}):
        yield w


#: Every Box route the daemon calls, and what each one suffers (count or rate, so that retries
#: and later polls get through).
FAULTS_BY_ROUTE: dict[str, list[dict[str, Any]]] = {
    "list_jobs": [
        {"kind": "429", "count": 2, "retry_after_s": 1},
        {"kind": "500", "rate": 0.15},
        {"kind": "502", "count": 2},
        {"kind": "malformed", "count": 2},
        {"kind": "truncated", "count": 2},
        {"kind": "schema", "count": 2},
        {"kind": "disconnect", "count": 4},
        {"kind": "latency", "rate": 0.1, "latency_s": 0.3},
    ],
    "batch_jobs": [
        {"kind": "429", "count": 2, "retry_after_s": 1},
        {"kind": "503", "rate": 0.1, "retry_after_s": 1},
        {"kind": "500", "rate": 0.1},
        {"kind": "disconnect", "rate": 0.05},
    ],
    "get_job": [
        {"kind": "429", "count": 2, "retry_after_s": 1},
        {"kind": "500", "rate": 0.2},
        {"kind": "disconnect", "count": 4},
    ],
    "token": [
        {"kind": "429", "count": 1, "retry_after_s": 1},
        {"kind": "500", "count": 3},
        {"kind": "disconnect", "count": 2},
    ],
}


@pytest.mark.timeout(300)  # 429s on four routes shrink the request budget for a minute
async def test_faults_on_every_box_route_and_the_receiver_lose_nothing_and_vanish_nothing(
    ccg_world: World,
) -> None:
    """5xx, 429 with Retry-After and dropped connections on the listing, the batch reads, the
    single-job reads and the token endpoint, and a receiver that fails for a while: every change
    still arrives exactly once and no job is called vanished."""
    w = ccg_world
    await w.control.call("POST", "/_sim/seed", {"count": 3000})  # several pages per sweep
    w.daemon.start()
    await w.daemon.wait_ready()
    w.receiver.fail_remaining = 40  # the receiver answers 500 for a while
    for route, faults in FAULTS_BY_ROUTE.items():
        for fault in faults:
            await w.control.fault(route=route, **fault)
    batch_ids = await start_batches(w, 10, 20)
    # Active rounds read the listing's head in place of batch polls, but each batch is still
    # read on its own (GET /2.0/docgen_batch_jobs/{id}) every DIRECT_POLL_EVERY_S: batches that
    # run for longer than that are read through that route whatever else happens.
    for _ in range(2):
        slow = await w.control.start_batch(
            4, min_duration_s=DIRECT_POLL_EVERY_S + 5, max_duration_s=DIRECT_POLL_EVERY_S + 15
        )
        batch_ids.add(slow["batch_id"])
    # A lone straggler is read by its own id (GET /2.0/docgen_jobs/{id}): hold one job of a
    # batch back until the daemon has read it that way a few times.
    straggler_batch = await w.control.start_batch(3, min_duration_s=0.5, max_duration_s=1.0)
    batch_ids.add(straggler_batch["batch_id"])
    held = straggler_batch["job_ids"][0]
    await w.control.call("PUT", f"/_sim/jobs/{held}", {"status": "submitted"})

    async def read_often(route: str, n: int) -> bool:
        """At least `n` reads of `route`, one of which Box answered (the counted faults alone
        make the first six reads of a job by id fail, so a count of reads proves no answer)."""
        codes = (await w.control.call("GET", "/_sim/stats"))["requests"].get(route, {})
        return sum(int(c) for c in codes.values()) >= n and int(codes.get("200", 0)) >= 1

    await wait_until(lambda: read_often("get_job", 6), 120, "the straggler to be read by id")
    await wait_until(lambda: read_often("batch_jobs", 4), 120, "the slow batches to be read")
    await w.control.call("PUT", f"/_sim/jobs/{held}", {"status": "completed"})
    await wait_all_delivered(w, batch_ids, timeout_s=120)
    stats = (await w.control.call("GET", "/_sim/stats"))["requests"]
    fired = {f["route"]: f for f in (await w.control.call("GET", "/_sim/faults"))["entries"]}
    assert fired  # the rate faults are still armed; the counted ones are spent
    for route in FAULTS_BY_ROUTE:
        codes = stats.get(route, {})
        faulted = sum(int(codes.get(c, 0)) for c in ("429", "444", "500", "502", "503"))
        assert faulted >= 2 and int(codes.get("200", 0)) >= 1, (route, codes)
    assert int(stats["token"].get("444", 0)) >= 2 and int(stats["get_job"].get("444", 0)) >= 4
    assert int(stats["list_jobs"].get("444", 0)) >= 4
    status, metrics = await w.daemon.get("/metrics")
    assert status == 200
    for endpoint in ("/2.0/docgen_jobs", "/2.0/docgen_batch_jobs/{batch_id}",
                     "/2.0/docgen_jobs/{job_id}"):
        assert ('box_docgen_api_requests_total{account="default",code="429",'
                f'endpoint="{endpoint}"}}') in metrics
    await w.control.clear_faults()
    assert await w.daemon.stop(signal.SIGTERM) == 0


async def test_a_receiver_that_is_down_gets_everything_when_it_is_back(world: World) -> None:
    w = world
    w.daemon.start()
    await w.daemon.wait_ready()
    w.receiver.fail_status = 503
    batch_ids = await start_batches(w, 2, 10)
    await wait_until(lambda: _all_terminal(w, batch_ids), 30, "batches to finish")
    await w.receiver.wait_for(lambda r: r.refused >= 5, 30)  # retries keep failing meanwhile
    assert w.receiver.ids() == set()
    w.receiver.fail_status = None
    await wait_all_delivered(w, batch_ids)
    assert await w.daemon.stop(signal.SIGTERM) == 0


async def _all_terminal(w: World, batch_ids: set[str]) -> bool:
    jobs = await w.control.jobs()
    return all(j["status"] in TERMINAL for j in jobs.values() if j["batch_id"] in batch_ids)


async def test_wrong_credentials_keep_the_daemon_up_but_not_ready(world: World) -> None:
    w = world
    text = w.config_path.read_text().replace(TOKEN, "wrong-token")
    w.config_path.write_text(text)
    w.daemon.start()

    async def logged_unauthorized() -> bool:
        return "sweep_failed" in w.daemon.logs() and "401" in w.daemon.logs()

    await wait_until(logged_unauthorized, 20, "a clear log line about the 401")
    status, body = await w.daemon.get("/readyz")
    assert status == 503 and "BoxUnauthorized" in body
    assert (await w.daemon.get("/healthz"))[0] == 200
    assert w.daemon.proc is not None and w.daemon.proc.poll() is None
    assert "wrong-token" not in w.daemon.logs()
    assert await w.daemon.stop(signal.SIGTERM) == 0


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool is not installed")
async def test_live_metrics_pass_promtool_check_metrics(world: World) -> None:
    w = world
    w.daemon.start()
    await w.daemon.wait_ready()
    batch_ids = await start_batches(w, 2, 5)
    await wait_all_delivered(w, batch_ids)
    status, text = await w.daemon.get("/metrics")
    assert status == 200
    for name in ("box_docgen_jobs{", "box_docgen_job_transitions_total{",
                 "box_docgen_poll_duration_seconds_bucket{", "box_docgen_api_requests_total{",
                 "box_docgen_poll_last_success_timestamp_seconds{",
                 "box_docgen_api_request_duration_seconds_bucket{",
                 "box_docgen_notifications_total{", "box_docgen_outbox_pending{",
                 "box_docgen_monitor_build_info{"):
        assert name in text, name
    proc = await asyncio.create_subprocess_exec(
        "promtool", "check", "metrics", stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT)
    out, _ = await asyncio.wait_for(proc.communicate(text.encode()), 30)
    assert proc.returncode == 0, out.decode()
    assert out.decode().strip() == ""
    assert await w.daemon.stop(signal.SIGTERM) == 0
