"""The command line as a user runs it: subprocesses, real sockets, exit codes."""

from __future__ import annotations

import asyncio
import io
import json
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import orjson
import pytest
import structlog
from pydantic import SecretStr

from monitor.logging import configure_logging
from monitor.simulator import RunningSimulator, SimulatorConfig, start_simulator
from tests.harness import TOKEN, DaemonProcess, free_port, wait_until, write_config

CLI = [sys.executable, "-m", "monitor.cli"]


async def run_cli(*args: str, timeout_s: float = 60) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        *CLI, *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), timeout_s)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


@pytest.fixture
async def sim() -> AsyncIterator[RunningSimulator]:
    config = SimulatorConfig(seed=3, developer_tokens=[SecretStr(TOKEN)], frozen_clock=True)
    async with await start_simulator(config) as running:
        yield running


async def test_once_records_a_baseline_then_prints_each_change_as_a_json_line(
    sim: RunningSimulator, tmp_path: Path
) -> None:
    sim.state.seed_history(25)
    config = write_config(tmp_path / "c.yaml", box_url=sim.url, hook_url="http://127.0.0.1:9/h",
                          http_port=free_port())
    code, out, err = await run_cli("once", "--config", str(config))
    assert code == 0, err
    assert out == ""
    assert "baseline recorded: 25 job(s)" in err
    batch = sim.state.start_batch(3)
    code, out, err = await run_cli("once", "--config", str(config))
    assert code == 0, err
    events = [orjson.loads(line) for line in out.splitlines()]
    assert [e["type"] for e in events] == ["job.discovered"] * 3
    assert {e["job"]["batch_id"] for e in events} == {str(batch.id)}
    code, out, _ = await run_cli("once", "--config", str(config))
    assert code == 0 and out == ""  # nothing changed, nothing announced again


async def test_run_with_an_invalid_config_exits_2_before_starting_anything(tmp_path: Path) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text(f"""
box: {{base_url: "nope", auth: {{method: developer_token}}}}
state: {{url: "sqlite:///{tmp_path}/state.db"}}
notifiers: [{{name: sink, type: webhook}}]
routes: [{{notify: [elsewhere]}}]
""")
    code, _, err = await run_cli("run", "--config", str(config))
    assert code == 2
    for path in ("box.base_url:", "box.auth.token:", "notifiers[0].url:",
                 "routes[0].notify[0]: no notifier named 'elsewhere'"):
        assert path in err, err
    assert not (tmp_path / "state.db").exists()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
async def test_run_stops_cleanly_on_a_signal(sim: RunningSimulator, tmp_path: Path,
                                             sig: signal.Signals) -> None:
    port = free_port()
    config = write_config(tmp_path / "c.yaml", box_url=sim.url, hook_url="http://127.0.0.1:9/h",
                          http_port=port)
    proc = await asyncio.create_subprocess_exec(
        *CLI, "run", "--config", str(config), stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE)
    try:
        async with aiohttp.ClientSession() as session:
            for _ in range(200):
                try:
                    async with session.get(f"http://127.0.0.1:{port}/readyz") as resp:
                        if resp.status == 200:
                            break
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.1)
            else:
                raise AssertionError("daemon never became ready")
        proc.send_signal(sig)
        _, err = await asyncio.wait_for(proc.communicate(), 30)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode == 0, err.decode()
    logs = [json.loads(line) for line in err.decode().splitlines() if line.startswith("{")]
    assert [e["event"] for e in logs][-1] == "daemon_stopped"


