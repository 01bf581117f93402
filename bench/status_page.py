"""Benchmark: what the status page costs the daemon (run by hand, not in the test suite).

    python bench/status_page.py --jobs 20000 --runs 3

Each run starts the simulator (its own process) with `--jobs` historic jobs and
`docgen-monitor run` watching it, waits for the baseline, then starts `--batches` batches of
100 jobs (a third of them failing with realistic texts, a few left running) so the page has
failures to group and batches to draw. Then it times, interleaved, `GET /` (the whole page:
store reads, failure grouping, Jinja2) and `GET /metrics` (prometheus-client's exposition of
the same daemon: the reference, a scrape every monitoring setup already pays for), `--rounds`
times each. Reported: per run, the median latency of each and their ratio; then the median
over runs. Whole processes are started afresh for every run."""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from simproc import start_simulator_process

TOKEN = "bench-token"  # noqa: S105 - the local simulator's throwaway token


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def call(url: str, method: str = "GET", body: Any = None) -> tuple[int, bytes]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(  # noqa: S310 - local processes only
        url, data=data, method=method, headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=120) as response:  # noqa: S310
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except OSError:
        return 0, b""


def wait_for(what: str, check: Any, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out after {timeout_s}s waiting for {what}")
        time.sleep(0.5)


def timed_ms(url: str) -> float:
    started = time.perf_counter()
    status, _ = call(url)
    elapsed_ms = (time.perf_counter() - started) * 1000
    if status != 200:
        raise SystemExit(f"{url}: HTTP {status}")
    return elapsed_ms


def one_run(jobs: int, batches: int, rounds: int, tmp: Path) -> tuple[float, float, int]:
    sim, sim_url = start_simulator_process(free_port(), jobs, TOKEN)
    port = free_port()
    config = tmp / "config.yaml"
    config.write_text(json.dumps({
        "box": {"base_url": sim_url, "auth": {"method": "developer_token", "token": TOKEN}},
        "state": {"url": f"sqlite:///{tmp / 'state.db'}"},
        "notifiers": [{"name": "stdout", "type": "console"}],
        "routes": [{"match": {}, "notify": ["stdout"]}],
        "http": {"listen": f"127.0.0.1:{port}"},
    }))
    base = f"http://127.0.0.1:{port}"
    daemon = subprocess.Popen(
        [sys.executable, "-m", "monitor.cli", "run", "--config", str(config)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        wait_for("the baseline", lambda: call(base + "/readyz")[0] == 200, 600)
        for i in range(batches):
            running = i < 3  # a few stay running: the page draws their bars
            call(sim_url + "/_sim/batches", "POST", {
                "jobs": 100,
                "outcomes": {"completed": 0.6, "failed": 0.3, "completed_with_error": 0.1},
                "submitted_after_s": 0.2, "min_duration_s": 600.0 if running else 0.5,
                "max_duration_s": 600.0 if running else 2.0,
            })
        expected = int(batches - 3) * 100
        wait_for(
            "the failures on the page",
            lambda: b"Recent failures" in call(base + "/")[1]
            and _failed_on_page(call(base + "/")[1]) >= expected * 0.3,
            300,
        )
        page, metrics = [], []
        for _ in range(rounds):
            page.append(timed_ms(base + "/"))
            metrics.append(timed_ms(base + "/metrics"))
        return statistics.median(page), statistics.median(metrics), len(call(base + "/")[1])
    finally:
        daemon.terminate()
        daemon.wait(60)
        sim.terminate()
        sim.wait(30)


def _failed_on_page(html: bytes) -> int:
    """The figure beside "Recent failures" (jobs failed or completed with error)."""
    text = html.decode()
    start = text.find('class="count-badge">', text.find('id="failures"'))
    digits = text[start + len('class="count-badge">'):].split("<", 1)[0].rstrip("+")
    return int(digits) if digits.isdigit() else 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=20_000, help="historic jobs in the account")
    parser.add_argument("--batches", type=int, default=20, help="batches of 100 jobs to run")
    parser.add_argument("--rounds", type=int, default=15, help="timed requests of each kind")
    parser.add_argument("--runs", type=int, default=3, help="whole-process runs")
    args = parser.parse_args()
    pages, scrapes = [], []
    for run in range(1, args.runs + 1):
        with tempfile.TemporaryDirectory(prefix="bench-status-page-") as tmp:
            page_ms, metrics_ms, size = one_run(args.jobs, args.batches, args.rounds, Path(tmp))
        pages.append(page_ms)
        scrapes.append(metrics_ms)
        print(f"run {run}: GET / {page_ms:.1f} ms ({size / 1024:.0f} KiB), "
              f"GET /metrics {metrics_ms:.1f} ms, ratio {page_ms / metrics_ms:.1f}", flush=True)
    page_ms, metrics_ms = statistics.median(pages), statistics.median(scrapes)
    print(f"median of {args.runs} runs ({args.jobs} historic jobs, {args.batches} batches): "
          f"GET / {page_ms:.1f} ms, GET /metrics {metrics_ms:.1f} ms, "
          f"ratio {page_ms / metrics_ms:.1f}")


if __name__ == "__main__":
    main()
