"""Credentials that fail, fail quietly and come back by themselves: the daemon as a subprocess
against the simulator over real sockets, with a wrong CCG secret and 20 active batches. The
simulator's clock is frozen, so the batches stay active until the test moves it."""

from __future__ import annotations

import asyncio
import json
import re
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import SecretStr
from structlog.testing import capture_logs

from monitor.box.auth import REFUSED_BACKOFF_INITIAL_S
from monitor.box.errors import BoxAuthError, BoxConnectionError
from monitor.config import Config, load_config
from monitor.daemon import Daemon
from monitor.simulator import SimulatorConfig, TimelineConfig, start_simulator
from tests import harness
from tests.harness import wait_until
from tests.receiver import WebhookReceiver

pytestmark = pytest.mark.e2e

CLIENT_ID = "e2e-client"
SECRET = "e2e-right-secret"
WRONG = "e2e-wrong-secret-never-logged"
ENTERPRISE = "e2e-enterprise"
BATCHES = 20
WINDOW_S = 20.0


class World(harness.World):
    def write_secret(self, secret: str) -> None:
        config = yaml.safe_load(self.config_path.read_text())
        config["box"]["auth"]["client_secret"] = secret
        self.config_path.write_text(yaml.safe_dump(config))

    def log_events(self, name: str) -> list[dict[str, Any]]:
        lines = self.daemon.logs().splitlines()
        entries = [json.loads(line) for line in lines if line.startswith("{")]
        return [e for e in entries if e.get("event") == name]

    async def token_requests(self) -> int:
        stats = await self.control.call("GET", "/_sim/stats")
        return sum(stats["requests"].get("token", {}).values())

    async def metric(self, name: str) -> float | None:
        _, text = await self.daemon.get("/metrics")
        for line in text.splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
        return None

    async def readyz(self) -> tuple[int, dict[str, Any]]:
        status, body = await self.daemon.get("/readyz")
        return status, json.loads(body)


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    sim_config = SimulatorConfig(
        seed=11, client_id=CLIENT_ID, client_secret=SecretStr(SECRET), enterprise_id=ENTERPRISE,
        frozen_clock=True,
        timeline=TimelineConfig(submitted_after_s=10, min_duration_s=20, max_duration_s=40),
    )
    auth = {"method": "ccg", "client_id": CLIENT_ID, "client_secret": SECRET,
            "subject_id": ENTERPRISE}
    async for w in harness.webhook_world(tmp_path, sim_config, World, box={"auth": auth},
                                         poll={}):  # the default intervals
        yield w


