"""SIGHUP re-reads the configuration of a running daemon (a real subprocess, real sockets):
notifiers and routes change without a restart; a broken or restart-only change is refused, logged
with its reasons, and the running configuration keeps delivering."""

from __future__ import annotations

import functools
import json
import signal
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import aiohttp
import pytest
import yaml
from prometheus_client import generate_latest
from pydantic import SecretStr
from structlog.testing import capture_logs

from monitor.config import load_config
from monitor.daemon import Daemon
from monitor.model import Event
from monitor.notify.base import DeliveryResult, Notifier, NotifierConfig, NotifierRegistry
from monitor.simulator import RunningSimulator, SimulatorConfig, TimelineConfig, start_simulator
from tests.harness import TOKEN, DaemonProcess, SimControl, free_port, wait_until, write_config
from tests.receiver import WebhookReceiver

pytestmark = pytest.mark.e2e


@dataclass
class Setup:
    sim: RunningSimulator
    control: SimControl
    first: WebhookReceiver
    second: WebhookReceiver
    daemon: DaemonProcess
    config_path: Path
    http_port: int


@pytest.fixture
async def setup(tmp_path: Path) -> AsyncIterator[Setup]:
    sim_config = SimulatorConfig(
        seed=7, developer_tokens=[SecretStr(TOKEN)],
        timeline=TimelineConfig(submitted_after_s=0.2, min_duration_s=0.5, max_duration_s=1.0),
    )
    first = await WebhookReceiver().start()
    second = await WebhookReceiver(secret="other-secret").start()
    sim = await start_simulator(sim_config)
    session = aiohttp.ClientSession()
    port = free_port()
    config_path = write_config(tmp_path / "config.yaml", box_url=sim.url, hook_url=first.url,
                               http_port=port)
    daemon = DaemonProcess(config_path, port)
    try:
        yield Setup(sim, SimControl(sim.url, session), first, second, daemon, config_path, port)
    finally:
        daemon.ensure_stopped()
        await session.close()
        await sim.close()
        await first.close()
        await second.close()


def log_events(daemon: DaemonProcess, name: str) -> list[dict[str, Any]]:
    found = []
    for line in daemon.logs().splitlines():
        if line.startswith("{"):
            entry = json.loads(line)
            if entry.get("event") == name:
                found.append(entry)
    return found


async def reload(s: Setup, config: dict[str, Any], outcome: str) -> dict[str, Any]:
    """Write `config`, send SIGHUP, return the daemon's log line that answers it."""
    before = len(log_events(s.daemon, outcome))
    s.config_path.write_text(yaml.safe_dump(config))
    assert s.daemon.proc is not None
    s.daemon.proc.send_signal(signal.SIGHUP)

    async def answered() -> bool:
        return len(log_events(s.daemon, outcome)) > before

    await wait_until(answered, 15, f"log line {outcome}")
    return log_events(s.daemon, outcome)[-1]


async def discovered_by(receiver: WebhookReceiver, job_ids: list[str]) -> bool:
    seen = {d.body["job"]["id"] for d in receiver.deliveries
            if d.body["type"] == "job.discovered"}
    return set(job_ids) <= seen


async def test_a_notifier_added_by_sighup_receives_the_next_event(setup: Setup) -> None:
    s = setup
    s.daemon.start()
    await s.daemon.wait_ready()
    config = yaml.safe_load(s.config_path.read_text())
    config["notifiers"].append(
        {"name": "second", "type": "webhook", "url": s.second.url, "secret": "other-secret"})
    config["routes"] = [{"match": {}, "notify": ["sink", "second"]}]

    line = await reload(s, config, "config_reloaded")

    assert line["added"] == ["second"] and line["notifiers"] == ["second", "sink"]
    batch = await s.control.start_batch(3)
    await wait_until(lambda: discovered_by(s.second, batch["job_ids"]), 20,
                     "the new notifier to receive the batch")
    await wait_until(lambda: discovered_by(s.first, batch["job_ids"]), 20,
                     "the old notifier to keep receiving")
    assert s.second.bad_signatures == 0  # signed with the new notifier's own secret
    assert await s.daemon.stop(signal.SIGTERM) == 0


async def test_a_broken_or_restart_only_reload_changes_nothing(setup: Setup) -> None:
    s = setup
    s.daemon.start()
    await s.daemon.wait_ready()
    good = yaml.safe_load(s.config_path.read_text())

    broken = {**good,
              "notifiers": [*good["notifiers"], {"name": "second", "type": "webhook"}],
              "routes": [{"match": {}, "notify": ["sink", "second", "nowhere"]}],
              "poll": {"sweep_interval": "-1s"}}
    line = await reload(s, broken, "config_reload_rejected")
    problems = "\n".join(line["problems"])
    for path in ("notifiers[1].url:", "routes[0].notify[2]: no notifier named 'nowhere'",
                 "poll.sweep_interval:"):
        assert path in problems, problems
    assert line["kept"] == "running config"

    moved = {**good,
             "http": {"listen": f"127.0.0.1:{free_port()}"},
             "notifiers": [*good["notifiers"], {"name": "second", "type": "webhook",
                                                "url": s.second.url, "secret": "other-secret"}],
             "routes": [{"match": {}, "notify": ["second"]}]}
    line = await reload(s, moved, "config_reload_refused")
    assert line["settings"] == ["http"]

    batch = await s.control.start_batch(3)
    await wait_until(lambda: discovered_by(s.first, batch["job_ids"]), 20,
                     "the running config to keep delivering")
    status, _ = await s.daemon.get("/healthz")  # still on the port it started with
    assert status == 200
    assert s.second.deliveries == []
    assert log_events(s.daemon, "config_reloaded") == []
    assert await s.daemon.stop(signal.SIGTERM) == 0


