"""A store the daemon cannot write is not "alive": the daemon (a real subprocess, on a real
SQLite file, the simulator and a webhook receiver over sockets) reopens it after repeated failed
commits and, when that does not help, answers `/healthz` 503 with the reason, so a supervisor
restarts it instead of leaving it polling and committing nothing forever."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import pytest
from pydantic import SecretStr

from monitor.simulator import SimulatorConfig
from tests.harness import TOKEN, World, wait_until, webhook_world

pytestmark = pytest.mark.e2e


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    config = SimulatorConfig(seed=5, developer_tokens=[SecretStr(TOKEN)])
    async for w in webhook_world(tmp_path, config, World):
        yield w


@contextlib.contextmanager
def unwritable(path: Path) -> Iterator[None]:
    """Make `path` refuse writes for real, root included: the test runs as root, where mode
    bits do not stop a write, so the file gets the immutable attribute (`chattr +i`): open(2)
    for writing fails with EPERM and SQLite falls back to a read-only connection, exactly as it
    does for a non-root daemon left with read-only files after a stop. As non-root, `chmod
    0444` is that case itself."""
    if os.geteuid() != 0:
        path.chmod(0o444)
        try:
            yield
        finally:
            path.chmod(0o644)
        return
    chattr = shutil.which("chattr")
    if chattr is None:
        pytest.skip("chattr (e2fsprogs) is needed to make a file unwritable for root")
    made = subprocess.run([chattr, "+i", str(path)], capture_output=True, text=True)
    if made.returncode != 0:
        pytest.skip(f"this filesystem has no immutable attribute: {made.stderr.strip()}")
    try:
        yield
    finally:
        subprocess.run([chattr, "-i", str(path)], check=True)


async def test_a_store_that_cannot_be_written_makes_healthz_fail_with_the_reason(
    world: World,
) -> None:
    world.daemon.start()
    await world.daemon.wait_ready()  # the state file exists, with its baseline
    assert await world.daemon.stop() == 0
    state = world.config_path.parent / "state.db"

    with unwritable(state):
        world.daemon.start()

        async def failing() -> bool:
            try:
                status, _ = await world.daemon.get("/healthz")
            except aiohttp.ClientError:
                return False  # not listening yet
            return status == 503

        await wait_until(failing, 30, "/healthz to fail on an unwritable store")
        status, body = await world.daemon.get("/healthz")
        assert status == 503
        answer = json.loads(body)
        assert answer["status"] == "failing"
        assert answer["reason"].startswith("state store cannot be written: ")
        assert "readonly database" in answer["reason"]
        logs = world.daemon.logs()
        assert "store_reopening" in logs and "store_unwritable" in logs
        assert await world.daemon.stop() == 0

    world.daemon.start()  # what a supervisor does once the files are writable again
    await world.daemon.wait_ready()
    assert (await world.daemon.get("/healthz"))[0] == 200
    assert await world.daemon.stop() == 0