async def test_a_wrong_secret_backs_off_shows_in_readyz_and_a_sighup_resumes_polling(
    world: World,
) -> None:
    """With a wrong secret and 20 active batches the daemon asks for a token once per backoff
    step (5 s doubling), not 20 times per round; `/readyz` is 503 and says why; one log line per
    step; a SIGHUP with the right secret resumes polling within one backoff step."""
    w = world
    batches = [await w.control.start_batch(1) for _ in range(BATCHES)]
    w.daemon.start()
    await w.daemon.wait_ready()

    async def all_active() -> bool:
        return await w.metric('box_docgen_active_batches{account="default"}') == BATCHES

    await wait_until(all_active, 30, "20 active batches")
    assert await w.daemon.stop() == 0

    w.write_secret(WRONG)  # a rotated secret, then a restart on the same state file
    before = await w.token_requests()
    w.daemon.start()
    started = time.monotonic()

    async def refused() -> bool:
        try:
            status, body = await w.readyz()
        except OSError:
            return False
        return status == 503 and str(body.get("auth", "")).startswith("refused: invalid_grant")

    await wait_until(refused, 15, "/readyz to report the refused grant")
    _, body = await w.readyz()
    assert "next try in" in body["auth"] or body["auth"].endswith("trying again")
    assert body["active_batches"] == BATCHES

    await asyncio.sleep(max(0.0, started + WINDOW_S - time.monotonic()))  # the measured window
    asked = await w.token_requests() - before
    # 5 s doubling from the first try: t = 0, 5, 15 (35 is outside) -> at most 3, plus one of
    # slack for a step that falls on the window's edge. Before: 20 per 5 s active round.
    assert 1 <= asked <= 4, asked

    async def one_line_and_one_count_per_request() -> bool:
        """Read together: a step may fall between reading the simulator and the daemon."""
        requests = await w.token_requests() - before
        counted = await w.metric(
            'box_docgen_auth_failures_total{account="default",reason="invalid_grant"}')
        return len(w.log_events("box_token_refused")) == requests == counted

    await wait_until(one_line_and_one_count_per_request, 5,
                     "one box_token_refused line and one count per token request")
    assert {e["reason"] for e in w.log_events("box_token_refused")} == {"invalid_grant"}
    assert w.log_events("active_poll_failed") == [] and w.log_events("sweep_failed") == []
    assert WRONG not in w.daemon.logs()

    w.write_secret(SECRET)
    assert w.daemon.proc is not None
    reloaded_at = time.monotonic()
    w.daemon.proc.send_signal(signal.SIGHUP)

    async def reloaded() -> bool:
        return bool(w.log_events("box_auth_reloaded"))

    await wait_until(reloaded, 10, "the reload of box.auth")
    await w.control.call("POST", "/_sim/clock/advance", {"seconds": 100})
    job_ids = {b["job_ids"][0] for b in batches}

    async def finished() -> bool:
        done = {e["job"]["id"] for e in w.receiver.events().values()
                if e["type"] == "job.status_changed"
                and e["to_status"] in ("completed", "completed_with_error", "failed")}
        return job_ids <= done

    # Polling resumes at the next active round (5 s), well within the step in force (20 s).
    step_s = REFUSED_BACKOFF_INITIAL_S * 4
    await wait_until(finished, step_s, "every batch's terminal status after the SIGHUP")
    assert time.monotonic() - reloaded_at < step_s
    status, body = await w.readyz()
    assert (status, body["auth"]) == (200, "ok")
    assert await w.daemon.stop() == 0



async def test_a_secret_rotated_at_box_and_fixed_there_resumes_polling_without_a_reload(
    world: World,
) -> None:
    """Box rotates the app's secret and revokes its tokens while the daemon runs: the next poll
    is refused (`invalid_client`) and `/readyz` says so; once the secret is fixed at Box, the
    daemon's next try, at most one backoff step later, resumes polling, with no SIGHUP."""
    w = world
    batches = [await w.control.start_batch(1) for _ in range(5)]
    w.daemon.start()
    await w.daemon.wait_ready()

    async def all_active() -> bool:
        return await w.metric('box_docgen_active_batches{account="default"}') == len(batches)

    await wait_until(all_active, 30, "5 active batches")
    await w.control.call("POST", f"/_sim/clients/{CLIENT_ID}/secret",
                         {"client_secret": "rotated-at-box", "revoke_tokens": True})

    async def refused() -> bool:
        status, body = await w.readyz()
        return status == 503 and str(body["auth"]).startswith("refused: invalid_client")

    await wait_until(refused, 15, "/readyz to report the rotated secret")
    await w.control.call("POST", f"/_sim/clients/{CLIENT_ID}/secret", {"client_secret": SECRET})
    fixed_at = time.monotonic()
    _, body = await w.readyz()
    wait = re.search(r"next try in (\d+)s", body["auth"])
    step_s = float(wait.group(1)) if wait else 0.0  # 0: "trying again"
    await w.control.call("POST", "/_sim/clock/advance", {"seconds": 100})
    job_ids = {b["job_ids"][0] for b in batches}

    async def finished() -> bool:
        done = {e["job"]["id"] for e in w.receiver.events().values()
                if e["type"] == "job.status_changed"
                and e["to_status"] in ("completed", "completed_with_error", "failed")}
        return job_ids <= done

    # The next try comes with the first active round (every 5 s) after the step is over.
    await wait_until(finished, step_s + 5 + 5, "every batch's outcome after the fix")
    assert time.monotonic() - fixed_at <= step_s + 5 + 5
    assert (await w.readyz())[0] == 200
    assert w.log_events("box_auth_reloaded") == []
    (accepted,) = w.log_events("box_token_accepted_again")
    assert accepted["after_refusals"] >= 1
    assert await w.daemon.stop() == 0


