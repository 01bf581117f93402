"""`docgen-monitor demo --state postgresql://... --replicas 2`, as a user runs it: two `run`
processes on this test's schema of the machine's PostgreSQL (dropped after), one leads; a
SIGKILL of the leader's pid hands the lead to the other, with `ha.lease_ttl` at its default,
and events keep coming. A state URL that cannot serve replicas exits 2."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
import time

import pytest

try:  # `python -m pytest` from the repository root, as the README says
    from tests.store_fixtures import PostgresBackend
except ModuleNotFoundError:  # plain `pytest`: only tests/ itself is on sys.path
    from store_fixtures import PostgresBackend  # type: ignore[no-redef]

CLI = [sys.executable, "-m", "monitor.cli"]
LEASE_TTL_S = 15.0  # ha.lease_ttl's default, which the demo keeps
LEADER = re.compile(r"^leader: replica (\d+) \(pid (\d+)\)$")


class Lines:
    """The demo's stdout, line by line, read as it comes."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        assert proc.stdout is not None
        self.stream = proc.stdout
        self.seen: list[str] = []

    async def until(self, wanted: re.Pattern[str] | str, timeout_s: float) -> str:
        """The next line matching `wanted` (a pattern, or a substring)."""
        deadline = time.monotonic() + timeout_s
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no line {wanted!r} within {timeout_s} s:\n"
                                     + "\n".join(self.seen[-40:]))
            raw = await asyncio.wait_for(self.stream.readline(), left)
            if not raw:
                raise AssertionError("the demo ended:\n" + "\n".join(self.seen[-40:]))
            line = raw.decode().rstrip("\n")
            self.seen.append(line)
            if (wanted.search(line) if isinstance(wanted, re.Pattern) else wanted in line):
                return line


async def test_the_ha_demo_hands_the_lead_over_when_the_leader_is_killed(
    pg_backend: PostgresBackend,
) -> None:
    proc = await asyncio.create_subprocess_exec(
        *CLI, "demo", "--state", pg_backend.url, "--replicas", "2", "--duration", "120",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL)
    lines = Lines(proc)
    try:
        first = LEADER.match(await lines.until(LEADER, 60))
        assert first is not None
        await lines.until(" -> ", 30)  # the leader's events
        os.kill(int(first.group(2)), signal.SIGKILL)
        # A standby polls within 2 x lease_ttl (the bound); the watcher reads every 1 s.
        second = LEADER.match(await lines.until(LEADER, 2 * LEASE_TTL_S + 5))
        assert second is not None and second.group(1) != first.group(1)
        await lines.until(" -> ", 30)  # events again, from the new leader
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGINT)
        await asyncio.wait_for(proc.wait(), 60)
    assert proc.returncode == 0


@pytest.mark.parametrize(
    ("state", "says"),
    [
        ("sqlite:///state.db", "replicas share a postgresql:// store"),
        ("mysql://u:hunter2-pw@db/x", "unsupported state url scheme 'mysql'"),
        ("postgresql://u:${UNSET_DEMO_PW}@db/x", "environment variable UNSET_DEMO_PW is not set"),
    ],
)
async def test_a_state_url_replicas_cannot_share_exits_2(state: str, says: str) -> None:
    proc = await asyncio.create_subprocess_exec(
        *CLI, "demo", "--state", state, "--duration", "1",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 2 and out == b""
    assert says in err.decode() and "hunter2" not in err.decode()
    assert "Traceback" not in err.decode()
