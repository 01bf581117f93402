"""End to end, over real sockets: batches started through Box's API (the simulator) with two
versions of one template, `docgen-monitor run` as a subprocess with the default thresholds, and a
webhook receiver behind a route on `template.failure_rate_rose`: the regression arrives once,
with both versions and ratios, and a later batch of the same version adds none."""

from __future__ import annotations

import signal
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from pydantic import SecretStr

from monitor.simulator import RunningSimulator, SimulatorConfig, TimelineConfig, start_simulator
from tests.harness import TOKEN, DaemonProcess, SimControl, free_port, write_config
from tests.receiver import WebhookReceiver

pytestmark = pytest.mark.e2e

TEMPLATE = "1300389489282"
RISE = "template.failure_rate_rose"


@dataclass
class World:
    sim: RunningSimulator
    control: SimControl
    session: aiohttp.ClientSession
    daemon: DaemonProcess


@pytest.fixture
async def world(tmp_path: Path, receiver: WebhookReceiver) -> AsyncIterator[World]:
    sim = await start_simulator(SimulatorConfig(
        seed=11, developer_tokens=[SecretStr(TOKEN)],
        timeline=TimelineConfig(submitted_after_s=0.2, min_duration_s=0.5, max_duration_s=1.5,
                                outcomes={"completed": 1.0, "completed_with_error": 0.0,
                                          "failed": 0.0}),
    ))
    session = aiohttp.ClientSession()
    port = free_port()
    # Only the rise and the batch completions (to know when a batch is recorded) reach the hook.
    config = write_config(
        tmp_path / "config.yaml", box_url=sim.url, hook_url=receiver.url, http_port=port,
        routes=[{"match": {"type": [RISE, "batch.completed"]}, "notify": ["sink"]}],
    )
    daemon = DaemonProcess(config, port)
    try:
        yield World(sim, SimControl(sim.url, session), session, daemon)
    finally:
        daemon.ensure_stopped()
        await session.close()
        await sim.close()


async def run_batch(w: World, receiver: WebhookReceiver, version: str, failed: int) -> str:
    """20 jobs of `version` started through Box's API, `failed` of them pinned to a failure;
    returns once the daemon announced the batch complete."""
    body = {
        "file": {"type": "file", "id": TEMPLATE},
        "file_version": {"type": "file_version", "id": version},
        "input_source": "api",
        "destination_folder": {"type": "folder", "id": "0"},
        "output_type": "pdf",
        "document_generation_data": [{"generated_file_name": f"doc{i}", "user_input": {}}
                                     for i in range(20)],
    }
    async with w.session.post(f"{w.sim.url}/2.0/docgen_batches", json=body,
                              headers={"Authorization": f"Bearer {TOKEN}",
                                       "box-version": "2025.0"}) as r:
        assert r.status == 202, await r.text()
        batch_id = str((await r.json())["id"])
    jobs = [j for j in (await w.control.jobs()).values() if j["batch_id"] == batch_id]
    assert len(jobs) == 20 and {j["template_file_version_id"] for j in jobs} == {version}
    for job in jobs[:failed]:
        await w.control.call("PUT", f"/_sim/jobs/{job['id']}",
                             {"status": "failed", "errors": ["The tag 'city' was not provided"]})

    def completed(r: WebhookReceiver) -> bool:
        return any(e["type"] == "batch.completed" and e["batch"]["id"] == batch_id
                   for e in r.events().values())

    await receiver.wait_for(completed, 40)
    return batch_id


def rises(receiver: WebhookReceiver) -> list[dict[str, Any]]:
    return [d.body for d in receiver.deliveries if d.body["type"] == RISE]


async def test_a_new_template_version_that_fails_more_is_announced_once(
    world: World, receiver: WebhookReceiver
) -> None:
    w = world
    w.daemon.start()
    await w.daemon.wait_ready()
    await run_batch(w, receiver, "9001", failed=0)
    assert rises(receiver) == []  # one version: nothing to compare with
    await run_batch(w, receiver, "9002", failed=10)
    await receiver.wait_for(lambda r: bool(rises(r)), 10)
    [rise] = rises(receiver)
    assert rise["id"] == f"template:{TEMPLATE}:9001:9002:failure_rate_rose"
    assert "job" not in rise and "batch" not in rise
    assert rise["template"] == {
        "id": TEMPLATE, "version_id": "9002", "failure_ratio": 0.5, "jobs": 20,
        "failed_jobs": 10, "previous_version_id": "9001", "previous_failure_ratio": 0.0,
        "previous_jobs": 20, "previous_failed_jobs": 0, "window_s": 86400.0,
    }
    # The same two versions, worse still: no second event (its batch completion came after).
    await run_batch(w, receiver, "9002", failed=20)
    assert len(rises(receiver)) == 1
    # A restart: the store remembers the rise; the next batch's finish mints nothing.
    assert await w.daemon.stop(signal.SIGTERM) == 0
    w.daemon.start()
    await w.daemon.wait_ready()
    await run_batch(w, receiver, "9002", failed=5)
    assert len(rises(receiver)) == 1
    assert await w.daemon.stop(signal.SIGTERM) == 0
