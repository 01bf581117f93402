"""Two Box accounts watched by one daemon (a subprocess, real sockets): one simulator with two
users, each account with its own token. Each account's events carry its name, each has its own
state file, and another user's token given to one account by SIGHUP refuses that account only:
the other keeps delivering."""

from __future__ import annotations

import asyncio
import json
import signal
import sqlite3
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families
from pydantic import SecretStr

from monitor.simulator import SimulatorConfig, TimelineConfig, UserConfig
from tests.harness import TOKEN, World, wait_until, webhook_world

pytestmark = pytest.mark.e2e

OWN_USER = "20000001"  # the simulator's default user, behind TOKEN
BETA_TOKEN, BETA_USER = "e2e-beta-token", "30000088"
THIRD_TOKEN, THIRD_USER = "e2e-third-token", "30000099"
WATCH_TOKEN = "e2e-watch-token"


async def post_watch(w: World, batch_id: str, query: str = "") -> tuple[int, dict[str, Any]]:
    async with aiohttp.ClientSession() as session, session.post(
        f"{w.daemon.base_url}/api/v1/watch/batches/{batch_id}{query}",
        headers={"Authorization": f"Bearer {WATCH_TOKEN}"},
    ) as resp:
        return resp.status, await resp.json()


def accounts_config(path: Path) -> dict[str, Any]:
    """The world's single-account config turned into two accounts on the same simulator."""
    data: dict[str, Any] = yaml.safe_load(path.read_text())
    box = data.pop("box")
    data["http"]["api_token"] = WATCH_TOKEN  # turns the watch API on
    data["accounts"] = [
        {"name": "alpha", "box": box},
        {"name": "beta", "box": {**box, "auth": {"method": "developer_token",
                                                 "token": BETA_TOKEN}}},
    ]
    return data


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    sim_config = SimulatorConfig(
        seed=45, developer_tokens=[SecretStr(TOKEN)],
        users=[UserConfig(id=BETA_USER, enterprise_id="beta-enterprise",
                          developer_tokens=[SecretStr(BETA_TOKEN)]),
               UserConfig(id=THIRD_USER, enterprise_id="third-enterprise",
                          developer_tokens=[SecretStr(THIRD_TOKEN)])],
        timeline=TimelineConfig(submitted_after_s=0.3, min_duration_s=1.0, max_duration_s=3.0),
    )
    async for w in webhook_world(tmp_path, sim_config, World):
        w.config_path.write_text(yaml.safe_dump(accounts_config(w.config_path)))
        yield w


def job_events(w: World, batch_id: str) -> list[dict[str, Any]]:
    return [e for e in w.receiver.events().values()
            if e.get("job", {}).get("batch_id") == batch_id]


async def wait_terminal_events(w: World, batch_id: str, jobs: int) -> list[dict[str, Any]]:
    async def done() -> bool:
        finals = [e for e in job_events(w, batch_id)
                  if e["to_status"] in ("completed", "completed_with_error", "failed")]
        return len(finals) == jobs

    await wait_until(done, 60, f"every job of batch {batch_id} delivered as final",
                     interval_s=0.3)
    return job_events(w, batch_id)


def cli(w: World, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "monitor.cli", *args, "--config", str(w.config_path)],
        capture_output=True, text=True, timeout=30, check=False,
    )


def snapshot_job_ids(db: Path) -> set[str]:
    with sqlite3.connect(db) as conn:
        return {row[0] for row in conn.execute("SELECT id FROM jobs")}


