"""A Box listing that costs nothing to serve: the reference for sweep benchmarks.

    python bench/pageserver.py --jobs 100000 [--new 500] [--port 0] [--token bench-token]

prints its URL on the first line of stdout once it listens, then serves until killed:

- `GET /2.0/docgen_jobs?limit=&marker=`: `DocGenJobs--Full` pages (FACTS.md §4, §6), newest job
  first, `next_marker` opaque and null on the last page. Every page is rendered to bytes at start:
  a request is a dict lookup, so a client reading the listing runs at its own speed, not the
  server's (the simulator renders each page, ~46k jobs/s, which capped every figure measured
  against it). A `limit` other than the page size it was started with is refused (400), as is a
  marker it did not hand out.
- `GET /2.0/users/me`: the user the token acts for (the monitor's identity check).
- `POST /oauth2/token`: a CCG or JWT grant answered with the one token, for configurations that
  do not use a developer token.
Every route but the token grant wants `Authorization: Bearer <token>` (401 otherwise). Nothing
else of Box's API is served: a sweep reads nothing else when every listed job is consistent.

The jobs are fixed by `--jobs` and `--seed`: batches of 1 to 40 jobs, mostly completed, some failed
or completed with errors (with `failures` texts), the newest two batches still running. Importable:
`render_pages`, `make_app`, and `start_page_server_process` (a subprocess, so its CPU and memory
stay out of the figures of the process measured)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import os
import random
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
from aiohttp import web

DEFAULT_TOKEN = "bench-token"  # noqa: S105 - a throwaway token for a local benchmark server
PAGE_SIZE = 1000
USER_ID = "31000001"
ENTERPRISE_ID = "41000001"
_NEWEST_AT_S = 1_780_000_000  # the newest job's creation time (2026-05-28)
_FIRST_JOB_ID = 5_200_000_000


@dataclass(frozen=True, slots=True)
class Pages:
    """The rendered listing: the first page, and the later ones by the marker that leads to
    them."""

    first: bytes
    by_marker: dict[str, bytes]
    jobs: int
    page_size: int


def _error(status: int, code: str, message: str) -> web.Response:
    body = {"type": "error", "status": status, "code": code, "message": message, "request_id": "0"}
    return web.Response(body=orjson.dumps(body), status=status, content_type="application/json")


def iter_jobs(jobs: int, seed: int = 0) -> Iterator[dict[str, Any]]:
    """`jobs` `DocGenJob--Full` entries, newest first (ids and creation times decrease)."""
    rng = random.Random(seed)
    job_id = _FIRST_JOB_ID + jobs * 3
    created_s = _NEWEST_AT_S
    batch_no = 0
    made = 0
    while made < jobs:
        batch_no += 1
        size = min(jobs - made, rng.randint(1, 40))
        batch = {"id": str(9_100_000_000 + batch_no), "type": "docgen_batch"}
        template_id = str(1_700_000_000 + rng.randint(1, 25))
        template = {"id": template_id, "type": "file"}
        template_version = {"id": str(int(template_id) + 90_000_000_000), "type": "file_version"}
        output_type = "pdf" if rng.random() < 0.7 else "docx"
        created_at = datetime.fromtimestamp(created_s, UTC).isoformat().replace("+00:00", "Z")
        for _ in range(size):
            job_id -= rng.randint(1, 5)
            roll = rng.random()
            status = (
                "pending"
                if batch_no <= 2 and roll < 0.5
                else "failed"
                if roll < 0.03
                else "completed_with_error"
                if roll < 0.05
                else "completed"
            )
            done = status in ("completed", "completed_with_error")
            failures = (
                {
                    "errors": [
                        f"Template tag `order.total` not found in row {rng.randint(1, 500)}"
                    ],
                    "warnings": [],
                }
                if status == "failed"
                else {"errors": [], "warnings": ["Image `logo` was resized to fit its frame"]}
                if status == "completed_with_error"
                else None
            )
            yield {
                "id": str(job_id),
                "type": "docgen_job",
                "batch": batch,
                "template_file": template,
                "template_file_version": template_version,
                "output_file": {"id": str(job_id + 3_000_000_000), "type": "file"}
                if done
                else None,
                "output_file_version": (
                    {"id": str(job_id + 6_000_000_000), "type": "file_version"} if done else None
                ),
                "status": status,
                "output_type": output_type,
                "failures": failures,
                "created_at": created_at,
                "created_by": {"id": USER_ID, "type": "user"},
                "enterprise": {"id": ENTERPRISE_ID, "type": "enterprise"},
                "source": "api",
            }
            made += 1
        created_s -= rng.randint(1, 600)


def new_head(jobs: int, new: int) -> Iterator[dict[str, Any]]:
    """`new` jobs of one running batch, newer than the `jobs` of `iter_jobs(jobs)` (ids above
    theirs), newest first: what a steady listing looks like a little later."""
    created_at = datetime.fromtimestamp(_NEWEST_AT_S + 60, UTC).isoformat()
    for k in range(new, 0, -1):
        yield {
            "id": str(_FIRST_JOB_ID + jobs * 3 + k), "type": "docgen_job",
            "batch": {"id": "9000000000", "type": "docgen_batch"},
            "template_file": {"id": "1700000001", "type": "file"},
            "template_file_version": {"id": "91700000001", "type": "file_version"},
            "output_file": None, "output_file_version": None, "status": "pending",
            "output_type": "pdf", "failures": None,
            "created_at": created_at.replace("+00:00", "Z"),
            "created_by": {"id": USER_ID, "type": "user"},
            "enterprise": {"id": ENTERPRISE_ID, "type": "enterprise"}, "source": "api",
        }


def render_pages(jobs: int, page_size: int = PAGE_SIZE, seed: int = 0, new: int = 0) -> Pages:
    """Every page of the listing of `jobs` jobs, as the bytes each request is answered with;
    with `new`, that many newer jobs at its head first (`new_head`), which shifts every page
    boundary of the same `jobs` by `new`."""
    entries = itertools.chain(new_head(jobs, new), iter_jobs(jobs, seed))
    jobs += new
    bodies: list[bytes] = []
    pages = max(1, -(-jobs // page_size))
    for page in range(pages):
        chunk = [next(entries) for _ in range(min(page_size, jobs - page * page_size))]
        marker = f"bm{page + 1:08x}" if page + 1 < pages else None
        body = {"entries": chunk, "limit": page_size, "next_marker": marker, "prev_marker": None}
        bodies.append(orjson.dumps(body))
    by_marker = {f"bm{i:08x}": bodies[i] for i in range(1, pages)}
    return Pages(bodies[0], by_marker, jobs, page_size)


def make_app(pages: Pages, token: str = DEFAULT_TOKEN) -> web.Application:
    """The routes above, answered from `pages` (no per-request rendering)."""
    bearer = f"Bearer {token}"
    token_body = orjson.dumps(
        {
            "access_token": token,
            "expires_in": 3600,
            "token_type": "bearer",
            "restricted_to": [],
            "issued_token_type": "urn:ietf:params:oauth:token-type:access_token",
        }
    )
    user_body = orjson.dumps(
        {
            "type": "user",
            "id": USER_ID,
            "name": "Bench Service Account",
            "login": "AutomationUser_bench@boxdevedition.com",
            "enterprise": {"type": "enterprise", "id": ENTERPRISE_ID, "name": "Bench"},
        }
    )

    def authorised(request: web.Request) -> bool:
        return request.headers.get("Authorization") == bearer

    async def listing(request: web.Request) -> web.Response:
        if not authorised(request):
            return _error(401, "unauthorized", "bad token")
        if request.query.get("limit", str(pages.page_size)) != str(pages.page_size):
            return _error(400, "bad_request", f"this server pages by {pages.page_size} only")
        marker = request.query.get("marker")
        body = pages.first if marker in (None, "", "0") else pages.by_marker.get(marker or "")
        if body is None:
            return _error(400, "bad_request", "unknown marker")
        return web.Response(body=body, content_type="application/json")

    async def users_me(request: web.Request) -> web.Response:
        if not authorised(request):
            return _error(401, "unauthorized", "bad token")
        return web.Response(body=user_body, content_type="application/json")

    async def oauth_token(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(body=token_body, content_type="application/json")

    app = web.Application()
    app.router.add_get("/2.0/docgen_jobs", listing)
    app.router.add_get("/2.0/users/me", users_me)
    app.router.add_post("/oauth2/token", oauth_token)
    return app


def start_page_server_process(
    jobs: int, *, port: int = 0, token: str = DEFAULT_TOKEN, seed: int = 0
) -> tuple[subprocess.Popen[str], str]:
    """This module as its own process, serving `jobs` jobs on 127.0.0.1:`port` (0: a free one);
    returns the process and its URL, once it listens. The caller terminates it."""
    proc = subprocess.Popen(
        [
            sys.executable,
            __file__,
            "--jobs",
            str(jobs),
            "--port",
            str(port),
            "--token",
            token,
            "--seed",
            str(seed),
        ],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert proc.stdout is not None
    url = proc.stdout.readline().strip()
    if not url.startswith("http"):
        proc.terminate()
        raise SystemExit(f"page server did not start: {url!r}")
    return proc, url


async def serve(pages: Pages, token: str, port: int) -> None:
    """Serve until cancelled; print the URL once listening."""
    runner = web.AppRunner(make_app(pages, token), access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", port)
        await site.start()
        sockets = getattr(site._server, "sockets", None)  # the bound port (private)
        assert sockets
        print(f"http://127.0.0.1:{sockets[0].getsockname()[1]}", flush=True)
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=100_000)
    parser.add_argument("--port", type=int, default=0, help="0: a free port")
    parser.add_argument("--token", default=DEFAULT_TOKEN)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--new", type=int, default=0, help="newer jobs listed first (a later look at --jobs)"
    )
    args = parser.parse_args()
    pages = render_pages(args.jobs, seed=args.seed, new=args.new)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(pages, args.token, args.port))


if __name__ == "__main__":
    main()
