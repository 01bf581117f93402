"""Box webhooks as a fast path, end to end over real sockets: the simulator signs and sends Doc
Gen notifications to the daemon (a subprocess), installed through `docgen-monitor box-webhooks`.
A notification only makes the daemon poll: forged ones are refused and counted, verified ones
make no event Box's answer does not show, a storm is coalesced, lost ones are made up for by
polling, and the same changes are found with and without the fast path.

The simulator's clock is frozen: jobs change only when a test pins them."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families
from pydantic import SecretStr

from monitor.box.webhooks import signature
from monitor.simulator import SimulatorConfig
from tests import harness
from tests.harness import wait_until

pytestmark = pytest.mark.e2e

PRIMARY = "e2e-primary-signature-key"
SECONDARY = "e2e-secondary-signature-key"
TEMPLATE = "1300000000777"
JOBS = 3
# The sweep is put out of the way (1 h instead of 60 s) in every test here: a change must be
# found by what each test is about (a hinted poll, or the periodic active poll), not a sweep.
POLL = {"sweep_interval": "1h"}


class World(harness.World):
    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "monitor.cli", "box-webhooks", *args,
             "--config", str(self.config_path)],
            capture_output=True, text=True, timeout=30, check=False,
        )

    @property
    def hook_address(self) -> str:
        return f"{self.daemon.base_url}/api/v1/box/webhook"

    async def install(self) -> None:
        done = await asyncio.to_thread(
            self.cli, "install", "--template", TEMPLATE, "--address", self.hook_address)
        assert done.returncode == 0, done.stderr

    async def start_batch(self) -> dict[str, Any]:
        """A batch of the watched template whose jobs wait (frozen clock) until pinned."""
        return await self.control.start_batch(JOBS, template_file_id=TEMPLATE)

    async def pin(self, job_id: str, status: str) -> None:
        await self.control.call("PUT", f"/_sim/jobs/{job_id}", {"status": status})

    async def metrics(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        _, text = await self.daemon.get("/metrics")
        return {(s.name, tuple(sorted(s.labels.items()))): s.value
                for f in text_string_to_metric_families(text) for s in f.samples}

    async def metric(self, name: str, **labels: str) -> float:
        """A sample of the `default` account (the endpoint's notification count has none)."""
        if name != "box_docgen_box_webhooks_total":
            labels = {"account": "default", **labels}
        return (await self.metrics()).get((name, tuple(sorted(labels.items()))), 0.0)

    def changes(self) -> set[tuple[str, str, str]]:
        """(job, from, to) of every job.status_changed the receiver got."""
        return {(e["job"]["id"], e["from_status"], e["to_status"])
                for e in self.receiver.events().values() if e["type"] == "job.status_changed"}

    async def transitions(self) -> set[tuple[str, str, str]]:
        body = await self.control.call("GET", "/_sim/transitions")
        return {(t["job_id"], t["from_status"], t["to_status"]) for t in body["entries"]}

    async def batch_polls(self) -> int:
        return int(self.sim.state.stats.count("batch_jobs") + self.sim.state.stats.count("get_job"))

    async def post_notification(self, body: bytes, key: str, delivery_id: str) -> int:
        timestamp = datetime.now(UTC).isoformat()
        headers = {
            "BOX-DELIVERY-ID": delivery_id, "BOX-DELIVERY-TIMESTAMP": timestamp,
            "BOX-SIGNATURE-PRIMARY": signature(key, body, timestamp),
            "BOX-SIGNATURE-VERSION": "1", "BOX-SIGNATURE-ALGORITHM": "HmacSHA256",
        }
        async with aiohttp.ClientSession() as session, session.post(
                self.hook_address, data=body, headers=headers) as resp:
            return resp.status


def notification(trigger: str = "DOCGEN_DOCUMENT_GENERATION_SUCCEEDED") -> bytes:
    return json.dumps({"type": "webhook_event", "id": "forged", "trigger": trigger,
                       "source": {"type": "file", "id": TEMPLATE}}).encode()


async def make_world(tmp_path: Path, *, webhooks: bool = True) -> AsyncIterator[World]:
    sim_config = SimulatorConfig(
        seed=5, developer_tokens=[SecretStr(harness.TOKEN)], frozen_clock=True,
        webhook_primary_key=PRIMARY, webhook_secondary_key=SECONDARY,
    )
    box = {"webhook": {"primary_key": PRIMARY, "secondary_key": SECONDARY}} if webhooks else {}
    # With the HTTP API's bearer token set: Box sends none, its route takes the signature.
    async for w in harness.webhook_world(tmp_path, sim_config, World, box=box, poll=POLL,
                                         http={"api_token": "e2e-api-token"}):
        yield w


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    async for w in make_world(tmp_path):
        yield w


async def started(world: World) -> dict[str, Any]:
    """A batch of the watched template, the webhook installed, the daemon ready (its first
    sweep has made the batch active)."""
    batch = await world.start_batch()
    await world.install()
    world.daemon.start()
    await world.daemon.wait_ready()
    return batch


async def test_install_list_and_remove_through_the_cli(world: World) -> None:
    await world.install()
    hooks = list(world.sim.state.webhooks.hooks.values())
    assert [(h.target_id, h.target_type, h.address) for h in hooks] == [
        (TEMPLATE, "file", world.hook_address)]
    assert set(hooks[0].triggers) == {
        "DOCGEN_DOCUMENT_GENERATION_STARTED", "DOCGEN_DOCUMENT_GENERATION_SUCCEEDED",
        "DOCGEN_DOCUMENT_GENERATION_FAILED"}
    listed = await asyncio.to_thread(world.cli, "list")
    assert listed.returncode == 0, listed.stderr
    assert [json.loads(line)["id"] for line in listed.stdout.splitlines()] == [hooks[0].id]
    again = await asyncio.to_thread(
        world.cli, "install", "--template", TEMPLATE, "--address", world.hook_address)
    assert again.returncode == 1 and "409" in again.stderr  # one webhook per item per user
    removed = await asyncio.to_thread(world.cli, "remove", "--id", hooks[0].id)
    assert removed.returncode == 0, removed.stderr
    assert world.sim.state.webhooks.hooks == {}
    missing = await asyncio.to_thread(world.cli, "install", "--template", TEMPLATE)
    assert missing.returncode == 2 and "--address" in missing.stderr


async def test_a_notification_gets_the_change_polled_at_once(world: World) -> None:
    batch = await started(world)
    jobs = batch["job_ids"]
    for job_id in jobs:
        await world.pin(job_id, "submitted")
    await world.receiver.wait_for(lambda r: len(world.changes()) == JOBS, 10)
    assert await world.metric("box_docgen_box_webhooks_total", outcome="accepted",
                              trigger="docgen_document_generation_started") >= 1
    hinted = await world.metric("box_docgen_detection_latency_seconds_count",
                                found_by="webhook_hint")
    polled = await world.metric("box_docgen_detection_latency_seconds_count",
                                found_by="active_poll")
    # Pinned one after another, a change may fall in a hinted poll's one-second gap, where the
    # periodic poll can get it first; none waits for the sweep.
    assert hinted >= 1 and hinted + polled == JOBS

    async def healthy() -> bool:
        return await world.metric("box_docgen_box_webhooks_healthy") == 1

    await wait_until(healthy, 10, "webhooks healthy")
    _, ready = await world.daemon.get("/readyz")
    assert json.loads(ready)["active_interval_s"] == 30.0  # the default stretch
    for job_id in jobs:
        await world.pin(job_id, "completed")
    await world.receiver.wait_for(lambda r: len(world.changes()) == 2 * JOBS, 10)
    assert world.changes() == await world.transitions()
    assert await world.daemon.stop() == 0


async def test_forged_and_unchanged_notifications_make_no_event(world: World) -> None:
    batch = await started(world)
    polls = await world.batch_polls()
    assert await world.post_notification(notification(), "not-the-key", "f-1") == 401
    assert await world.post_notification(notification(), "", "f-2") == 401
    assert await world.metric("box_docgen_box_webhooks_total", outcome="bad_signature",
                              trigger="unknown") == 2
    assert await world.batch_polls() == polls  # a forged notification does not even poll

    # Well signed but false: Box's answer shows no change, so nothing is announced.
    assert await world.post_notification(notification(), PRIMARY, "v-1") == 200
    await wait_until(lambda: _more(world, polls), 5, "the hinted poll")
    assert await world.post_notification(notification(), PRIMARY, "v-1") == 200  # a replay
    assert await world.metric("box_docgen_box_webhooks_total", outcome="replayed",
                              trigger="unknown") == 1
    await world.pin(batch["job_ids"][0], "failed")  # a real change, for a bounded wait
    await world.receiver.wait_for(lambda r: len(world.changes()) == 1, 10)
    assert [e["type"] for e in world.receiver.events().values()] == ["job.status_changed"]
    assert await world.daemon.stop() == 0


async def _more(world: World, polls: int) -> bool:
    return await world.batch_polls() > polls


async def test_a_storm_costs_at_most_one_poll_per_batch_per_second(world: World) -> None:
    await started(world)
    polls = await world.batch_polls()
    began = time.monotonic()
    statuses = await asyncio.gather(*(
        world.post_notification(notification(), PRIMARY, f"storm-{i}") for i in range(200)))
    assert set(statuses) == {200}

    async def settled() -> bool:
        total = sum(v for (name, _), v in (await world.metrics()).items()
                    if name == "box_docgen_box_webhook_polls_total")
        return total == 200

    await wait_until(settled, 10, "every hint polled or coalesced")
    elapsed_s = time.monotonic() - began
    hinted = await world.metric("box_docgen_box_webhook_polls_total", outcome="polled")
    assert 1 <= hinted <= elapsed_s + 1
    assert await world.metric("box_docgen_box_webhook_polls_total", outcome="coalesced") \
        == 200 - hinted
    assert await world.batch_polls() - polls <= hinted + 1 + elapsed_s / 5  # + periodic polls
    assert await world.daemon.stop() == 0


async def test_with_every_notification_dropped_polling_finds_every_change(
    world: World,
) -> None:
    await world.control.call("POST", "/_sim/webhooks/faults", {"kind": "drop"})
    batch = await started(world)
    for job_id in batch["job_ids"]:
        await world.pin(job_id, "completed_with_error")
    await world.receiver.wait_for(lambda r: len(world.changes()) == JOBS, 15)  # active: 5 s
    assert world.changes() == await world.transitions()
    assert await world.metric("box_docgen_box_webhooks_healthy") == 0
    assert await world.metric("box_docgen_detection_latency_seconds_count",
                              found_by="active_poll") == JOBS
    deliveries = await world.control.call("GET", "/_sim/webhooks/deliveries")
    assert {d["fault"] for d in deliveries["entries"]} == {"drop"}
    assert await world.daemon.stop() == 0


async def test_a_batch_answer_breaking_box_schema_records_nothing_on_the_fast_path(
    world: World,
) -> None:
    batch = await started(world)
    broken = batch["job_ids"][0]
    # Box's batch answer breaks its schema (the fast path's read), and the job's entry in the
    # full listing too (discovery reads the listing's head every active interval).
    await world.control.fault(route="batch_jobs", kind="schema")
    await world.control.call("POST", "/_sim/listing/malformed",
                             {"job_ids": [broken], "kind": "missing_status"})
    await world.pin(broken, "completed")

    async def failed() -> bool:
        return await world.metric("box_docgen_box_webhook_polls_total", outcome="failed") >= 1

    await wait_until(failed, 10, "the hinted poll to fail")
    assert world.changes() == set()
    await world.control.clear_faults()
    await world.control.call("DELETE", "/_sim/listing")
    await world.pin(batch["job_ids"][1], "completed")  # the next hint polls a sound answer
    await world.receiver.wait_for(lambda r: len(world.changes()) == 2, 10)
    assert world.changes() == await world.transitions()
    assert await world.daemon.stop() == 0


SCRIPT = [("submitted",) * JOBS, ("completed", "failed", "submitted"),
          ("completed", "failed", "completed_with_error")]


@pytest.mark.parametrize("mode", [
    "polling only", "webhooks", "webhooks, late and duplicated", "webhooks, badly signed"])
async def test_the_same_changes_are_found_with_and_without_the_fast_path(
    tmp_path: Path, mode: str,
) -> None:
    async for world in make_world(tmp_path, webhooks=mode != "polling only"):
        if "late" in mode:
            await world.control.call("POST", "/_sim/webhooks/faults",
                                     {"kind": "late", "rate": 0.5, "delay_s": 1.0})
            await world.control.call("POST", "/_sim/webhooks/faults", {"kind": "duplicate"})
        if "badly" in mode:
            await world.control.call("POST", "/_sim/webhooks/faults", {"kind": "bad_signature"})
        batch = await started(world)
        for step in SCRIPT:
            for job_id, status in zip(batch["job_ids"], step, strict=True):
                await world.pin(job_id, status)
            expected = await world.transitions()
            await world.receiver.wait_for(
                lambda r, w=world, want=expected: w.changes() == want, 15)
        if mode == "webhooks":
            assert await world.metric("box_docgen_detection_latency_seconds_count",
                                      found_by="webhook_hint") >= 1
        if "badly" in mode:
            assert await world.metric("box_docgen_box_webhooks_total", outcome="bad_signature",
                                      trigger="unknown") >= 1
        assert await world.daemon.stop() == 0