async def test_each_account_delivers_its_own_events_named_and_keeps_its_own_state(
    world: World,
) -> None:
    w = world
    await w.control.call("POST", "/_sim/seed", {"count": 20})
    await w.control.call("POST", "/_sim/seed", {"count": 10, "created_by_id": BETA_USER})
    w.daemon.start()
    await w.daemon.wait_ready()
    alpha = await w.control.start_batch(4)
    beta = await w.control.start_batch(3, created_by_id=BETA_USER)
    alpha_events = await wait_terminal_events(w, alpha["batch_id"], 4)
    beta_events = await wait_terminal_events(w, beta["batch_id"], 3)
    assert {e["account"] for e in alpha_events} == {"alpha"}
    assert {e["account"] for e in beta_events} == {"beta"}
    assert w.receiver.bad_signatures == 0

    # Separate snapshots: `alpha` (not `default`) has a sibling file, as `beta` does.
    state = w.config_path.parent
    jobs = await w.control.jobs()
    alpha_jobs = snapshot_job_ids(state / "state.alpha.db")
    beta_jobs = snapshot_job_ids(state / "state.beta.db")
    assert alpha_jobs == {j for j, v in jobs.items() if v.get("created_by_id") != BETA_USER}
    assert beta_jobs == {j for j, v in jobs.items() if v.get("created_by_id") == BETA_USER}
    # No account is named `default`: `state.db` holds only what every account shares
    # (leases, silences), never a job.
    assert snapshot_job_ids(state / "state.db") == set()

    status, body = await w.daemon.get("/readyz")
    assert status == 200, body
    assert set(json.loads(body)["accounts"]) == {"alpha", "beta"}

    # The watch API needs to know the account once there are several.
    assert (await post_watch(w, beta["batch_id"]))[0] == 400
    status, answer = await post_watch(w, beta["batch_id"], "?account=gamma")
    assert status == 404 and "gamma" not in answer["error"]  # the caller's text not echoed
    assert await post_watch(w, beta["batch_id"], "?account=beta") == (
        202, {"batch_id": beta["batch_id"], "watched": True, "account": "beta"})

    # Metrics about an account's work are labelled with its name, and only configured names.
    _, text = await w.daemon.get("/metrics")
    samples = [s for f in text_string_to_metric_families(text) for s in f.samples]
    accounts = {s.labels.get("account") for s in samples if s.name.startswith("box_docgen_")}
    assert accounts == {"alpha", "beta", None}  # None: the event loop and build info
    jobs = {(s.labels["account"], s.labels["status"]): s.value for s in samples
            if s.name == "box_docgen_jobs"}
    assert sum(v for (a, _), v in jobs.items() if a == "alpha") == len(alpha_jobs)
    assert sum(v for (a, _), v in jobs.items() if a == "beta") == len(beta_jobs)
    for name in ("box_docgen_polls_total", "box_docgen_api_requests_total",
                 "box_docgen_outbox_pending", "box_docgen_poll_last_success_timestamp_seconds"):
        assert {s.labels["account"] for s in samples if s.name == name} == {"alpha", "beta"}, name
    assert await w.daemon.stop(signal.SIGTERM) == 0


async def test_another_users_token_for_one_account_refuses_that_account_only(
    world: World,
) -> None:
    """SIGHUP gives `beta` the token of a third user: beta's next sweep refuses (`/readyz` 503
    naming beta and both users), while alpha keeps polling and delivering its events."""
    w = world
    w.daemon.start()
    await w.daemon.wait_ready()
    assert w.daemon.proc is not None
    mine = w.config_path.read_text()
    w.config_path.write_text(mine.replace(BETA_TOKEN, THIRD_TOKEN))
    w.daemon.proc.send_signal(signal.SIGHUP)

    last = ""

    async def beta_refused() -> bool:
        nonlocal last
        status, body = await w.daemon.get("/readyz")
        last = body
        if status != 503:
            return False
        accounts = json.loads(body)["accounts"]
        beta = json.dumps(accounts["beta"])
        return (not accounts["beta"]["ready"] and THIRD_USER in beta and BETA_USER in beta
                and accounts["alpha"]["ready"])

    try:
        await wait_until(beta_refused, 30, "/readyz to refuse beta's store for the third user")
    except AssertionError:
        raise AssertionError(f"last /readyz: {last}") from None
    alpha = await w.control.start_batch(3)
    alpha_events = await wait_terminal_events(w, alpha["batch_id"], 3)
    assert {e["account"] for e in alpha_events} == {"alpha"}
    mismatches = [json.loads(line) for line in w.daemon.logs().splitlines()
                  if '"identity_mismatch"' in line]
    assert [m["account"] for m in mismatches] == ["beta"]
    _, text = await w.daemon.get("/metrics")
    assert 'box_docgen_mass_change_refused_total{account="beta",reason="identity"}' in text
    assert 'box_docgen_mass_change_refused_total{account="alpha",reason="identity"}' not in text

    w.config_path.write_text(mine)
    w.daemon.proc.send_signal(signal.SIGHUP)
    await w.daemon.wait_ready()
    assert await w.daemon.stop(signal.SIGTERM) == 0


