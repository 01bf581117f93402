"""How the status page formats what it shows: texts from Box lose invisible and reordering
characters and are bounded; durations read as a person says them; a progress bar's segments
add up to the batch; a store that does not answer is a 503, not a traceback. And its one
setting, `http.ui_token`."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from monitor.config import load_config
from monitor.errors import ConfigError
from monitor.model import JobState, SnapshotChanges
from monitor.store.base import BatchSummary
from monitor.store.sqlite import SQLiteStore
from monitor.ui import AccountSources, PollingHealth, StatusPage, StatusSources
from monitor.ui.page import MAX_TEXT_CHARS, duration, untrusted
from monitor.ui.view import BatchView, gather


@pytest.mark.parametrize(("text", "shown"), [
    ("RTL \u202egnp.exe\u202c", "RTL gnp.exe"),
    ("zero\u200bwidth\u200c\u200d\u2060\ufeff soft\u00adhyphen", "zerowidth softhyphen"),
    ("a\x1b[2Jb\r\nc", "a[2Jb c"),
    ("<script>alert(1)</script>", "<script>alert(1)</script>"),  # escaping is the template's
    ("日本語 ünïcode", "日本語 ünïcode"),
])
def test_untrusted_takes_out_invisible_and_control_characters(text: str, shown: str) -> None:
    assert untrusted(text) == shown


def test_untrusted_cuts_a_long_text_and_says_how_much_is_left_out() -> None:
    shown = untrusted("x" * 10_240)
    assert shown == "x" * MAX_TEXT_CHARS + f"… ({10_240 - MAX_TEXT_CHARS:,} more characters)"
    assert untrusted("y" * 50, limit=10) == "y" * 10 + "… (40 more characters)"


@pytest.mark.parametrize(("seconds", "shown"), [
    (None, "\u2013"), (0.5, "0.5 s"), (1.9, "1 s"), (59, "59 s"), (61, "1 min 1 s"),
    (3600, "1 h 0 min"), (90_000, "1 d 1 h"),
])
def test_durations_read_as_a_person_says_them(seconds: float | None, shown: str) -> None:
    assert duration(seconds) == shown


def test_a_progress_bar_shows_finished_jobs_first_and_its_segments_fill_it() -> None:
    summary = BatchSummary("b1", {"pending": 1, "failed": 1, "completed": 2, "weird": 1},
                           "t1", "pdf", first_seen_at=0.0, changed_at=0.0)
    view = BatchView("b1", watched=False, summary=summary, elapsed_s=3.0)
    assert view.segments == [("completed", 2, 0.0), ("failed", 1, 40.0),
                             ("pending", 1, 60.0), ("weird", 1, 80.0)]
    assert view.done == 3
    assert BatchView("b2", watched=True, summary=None, elapsed_s=None).segments == []


def test_an_empty_ui_token_is_refused_rather_than_leaving_the_page_open(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(
        'box: {auth: {method: developer_token, token: "t"}}\n'
        'state: {url: "sqlite:////tmp/x/state.db"}\n'
        'http: {listen: "127.0.0.1:9464", ui_token: "${UI_TOKEN}"}\n'
    )
    with pytest.raises(ConfigError) as info:
        load_config(path, env={"UI_TOKEN": " "})
    (problem,) = info.value.problems
    assert problem.startswith("http.ui_token: ") and "must not be empty" in problem
    assert load_config(path, env={"UI_TOKEN": "s3cret"}).http.ui_token is not None


async def test_a_store_that_does_not_answer_gets_a_503_page_that_names_no_path(
    tmp_path: Path,
) -> None:
    store = SQLiteStore.from_url(f"sqlite:///{tmp_path / 'secret-place' / 'state.db'}")
    await store.open()
    await store.close()  # every read now raises StoreError

    async def nothing(*_: object) -> None:
        return None

    sources = StatusSources(
        accounts=[_account(store, nothing)], notifiers=list, leaders=_no_leaders
    )
    app = web.Application()
    StatusPage(sources).add_routes(app)
    async with TestServer(app) as server, aiohttp.ClientSession() as http:
        for path in ("/", "/ui/live"):
            async with http.get(server.make_url(path)) as resp:
                body = await resp.text()
                assert resp.status == 503, path
                assert "The state store does not answer" in body
                assert "secret-place" not in body
                assert "unsafe-inline" not in resp.headers["Content-Security-Policy"]


async def test_a_batch_has_run_since_box_created_its_first_job(tmp_path: Path) -> None:
    """Elapsed counts from Box's `created_at` (a batch the monitor met late is not young);
    without a readable one, from when the monitor first saw a job."""
    now = 1_800_000_000.0
    store = SQLiteStore.from_url(f"sqlite:///{tmp_path / 'state.db'}")
    async with store:
        jobs = (
            JobState("j1", "b1", "submitted", "t1", "pdf", created_at="2027-01-15T07:58:20Z",
                     first_seen_at=now - 5),
            JobState("j2", "b1", "pending", "t1", "pdf", created_at="2027-01-15T07:59:00Z",
                     first_seen_at=now - 5),
            JobState("j3", "b2", "pending", "t1", "pdf", created_at="not a time",
                     first_seen_at=now - 7),
        )
        await store.commit(SnapshotChanges(upserts=jobs), [])

        async def nothing(*_: object) -> None:
            return None

        view = await gather(StatusSources(
            accounts=[_account(store, nothing)], notifiers=list, leaders=_no_leaders,
            clock=lambda: now,
        ))
    batches = view.accounts[0].batches
    elapsed = {b.batch_id: b.elapsed_s for b in batches}
    assert datetime(2027, 1, 15, 7, 58, 20, tzinfo=UTC).timestamp() == now - 100
    assert elapsed == {"b1": 100.0, "b2": 7.0}
    assert [b.batch_id for b in batches] == ["b1", "b2"]  # the longest-running first


def _account(store: SQLiteStore, nothing: Any) -> AccountSources:
    """One account led here, its figures fixed: these tests are about the store's part."""
    return AccountSources(
        name="default",
        store=store,
        polling=lambda: PollingHealth(True, 1.0, 6.0, "normal", 2.0, 5.0),
        active=dict,
        retry_dead=nothing,
        baseline_at=nothing,
    )


async def _no_leaders() -> dict[str, str]:
    return {}
