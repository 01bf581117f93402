"""The README's "On your machine, against the simulator" walk-through works when copied: every
command of its blocks runs as written (through bash, with `docgen-monitor` found on PATH as the
activation step makes it), in a fresh directory, against the configuration it names. Only the
ports are changed, to free ones, since tests share the machine."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest

from tests.harness import free_port, wait_until

ROOT = Path(__file__).resolve().parent.parent
SIM_PORT, HTTP_PORT = "8900", "9464"

pytestmark = pytest.mark.e2e


def walkthrough() -> list[list[str]]:
    text = (ROOT / "README.md").read_text()
    start = text.index("### On your machine, against the simulator")
    section = text[start: text.index("\n### ", start + 1)]
    blocks = re.findall(r"```sh\n(.*?)```", section, flags=re.DOTALL)
    return [[line for line in block.splitlines() if line.strip()] for block in blocks]


async def test_the_readme_local_walkthrough_runs_as_written(tmp_path: Path) -> None:
    setup, servers, commands = walkthrough()
    assert setup[0].startswith("python3 -m venv .venv && .venv/bin/pip install .")
    assert setup[1].startswith(". .venv/bin/activate")
    name, _, config = setup[2].split()[1].partition("=")
    assert name == "DOCGEN_MONITOR_CONFIG" and (ROOT / config).is_file()
    ports = {SIM_PORT: str(free_port()), HTTP_PORT: str(free_port())}

    def ported(text: str) -> str:
        for old, new in ports.items():
            text = text.replace(old, new)
        return text

    (tmp_path / config).parent.mkdir(parents=True)
    (tmp_path / config).write_text(ported((ROOT / config).read_text()))
    env = {**os.environ, name: config,
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}

    def start(line: str) -> subprocess.Popen[bytes]:
        with (tmp_path / f"{line.split()[1]}.log").open("wb") as log:
            return subprocess.Popen(["bash", "-c", f"exec {ported(line)}"], cwd=tmp_path,
                                    env=env, stdout=log, stderr=subprocess.STDOUT)

    def shell(line: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["bash", "-o", "pipefail", "-c", ported(line)], cwd=tmp_path,
                              env=env, capture_output=True, text=True, timeout=60, check=False)

    simulate, check, run = servers
    assert "simulate" in simulate and "check-config" in check and run.split()[1] == "run"
    procs = [start(simulate)]
    try:
        checked = await asyncio.to_thread(shell, check)
        assert checked.returncode == 0 and "OK" in checked.stdout, checked.stderr
        procs.append(start(run))

        async def ready() -> bool:
            try:
                async with aiohttp.ClientSession() as http, http.get(
                        f"http://127.0.0.1:{ports[HTTP_PORT]}/readyz") as resp:
                    return resp.status == 200
            except aiohttp.ClientError:
                return False

        await wait_until(ready, 30, "the daemon of the walk-through ready")
        batch_id = None
        for line in commands:
            if "BATCH_ID" in line:
                assert batch_id is not None
                line = line.replace("BATCH_ID", batch_id)
            done = await asyncio.to_thread(shell, line)
            assert done.returncode == 0, f"{line}\n{done.stdout}\n{done.stderr}"
            if "/_sim/batches" in line:
                batch_id = json.loads(done.stdout)["batch_id"]
            if line.startswith("docgen-monitor silence add"):
                assert re.fullmatch(r"[0-9a-f-]{36}", done.stdout.splitlines()[-1])
    finally:
        for proc in reversed(procs):  # Ctrl-C, as the README says, then the simulator
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
        codes = [await asyncio.to_thread(p.wait, 20) for p in reversed(procs)]
    assert codes[0] == 0, (tmp_path / "run.log").read_text()
