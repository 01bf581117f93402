"""End to end over real sockets: `docgen-monitor run` as a subprocess against a simulator whose
listing lets it down (jobs hidden while readable by id, a third of the account hidden, one id
listed twice with two statuses), and against a store recorded for another Box user. A job is
gone only when Box says so; nothing floods the receiver."""

from __future__ import annotations

import asyncio
import re
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from pydantic import SecretStr

from monitor.simulator import SimulatorConfig, TimelineConfig, UserConfig
from tests.harness import TOKEN, World, wait_until, webhook_world
from tests.test_e2e import start_batches, wait_all_delivered

pytestmark = pytest.mark.e2e

OTHER_TOKEN = "e2e-other-user-token"
OTHER_USER = "30000077"


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    sim_config = SimulatorConfig(
        seed=44, developer_tokens=[SecretStr(TOKEN)],
        users=[UserConfig(id=OTHER_USER, enterprise_id="other-enterprise",
                          developer_tokens=[SecretStr(OTHER_TOKEN)])],
        timeline=TimelineConfig(submitted_after_s=0.3, min_duration_s=1.0, max_duration_s=3.0),
    )
    async for w in webhook_world(tmp_path, sim_config, World):
        yield w


def metric(text: str, name: str) -> float:
    """The value of one unlabelled sample in Prometheus text (0 when absent)."""
    found = re.search(rf"^{re.escape(name)} (\S+)$", text, re.M)
    return float(found.group(1)) if found else 0.0


def vanished(w: World) -> list[str]:
    return [e["job"]["id"] for e in w.receiver.events().values() if e["type"] == "job.vanished"]


async def test_hidden_jobs_are_confirmed_by_id_and_a_hidden_third_is_refused(world: World) -> None:
    """5 % of the jobs hidden from the listing: read by id, counted as listing misses, never
    vanished, while new batches still arrive whole. 30 % hidden: refused, `/readyz` says why,
    and it heals when the listing does."""
    w = world
    await w.control.call("POST", "/_sim/seed", {"count": 400})
    w.daemon.start()
    await w.daemon.wait_ready()
    historic = list(await w.control.jobs())
    await w.control.call("POST", "/_sim/listing/omit", {"job_ids": historic[::20]})

    async def misses_counted() -> bool:
        _, text = await w.daemon.get("/metrics")
        misses = metric(text, 'box_docgen_listing_misses_total{account="default"}')
        return misses >= len(historic[::20])

    await wait_until(misses_counted, 30, "the hidden jobs to be read by id")
    batch_ids = await start_batches(w, 3, 10)
    await wait_all_delivered(w, batch_ids)  # also fails on any job.vanished
    await w.control.call("DELETE", "/_sim/listing")
    await w.control.call("POST", "/_sim/listing/omit", {"fraction": 0.3})

    async def refused() -> bool:
        status, body = await w.daemon.get("/readyz")
        return status == 503 and "mass vanish refused" in body

    await wait_until(refused, 30, "/readyz to report the refused mass vanish")
    _, text = await w.daemon.get("/metrics")
    assert 'box_docgen_mass_change_refused_total{account="default",reason="vanish"}' in text
    assert w.daemon.logs().count('"mass_vanish_refused"') == 1
    await w.control.call("DELETE", "/_sim/listing")
    await w.daemon.wait_ready()
    assert vanished(w) == []
    assert await w.daemon.stop(signal.SIGTERM) == 0


async def test_one_id_listed_with_two_statuses_makes_no_flip_flop(world: World) -> None:
    """An old job also listed on the first page with another status: over many sweeps, not one
    event for it (today: a false change every sweep)."""
    w = world
    await w.control.call("POST", "/_sim/seed", {"count": 300})  # three pages
    oldest = list(await w.control.jobs())[-1]
    w.daemon.start()
    await w.daemon.wait_ready()
    await w.control.call("POST", "/_sim/listing/duplicate", {"job_id": oldest})

    async def settled_often() -> bool:
        return w.daemon.logs().count('"listing_conflicts_settled"') >= 8

    await wait_until(settled_often, 40, "several sweeps over the duplicated id")
    about_it = [e for e in w.receiver.events().values() if e.get("job", {}).get("id") == oldest]
    assert about_it == []
    assert await w.daemon.stop(signal.SIGTERM) == 0


