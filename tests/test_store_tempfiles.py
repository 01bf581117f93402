"""SQLite's temp files (the sweep's staging tables of a large account; a first baseline stages in
the state file itself) go to the state directory, never to TMPDIR: a container's /tmp is small
(the Kubernetes manifest caps it) and may be shared. Run as a subprocess, so SQLite reads this
environment fresh."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

STAGE_A_LARGE_SWEEP = r"""
import asyncio, json, os, sys
from monitor.model import JobState, SnapshotChanges
from monitor.store.rows import job_to_row
from monitor.store.sqlite import SQLiteStore

def temp_files():
    found = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if "etilqs_" in target:
            found.append([target.removesuffix(" (deleted)"), os.fstat(int(fd)).st_size])
    return found

async def main(path):
    async with SQLiteStore(path) as store:
        # A job stored already: a first baseline would stage in the state file itself.
        old = JobState("old", "b", "failed", "t", "pdf")
        await store.commit(SnapshotChanges(upserts=(old,)), [])
        generation = await store.sweep_begin()
        for page in range(30):
            jobs = [JobState(id=f"{page}-{i}", batch_id=f"b{page}", status="pending",
                             template_file_id="t" * 40, output_type="pdf",
                             errors=("x" * 200,)) for i in range(1000)]
            await store.sweep_stage(generation, [(j.id, j.status) for j in jobs],
                                    [(job_to_row(j), 0) for j in jobs])
        print(json.dumps(temp_files()))

asyncio.run(main(sys.argv[1]))
"""


def test_sweep_staging_spills_into_the_state_directory_not_tmpdir(tmp_path: Path) -> None:
    state, tmp = tmp_path / "state", tmp_path / "tmp"
    state.mkdir()
    tmp.mkdir()
    env = {**os.environ, "TMPDIR": str(tmp), "SQLITE_TMPDIR": str(tmp)}
    out = subprocess.run([sys.executable, "-c", STAGE_A_LARGE_SWEEP, str(state / "state.db")],
                         capture_output=True, text=True, timeout=120, env=env, check=False)
    assert out.returncode == 0, out.stderr
    files = json.loads(out.stdout.splitlines()[-1])  # after the store's own log lines
    assert files, "30,000 staged rows spill out of the page cache into a temp file"
    assert sum(size for _, size in files) > 4 * 2**20
    for path, _ in files:
        assert Path(path).parent == state, path
    assert list(tmp.iterdir()) == []