async def test_a_reload_with_a_broken_template_keeps_the_running_config(
    setup: Setup, tmp_path: Path
) -> None:
    """SIGHUP renders every template against sample events, as `check-config` and `run` do: a
    template that fails is rejected by key path and the running config keeps delivering."""
    s = setup
    s.daemon.start()
    await s.daemon.wait_ready()
    templates = tmp_path / "tpl"
    templates.mkdir()
    (templates / "slack_parent.j2").write_text("{{ batch.id }} {% if %}")
    good = yaml.safe_load(s.config_path.read_text())
    broken = {**good, "notifiers": [*good["notifiers"], {
        "name": "team-slack", "type": "slack", "token": "xoxb-secret", "channel": "C0123456789",
        "api_url": "http://127.0.0.1:9/api/", "template_dir": str(templates)}]}

    line = await reload(s, broken, "config_reload_rejected")

    [problem] = line["problems"]
    assert problem.startswith("notifiers[1] (team-slack): template slack_parent.j2: "
                              "TemplateSyntaxError"), problem
    assert line["kept"] == "running config" and "xoxb-secret" not in s.daemon.logs()
    batch = await s.control.start_batch(3)
    await wait_until(lambda: discovered_by(s.first, batch["job_ids"]), 20,
                     "the running config to keep delivering")
    assert log_events(s.daemon, "config_reloaded") == []
    assert await s.daemon.stop(signal.SIGTERM) == 0


# -- in process: what a subprocess cannot show ---------------------------------------------


class UnreachableNotifier(Notifier):
    """A plugin whose start fails, as one that logs in to a server that is down would."""

    type_name: ClassVar[str] = "unreachable"
    config_model: ClassVar[type[NotifierConfig]] = NotifierConfig

    async def start(self) -> None:
        raise ConnectionRefusedError("smtp.internal:587 refused the connection")

    async def send(self, events: Sequence[Event]) -> DeliveryResult:
        raise AssertionError("never started, never sent")


async def test_reload_keeps_everything_when_a_new_notifier_fails_to_start(
    tmp_path: Path
) -> None:
    registry = NotifierRegistry.from_entry_points(extra={"unreachable": UnreachableNotifier})
    receiver = await WebhookReceiver().start()
    sim = await start_simulator(SimulatorConfig(seed=1, developer_tokens=[SecretStr(TOKEN)]))
    path = write_config(tmp_path / "config.yaml", box_url=sim.url, hook_url=receiver.url,
                        http_port=0)
    load = functools.partial(load_config, path, notifier_models=registry.config_models())
    try:
        async with Daemon(load(), registry=registry) as daemon:
            running, dispatcher = daemon.config, daemon.units["default"].dispatcher
            raw = yaml.safe_load(path.read_text())
            raw["notifiers"].append({"name": "mail", "type": "unreachable"})
            raw["routes"] = [{"match": {}, "notify": ["sink", "mail"]}]
            path.write_text(yaml.safe_dump(raw))
            with capture_logs() as logs:
                assert await daemon.reload(load()) is False
            assert daemon.config is running and daemon.units["default"].dispatcher is dispatcher
            (failed,) = [e for e in logs if e["event"] == "config_reload_failed"]
            assert "ConnectionRefusedError" in failed["error"]

            raw["notifiers"] = [{"name": "out", "type": "console"}]
            raw["routes"] = [{"match": {}, "notify": ["out"]}]
            path.write_text(yaml.safe_dump(raw))
            daemon.metrics.outbox_pending.labels("sink").set(3)
            assert await daemon.reload(load()) is True
            assert list(daemon.units["default"].dispatcher.notifiers) == ["out"]
            assert daemon.units["default"].recorder.router.routes == tuple(daemon.config.routes)
            exposed = generate_latest(daemon.metrics.registry).decode()
            assert 'notifier="sink"' not in exposed  # a removed notifier leaves no stale gauge
    finally:
        await sim.close()
        await receiver.close()


def test_with_accounts_a_reload_refuses_what_only_a_restart_applies_naming_the_account() -> None:
    """Each account's `box.auth` and `routes` are live; its other `box` keys and its `poll`,
    and adding or removing an account, are named by path and refused."""
    from monitor.config import Config
    from monitor.daemon import _restart_only

    def config(**changes: object) -> Config:
        accounts: list[dict[str, object]] = [
            {"name": "eu", "box": {"auth": {"method": "developer_token", "token": "a"}}},
            {"name": "us", "box": {"auth": {"method": "developer_token", "token": "b"}}},
        ]
        for key, value in changes.items():
            name, _, field = key.partition("__")
            account = next(a for a in accounts if a["name"] == name)
            if field == "box":
                account["box"] = {**account["box"], **value}  # type: ignore[dict-item]
            else:
                account[field] = value
        return Config.model_validate({"accounts": accounts})

    old = config()
    assert _restart_only(old, config(us__box={"auth": {"method": "developer_token",
                                                        "token": "c"}})) == []
    assert _restart_only(old, config(eu__routes=[])) == []
    assert _restart_only(old, config(us__box={"timeout": "5s"}, eu__poll={"sweep_interval": 5})
                         ) == ["accounts[0].poll", "accounts[1].box.timeout"]
    fewer = Config.model_validate({"accounts": [old.model_dump()["accounts"][0]]})
    assert _restart_only(old, fewer) == ["accounts (added or removed)"]
