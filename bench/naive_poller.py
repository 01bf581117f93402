"""The naive poller, run for real by bench/steady.py: it re-lists every job
(`GET /2.0/docgen_jobs`, every page) every interval and diffs each listing against the one
before. A reference that is not our code: plain aiohttp and orjson, nothing from `monitor`.

    python bench/naive_poller.py --url URL --token T --interval 5 --out result.json

Runs until SIGTERM or SIGINT, then writes {"requests", "listings", "listing_s", "sightings"}:
the wall time of each request, and each (job id, status) it saw change, with the wall time its
page arrived."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import time
from pathlib import Path

import aiohttp
import orjson


async def list_all(
    session: aiohttp.ClientSession, url: str, headers: dict[str, str], requests: list[float]
) -> dict[str, tuple[str, float]]:
    """Every job's status with the time its page came; each request's time in `requests`."""
    seen: dict[str, tuple[str, float]] = {}
    marker: str | None = None
    while True:
        params = {"limit": "1000", **({"marker": marker} if marker else {})}
        requests.append(time.time())
        async with session.get(f"{url}/2.0/docgen_jobs", params=params, headers=headers) as resp:
            body = orjson.loads(await resp.read())
            if resp.status != 200:
                raise RuntimeError(f"HTTP {resp.status}")
        at = time.time()
        for entry in body["entries"]:
            seen.setdefault(entry["id"], (entry["status"], at))
        marker = body.get("next_marker")
        if not marker:
            return seen


async def run(args: argparse.Namespace) -> dict[str, object]:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    headers = {"Authorization": f"Bearer {args.token}", "box-version": "2025.0"}
    last: dict[str, str] | None = None
    sightings: list[tuple[str, str, float]] = []
    requests: list[float] = []
    listings = 0
    listing_s: list[float] = []
    async with aiohttp.ClientSession() as session:
        while not stop.is_set():
            started = time.monotonic()
            seen: dict[str, tuple[str, float]] | None
            try:
                seen = await list_all(session, args.url, headers, requests)
            except (aiohttp.ClientError, RuntimeError):
                seen = None
            if seen is not None:
                listings += 1
                listing_s.append(time.monotonic() - started)
                if last is not None:
                    sightings += [(job, status, at) for job, (status, at) in seen.items()
                                  if last.get(job) != status]
                last = {job: status for job, (status, _) in seen.items()}
            wait_s = args.interval - (time.monotonic() - started)
            if wait_s > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), wait_s)
    return {"requests": requests, "listings": listings, "listing_s": listing_s,
            "sightings": sightings}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--url", required=True)
    p.add_argument("--token", required=True)
    p.add_argument("--interval", type=float, default=5.0)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args()
    args.out.write_bytes(orjson.dumps(asyncio.run(run(args))))


if __name__ == "__main__":
    main()
