"""Benchmark: how many events a listing that hides part of the account turns into (run by
hand, not in the test suite).

    python bench/hidden_listing.py --jobs 10000 --hide 0.3
    python bench/hidden_listing.py --jobs 10000 --hide 0.3 --mode delete

The simulator runs in its own process; the monitor runs as `docgen-monitor once` (one sweep,
its events printed as JSON lines), which works the same on every build, so the script measures
an old build as well as a new one. Steps: a baseline sweep over `--jobs` historic jobs; then a
share `--hide` of them is taken out of the listing and a second sweep runs; then they come back
and a third sweep runs. Reported: the events of the second and third sweeps, by type.

`--mode omit` hides the jobs from `GET /2.0/docgen_jobs` while `GET /2.0/docgen_jobs/{id}` still
answers (a listing that shifted or was cut: nothing is gone); a build whose simulator cannot omit
falls back to `--mode delete`. `--mode delete` deletes them in the simulator (404 by id) and the
third sweep is skipped (a deleted job does not come back)."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

from simproc import start_simulator_process

TOKEN = "bench-token"  # noqa: S105 - the local simulator's throwaway token


def control(url: str, method: str, path: str, body: Any = None) -> Any:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(  # noqa: S310 - the local simulator
        url + path, data=data, method=method, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=120) as response:  # noqa: S310
        raw = response.read()
    return json.loads(raw) if raw else None


def once(config: Path) -> Counter[str]:
    """One sweep with `docgen-monitor once`; its events counted by type."""
    done = subprocess.run(
        [sys.executable, "-m", "monitor.cli", "once", "--config", str(config)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise SystemExit(f"once exited {done.returncode}:\n{done.stderr[-2000:]}")
    return Counter(json.loads(line)["type"] for line in done.stdout.splitlines() if line)


def hide(url: str, job_ids: list[str], mode: str) -> str:
    """Take `job_ids` out of the listing; returns the mode used."""
    if mode == "omit":
        try:
            control(url, "POST", "/_sim/listing/omit", {"job_ids": job_ids})
            return "omit"
        except urllib.error.HTTPError as exc:
            if exc.code not in (404, 405):
                raise
            print("this simulator cannot omit jobs: deleting them instead", file=sys.stderr)
    for job_id in job_ids:
        control(url, "DELETE", f"/_sim/jobs/{job_id}")
    return "delete"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--hide", type=float, default=0.3, help="share of the jobs hidden")
    parser.add_argument("--mode", choices=("omit", "delete"), default="omit")
    parser.add_argument("--port", type=int, default=8931)
    args = parser.parse_args()

    sim, url = start_simulator_process(args.port, args.jobs, TOKEN)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            config = Path(tmp) / "config.yaml"
            config.write_text(
                json.dumps(
                    {
                        "box": {
                            "base_url": url,
                            "auth": {"method": "developer_token", "token": TOKEN},
                        },
                        "state": {"url": f"sqlite:///{tmp}/state.db"},
                        "log": {"level": "warning", "format": "json"},
                    }
                )
            )
            baseline = once(config)
            jobs = sorted(control(url, "GET", "/_sim/jobs")["entries"], key=lambda j: j["id"])
            hidden = [j["id"] for j in jobs[:: max(1, round(1 / args.hide))]]
            hidden = hidden[: round(len(jobs) * args.hide)]
            mode = hide(url, hidden, args.mode)
            while_hidden = once(config)
            back: Counter[str] | None = None
            if mode == "omit":
                control(url, "DELETE", "/_sim/listing")
                back = once(config)
    finally:
        sim.terminate()
        sim.wait(10)
    print(
        json.dumps(
            {
                "jobs": len(jobs),
                "hidden": len(hidden),
                "mode": mode,
                "baseline_events": sum(baseline.values()),
                "events_while_hidden": dict(while_hidden),
                "events_when_back": dict(back) if back is not None else None,
            }
        )
    )


if __name__ == "__main__":
    main()