async def test_a_job_box_confirms_gone_vanishes_once_and_its_return_is_announced(
    world: World,
) -> None:
    """Hidden and answered 404 by id: one `job.vanished`. Listed again: one `job.reappeared`,
    with its own id."""
    w = world
    await w.control.call("POST", "/_sim/seed", {"count": 50})
    w.daemon.start()
    await w.daemon.wait_ready()
    gone = list(await w.control.jobs())[7]
    await w.control.call("POST", "/_sim/listing/omit", {"job_ids": [gone]})
    await w.control.fault(route="get_job", kind="404", count=1)
    await w.receiver.wait_for(lambda r: any(
        e["type"] == "job.vanished" for e in r.events().values()), 30)
    await w.control.call("DELETE", "/_sim/listing")
    await w.receiver.wait_for(lambda r: any(
        e["type"] == "job.reappeared" for e in r.events().values()), 30)
    types = sorted(e["type"] for e in w.receiver.events().values()
                   if e.get("job", {}).get("id") == gone)
    assert types == ["job.reappeared", "job.vanished"]
    assert vanished(w) == [gone]
    assert await w.daemon.stop(signal.SIGTERM) == 0


async def test_a_store_of_another_box_user_is_refused_with_exit_2_unless_adopted(
    world: World,
) -> None:
    """The store remembers whose jobs it holds; the same store with another user's token exits
    2 naming both users and the ways out; `run --adopt-identity` takes it over quietly."""
    w = world
    await w.control.call("POST", "/_sim/seed", {"count": 30})
    await w.control.call("POST", "/_sim/seed", {"count": 20, "created_by_id": OTHER_USER})
    w.daemon.start()
    await w.daemon.wait_ready()
    assert await w.daemon.stop(signal.SIGTERM) == 0
    w.config_path.write_text(w.config_path.read_text().replace(TOKEN, OTHER_TOKEN))
    argv = [sys.executable, "-m", "monitor.cli", "run", "--config", str(w.config_path)]
    refused = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    _, err = await asyncio.wait_for(refused.communicate(), 30)
    stderr = err.decode()
    assert refused.returncode == 2, stderr
    for needle in ("20000001", OTHER_USER, "other-enterprise", "new state file",
                   "--adopt-identity"):
        assert needle in stderr
    assert "Traceback" not in stderr and OTHER_TOKEN not in stderr

    log_path = w.config_path.parent / "adopted.log"
    with log_path.open("wb") as log:
        proc = await asyncio.create_subprocess_exec(
            *argv, "--adopt-identity", stdout=log, stderr=subprocess.STDOUT)
    try:
        async def baseline_again() -> bool:
            return '"baseline_recorded"' in log_path.read_text()

        await wait_until(baseline_again, 30, "the adopted store's new baseline")
        batch = await w.control.start_batch(3, created_by_id=OTHER_USER)
        await w.receiver.wait_for(lambda r: any(
            e["type"] == "batch.completed" and e["batch"]["id"] == batch["batch_id"]
            for e in r.events().values()), 30)
    finally:
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 20) == 0
    types = {e["type"] for e in w.receiver.events().values()}
    assert "job.vanished" not in types  # the first user's jobs left silently with the adoption
    discovered = {e["job"]["id"] for e in w.receiver.events().values()
                  if e["type"] == "job.discovered"}
    assert discovered == set(batch["job_ids"])
    assert '"identity_adopted"' in log_path.read_text()


async def test_a_reload_to_another_box_users_credentials_is_refused_not_diffed(
    world: World,
) -> None:
    """SIGHUP brings a token of another user: the next sweep asks who it is and refuses (one
    log line, a metric, `/readyz` 503 naming both users) instead of vanishing one account and
    discovering the other; the old token back, and it is ready again."""
    w = world
    await w.control.call("POST", "/_sim/seed", {"count": 30})
    await w.control.call("POST", "/_sim/seed", {"count": 20, "created_by_id": OTHER_USER})
    w.daemon.start()
    await w.daemon.wait_ready()
    assert w.daemon.proc is not None
    mine = w.config_path.read_text()
    w.config_path.write_text(mine.replace(TOKEN, OTHER_TOKEN))
    w.daemon.proc.send_signal(signal.SIGHUP)

    async def refused() -> bool:
        status, body = await w.daemon.get("/readyz")
        return status == 503 and OTHER_USER in body and "20000001" in body

    await wait_until(refused, 30, "/readyz to refuse the other user's store")
    _, text = await w.daemon.get("/metrics")
    assert 'box_docgen_mass_change_refused_total{account="default",reason="identity"}' in text
    assert w.daemon.logs().count('"identity_mismatch"') == 1
    w.config_path.write_text(mine)
    w.daemon.proc.send_signal(signal.SIGHUP)
    await w.daemon.wait_ready()
    assert [e for e in w.receiver.events().values() if "job" in e] == []
    assert await w.daemon.stop(signal.SIGTERM) == 0