# -- in process: what a reload may and may not change in `box` -----------------------------


@pytest.fixture
async def running(tmp_path: Path) -> AsyncIterator[tuple[Daemon, Path]]:
    """A daemon in this process on a simulator, with the CCG secret right."""
    sim = await start_simulator(SimulatorConfig(
        seed=12, client_id=CLIENT_ID, client_secret=SecretStr(SECRET), enterprise_id=ENTERPRISE))
    receiver = await WebhookReceiver().start()
    path = harness.write_config(tmp_path / "config.yaml", box_url=sim.url, hook_url=receiver.url,
                                http_port=0)
    raw = yaml.safe_load(path.read_text())
    raw["box"]["auth"] = {"method": "ccg", "client_id": CLIENT_ID, "client_secret": SECRET,
                          "subject_id": ENTERPRISE}
    path.write_text(yaml.safe_dump(raw))
    try:
        async with Daemon(load_config(path)) as daemon:
            yield daemon, path
    finally:
        await sim.close()
        await receiver.close()


def _edit(path: Path, **box: Any) -> Config:
    raw = yaml.safe_load(path.read_text())
    raw["box"].update(box)
    path.write_text(yaml.safe_dump(raw))
    return load_config(path)


async def test_a_reload_names_each_restart_only_box_key_and_changes_nothing(
    running: tuple[Daemon, Path],
) -> None:
    daemon, path = running
    auth = daemon.units["default"].box.auth
    new = _edit(path, timeout="5s", page_size=100,
                auth={"method": "ccg", "client_id": CLIENT_ID, "client_secret": "rotated",
                      "subject_id": ENTERPRISE})

    with capture_logs() as logs:
        assert await daemon.reload(new) is False

    (refused,) = [e for e in logs if e["event"] == "config_reload_refused"]
    assert refused["settings"] == ["box.timeout", "box.page_size"]
    assert daemon.units["default"].box.auth is auth
    assert "rotated" not in repr(logs)


async def test_a_reload_with_a_broken_jwt_file_keeps_the_running_credentials(
    running: tuple[Daemon, Path], tmp_path: Path,
) -> None:
    daemon, path = running
    auth, config = daemon.units["default"].box.auth, daemon.config
    broken = tmp_path / "box-config.json"
    broken.write_text("{}")
    new = _edit(path, auth={"method": "jwt", "config_file": str(broken)})

    with capture_logs() as logs:
        assert await daemon.reload(new) is False

    (failed,) = [e for e in logs if e["event"] == "config_reload_failed"]
    assert "box.auth.config_file" in failed["error"] and "not a Box config.json" in failed["error"]
    assert daemon.units["default"].box.auth is auth and daemon.config is config
    assert (await daemon.readiness())[1]["auth"] == "ok"


async def test_a_reload_with_new_credentials_closes_the_old_auth_and_uses_the_new(
    running: tuple[Daemon, Path],
) -> None:
    daemon, path = running
    old = daemon.units["default"].box.auth
    token = await old.token()
    new = _edit(path, auth={"method": "ccg", "client_id": "unknown-app", "client_secret": SECRET,
                            "subject_id": ENTERPRISE})

    assert await daemon.reload(new) is True

    assert daemon.units["default"].box.auth is not old
    await old.invalidate(token)
    with pytest.raises(BoxConnectionError):  # closed: a late caller retries with the new one
        await old.token()
    with pytest.raises(BoxAuthError):
        await daemon.units["default"].box.auth.token()
    ready, details = await daemon.readiness()
    assert not ready and details["auth"] == "refused: invalid_client, next try in 5s"
