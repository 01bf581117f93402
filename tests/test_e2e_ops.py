"""The operator's flows end to end: a daemon (subprocess) watching the simulator, a real webhook
receiver, the CLI run as a user runs it (subprocess) and the HTTP API over real sockets.
Silences mute exactly what they match while they last, the history says what became of every
event, and nothing muted is sent after a silence ends."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from tests.harness import wait_until
from tests.test_e2e_active import API_TOKEN, World, make_world

pytestmark = pytest.mark.e2e

HEADERS = {"Authorization": f"Bearer {API_TOKEN}"}
MUTED_TEMPLATE, OTHER_TEMPLATE = "777", "888"


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    async for w in make_world(tmp_path):
        yield w


def cli(world: World, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "monitor.cli", *args, "--config", str(world.config_path)],
        capture_output=True, text=True, timeout=30, check=False,
    )


async def history(world: World, batch_id: str) -> list[dict[str, Any]]:
    done = await asyncio.to_thread(cli, world, "events", "list", "--batch", batch_id,
                                   "--output", "json")
    assert done.returncode == 0, done.stderr
    events: list[dict[str, Any]] = json.loads(done.stdout)
    return events


def outcomes(events: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return sorted((e["type"], d["outcome"]) for e in events for d in e["deliveries"])


async def start_two_batches(world: World) -> tuple[str, str]:
    """One batch of the muted template (two jobs), one of another (one job), both watched."""
    muted = await world.control.start_batch(2, template_file_id=MUTED_TEMPLATE)
    other = await world.control.start_batch(1, template_file_id=OTHER_TEMPLATE)
    for batch in (muted, other):
        assert (await asyncio.to_thread(world.watch, batch["batch_id"])).returncode == 0
    return muted["batch_id"], other["batch_id"]


async def test_a_silence_from_the_cli_mutes_its_template_across_a_restart_until_expired(
    world: World,
) -> None:
    world.daemon.start()
    await world.daemon.wait_ready()
    added = await asyncio.to_thread(
        cli, world, "silence", "add", "--match", f"template_id={MUTED_TEMPLATE}",
        "--for", "1h30m", "--comment", "fixing tags")
    assert added.returncode == 0, added.stderr
    silence_id = added.stdout.strip().splitlines()[-1]
    listed = await asyncio.to_thread(cli, world, "silence", "list")
    assert silence_id in listed.stdout and "fixing tags" in listed.stdout
    # The silence is in the store: a restarted daemon applies it.
    assert await world.daemon.stop() == 0
    world.daemon.start()
    await world.daemon.wait_ready()

    muted, other = await start_two_batches(world)
    await world.receiver.wait_for(lambda r: len(world.of("job.discovered", other)) == 1, 15)

    async def muted_recorded() -> bool:
        return outcomes(await history(world, muted)) == [("job.discovered", "silenced")] * 2

    await wait_until(muted_recorded, 15, "the muted batch's events recorded as silenced")
    assert world.of("job.discovered", muted) == []
    assert await world.metric(
        'box_docgen_notifications_total{account="default",notifier="sink",outcome="silenced"}') == 2
    table = await asyncio.to_thread(cli, world, "events", "list", "--batch", muted)
    assert table.stdout.count("sink: silenced") == 2

    expired = await asyncio.to_thread(cli, world, "silence", "expire", silence_id)
    assert expired.returncode == 0, expired.stderr
    # The jobs move on (submitted after 10 s on the simulator's clock): new events flow again,
    # and what was silenced stays unsent.
    await world.advance(15)
    await world.receiver.wait_for(
        lambda r: len(world.of("job.status_changed", muted)) == 2, 15)
    assert world.of("job.discovered", muted) == []
    final = outcomes(await history(world, muted))
    assert final == [("job.discovered", "silenced")] * 2 + [("job.status_changed", "delivered")] * 2
    still = await asyncio.to_thread(cli, world, "silence", "list")
    assert still.stdout.strip() == "no active or pending silences (--all: expired too)"
    assert await world.daemon.stop() == 0


async def test_silences_and_history_through_the_http_api(world: World) -> None:
    world.daemon.start()
    await world.daemon.wait_ready()
    base = world.daemon.base_url
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{base}/api/v1/silences") as resp:
            assert resp.status == 401
        async with http.post(f"{base}/api/v1/silences", headers=HEADERS, json={
            "match": {"template_id": MUTED_TEMPLATE, "colour": "red"}, "duration": "1h"
        }) as resp:
            assert resp.status == 400
            problems = (await resp.json())["problems"]
            assert "body.comment: required" in problems
        async with http.post(f"{base}/api/v1/silences", headers=HEADERS, json={
            "match": {"template_id": MUTED_TEMPLATE}, "duration": "1h30m",
            "comment": "fixing tags", "created_by": "alice",
        }) as resp:
            assert resp.status == 201
            created = await resp.json()
        assert created["state"] == "active" and created["match"] == {
            "template_id": [MUTED_TEMPLATE]}
        async with http.get(f"{base}/api/v1/silences", headers=HEADERS) as resp:
            assert [s["id"] for s in (await resp.json())["silences"]] == [created["id"]]

        muted, other = await start_two_batches(world)
        await world.receiver.wait_for(lambda r: len(world.of("job.discovered", other)) == 1, 15)

        async def page(query: str) -> dict[str, Any]:
            async with http.get(f"{base}/api/v1/events{query}", headers=HEADERS) as resp:
                assert resp.status == 200, await resp.text()
                body: dict[str, Any] = await resp.json()
                return body

        async def muted_recorded() -> bool:
            events = (await page(f"?batch={muted}"))["events"]
            return outcomes(events) == [("job.discovered", "silenced")] * 2

        await wait_until(muted_recorded, 15, "the muted batch's events recorded as silenced")
        first = await page(f"?batch={muted}&limit=1")
        assert len(first["events"]) == 1 and first["next"] is not None
        second = await page(first["next"].removeprefix("/api/v1/events"))
        assert len(second["events"]) == 1
        assert second["events"][0]["seq"] < first["events"][0]["seq"]
        assert (await page(f"?batch={other}&type=job.discovered"))["events"][0][
            "deliveries"][0]["outcome"] == "delivered"
        async with http.get(f"{base}/api/v1/events?since=yesterday", headers=HEADERS) as resp:
            assert resp.status == 400

        async with http.delete(f"{base}/api/v1/silences/{created['id']}",
                               headers=HEADERS) as resp:
            assert resp.status == 200
            assert (await resp.json())["state"] == "expired"
        async with http.delete(f"{base}/api/v1/silences/nope", headers=HEADERS) as resp:
            assert resp.status == 404
        async with http.get(f"{base}/api/v1/silences", headers=HEADERS) as resp:
            assert (await resp.json())["silences"] == []
        async with http.get(f"{base}/api/v1/silences?all=true", headers=HEADERS) as resp:
            assert [s["state"] for s in (await resp.json())["silences"]] == ["expired"]
    assert world.of("job.discovered", muted) == []
    assert await world.daemon.stop() == 0


@pytest.fixture
async def failing_world(tmp_path: Path) -> AsyncIterator[World]:
    async for w in make_world(tmp_path):
        config = yaml.safe_load(w.config_path.read_text())
        # max_attempts: 1 makes an event dead at its first failure, instead of after a day.
        config["notifiers"][0]["max_attempts"] = 1
        w.config_path.write_text(yaml.safe_dump(config))
        yield w


async def test_a_dead_letter_is_seen_and_retried_through_the_cli_and_the_api(
    failing_world: World,
) -> None:
    world = failing_world
    world.receiver.fail_status = 500
    world.daemon.start()
    await world.daemon.wait_ready()
    batch = await world.control.start_batch(1)
    assert (await asyncio.to_thread(world.watch, batch["batch_id"])).returncode == 0

    async def dead_in_history() -> bool:
        return outcomes(await history(world, batch["batch_id"])) == [("job.discovered", "dead")]

    await wait_until(dead_in_history, 15, "the job.discovered event dead in the history")
    listed = await asyncio.to_thread(cli, world, "dead-letters", "list")
    assert listed.returncode == 0, listed.stderr
    assert "HTTP 500" in listed.stdout and batch["batch_id"] in listed.stdout
    async with aiohttp.ClientSession() as http, http.get(
        f"{world.daemon.base_url}/api/v1/events?batch={batch['batch_id']}", headers=HEADERS
    ) as resp:
        (event,) = (await resp.json())["events"]
    assert event["deliveries"][0]["outcome"] == "dead"
    assert "HTTP 500" in event["deliveries"][0]["last_error"]

    world.receiver.fail_status = None
    retried = await asyncio.to_thread(cli, world, "dead-letters", "retry")
    assert retried.stdout == "1 dead letter(s) queued again\n"
    await world.receiver.wait_for(lambda r: event["id"] in r.ids(), 15)

    async def delivered() -> bool:
        return outcomes(await history(world, batch["batch_id"])) == [
            ("job.discovered", "delivered")]

    await wait_until(delivered, 10, "the retried event delivered in the history")
    empty = await asyncio.to_thread(cli, world, "dead-letters", "list")
    assert empty.stdout == "no dead letters\n"
    assert await world.daemon.stop() == 0