async def test_a_silence_of_one_account_mutes_that_account_only(world: World) -> None:
    """Silences live in `state.url`'s store, which every account's dispatcher reads: one that
    matches `account: beta` mutes beta's events and leaves alpha's alone; `events list
    --account` reads each account's own history."""
    w = world
    w.daemon.start()
    await w.daemon.wait_ready()
    added = await asyncio.to_thread(
        cli, w, "silence", "add", "--match", "account=beta", "--for", "1h",
        "--comment", "beta's templates are being fixed")
    assert added.returncode == 0, added.stderr
    alpha = await w.control.start_batch(2)
    beta = await w.control.start_batch(2, created_by_id=BETA_USER)
    await wait_terminal_events(w, alpha["batch_id"], 2)

    async def beta_silenced() -> bool:
        done = await asyncio.to_thread(cli, w, "events", "list", "--account", "beta",
                                       "--batch", beta["batch_id"], "--output", "json")
        assert done.returncode == 0, done.stderr
        events = json.loads(done.stdout)
        return bool(events) and all(d["outcome"] == "silenced" for e in events
                                    for d in e["deliveries"]) and any(
            e["type"] == "batch.completed" for e in events)

    await wait_until(beta_silenced, 30, "beta's batch recorded, every event silenced",
                     interval_s=0.5)
    assert job_events(w, beta["batch_id"]) == []
    alpha_history = await asyncio.to_thread(cli, w, "events", "list", "--account", "alpha",
                                            "--batch", alpha["batch_id"], "--output", "json")
    assert {d["outcome"] for e in json.loads(alpha_history.stdout)
            for d in e["deliveries"]} == {"delivered"}
    assert await w.daemon.stop(signal.SIGTERM) == 0


async def test_the_status_page_shows_each_accounts_batches_in_its_own_section(
    world: World,
) -> None:
    """With several accounts the page has one set of sections per account, each naming it
    and saying this replica leads it, each with that account's batches only."""
    w = world
    w.daemon.start()
    await w.daemon.wait_ready()
    still = {"submitted_after_s": 0.0, "min_duration_s": 3600.0, "max_duration_s": 3600.0}
    alpha = (await w.control.start_batch(2, **still))["batch_id"]
    beta = (await w.control.start_batch(3, created_by_id=BETA_USER, **still))["batch_id"]
    sections: dict[str, str] = {}

    async def both_shown() -> bool:
        status, body = await w.daemon.get("/")
        assert status == 200, body
        for name in ("alpha", "beta"):
            start = body.index(f'id="batches-{name}"')
            sections[name] = body[start:body.index(f'id="failures-{name}"', start)]
        return alpha in sections["alpha"] and beta in sections["beta"]

    await wait_until(both_shown, 20, "each account's batch on the page")
    assert beta not in sections["alpha"] and alpha not in sections["beta"]
    _, body = await w.daemon.get("/")
    for name in ("alpha", "beta"):
        assert f'id="account-{name}">Account <bdi>{name}</bdi>' in body
        assert f"This replica leads account <bdi>{name}</bdi>" in body
    assert await w.daemon.stop(signal.SIGTERM) == 0