async def test_simulate_serves_box_routes_until_sigterm() -> None:
    port = free_port()
    proc = await asyncio.create_subprocess_exec(
        *CLI, "simulate", "--port", str(port), "--seed-jobs", "1500", "--token", "t1",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        assert proc.stdout is not None
        url = (await asyncio.wait_for(proc.stdout.readline(), 30)).decode().strip()
        assert url == f"http://127.0.0.1:{port}"
        headers = {"Authorization": "Bearer t1", "box-version": "2025.0"}
        async with aiohttp.ClientSession() as session, session.get(
            f"{url}/2.0/docgen_jobs", params={"limit": "1000"}, headers=headers
        ) as resp:
            assert resp.status == 200
            page = await resp.json()
        assert len(page["entries"]) == 1000 and page["next_marker"]
        proc.send_signal(signal.SIGTERM)
        await asyncio.wait_for(proc.wait(), 30)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode == 0


async def test_demo_prints_events_and_its_metrics_url_then_stops() -> None:
    code, out, err = await run_cli("demo", "--duration", "12", timeout_s=60)
    assert code == 0, err
    lines = out.splitlines()
    assert any(line.startswith("metrics: http://127.0.0.1:") for line in lines)
    transitions = [line for line in lines if " -> " in line or "discovered" in line]
    assert len(transitions) >= 3, out


def test_logs_are_json_lines_off_a_terminal_and_mask_secret_keys() -> None:
    stream = io.StringIO()
    configure_logging("info", "auto", stream=stream)
    try:
        structlog.get_logger("t").info("token_fetched", token="abc", client_secret="xyz",
                                       job_id="j1")
        structlog.get_logger("t").debug("hidden")
    finally:
        structlog.reset_defaults()
    (line,) = stream.getvalue().splitlines()
    record = json.loads(line)
    assert record["event"] == "token_fetched" and record["job_id"] == "j1"
    assert record["token"] == "**********" and record["client_secret"] == "**********"
    assert record["level"] == "info" and record["timestamp"].endswith("Z")


@pytest.mark.parametrize("kind", ["busy", "not an address of this host"])
async def test_a_busy_or_unbindable_listen_address_exits_2_naming_key_and_address(
    sim: RunningSimulator, tmp_path: Path, kind: str
) -> None:
    import socket

    holder = socket.socket()
    try:
        if kind == "busy":
            holder.bind(("127.0.0.1", 0))
            holder.listen()
            address = f"127.0.0.1:{holder.getsockname()[1]}"
        else:
            address = "192.0.2.1:9464"  # TEST-NET-1: never an address of this host
        config = write_config(tmp_path / "c.yaml", box_url=sim.url,
                              hook_url="http://127.0.0.1:9/h", http_port=0,
                              http={"listen": address})
        code, _, err = await run_cli("run", "--config", str(config))
    finally:
        holder.close()
    assert code == 2, err
    assert "Traceback" not in err
    (line,) = [ln for ln in err.splitlines() if ln.startswith("docgen-monitor:")]
    assert line.startswith(f"docgen-monitor: invalid configuration: http.listen: cannot listen "
                           f"on {address}: "), line
    assert len(line) < 200


async def test_a_sighup_reload_of_broken_yaml_logs_where_and_what_never_the_line(
    sim: RunningSimulator, tmp_path: Path
) -> None:
    """The rejected reload names file, line, column and the kind of error; the line itself,
    with the secret written inline on it, appears nowhere in the daemon's output."""
    port = free_port()
    config = write_config(tmp_path / "c.yaml", box_url=sim.url, hook_url="http://127.0.0.1:9/h",
                          http_port=port)
    daemon = DaemonProcess(config, port)
    try:
        daemon.start()
        await daemon.wait_ready()
        text = config.read_text()
        config.write_text(text + 'extra: {token: "hunter2-inline-secret\n')
        assert daemon.proc is not None
        daemon.proc.send_signal(signal.SIGHUP)

        def rejected() -> list[dict[str, object]]:
            lines = [json.loads(ln) for ln in daemon.logs().splitlines() if ln.startswith("{")]
            return [e for e in lines if e["event"] == "config_reload_rejected"]

        async def answered() -> bool:
            return bool(rejected())

        await wait_until(answered, 15, "the reload to be rejected")
        (problem,) = rejected()[0]["problems"]  # type: ignore[misc]
        lines = len(text.splitlines())
        assert problem == (f"(file): {config}: line {lines + 2}, column 1: invalid YAML: found "
                           "unexpected end of stream while scanning a quoted scalar")
        assert await daemon.stop() == 0
    finally:
        daemon.ensure_stopped()
    assert "hunter2" not in daemon.logs()
