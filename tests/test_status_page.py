"""The status page in a real browser: Debian's chromium, driven by Playwright, loads `GET /` from
`docgen-monitor run` (a subprocess) watching the simulator, and the assertions are on what a
person sees: batch rows whose counts follow the simulator without a reload, a failure group with
its count and examples, a dead letter that leaves after its Retry button is clicked, and Box's
hostile texts shown as text (no dialog, no injected element). Each test saves a screenshot under
`build/screenshots/` (not committed)."""

from __future__ import annotations

import base64
import contextlib
import os
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from playwright.async_api import Browser, Page, async_playwright, expect
from pydantic import SecretStr

from monitor.simulator import SimulatorConfig
from tests.harness import TOKEN, World, webhook_world
from tests.store_fixtures import PostgresBackend
from tests.test_chaos_ha import LEASE_TTL_S, cluster_on, stop_all

pytestmark = pytest.mark.e2e

CHROMIUM = Path("/usr/bin/chromium")
# No sandbox (containers lack the namespaces), no GPU, and nothing that phones home.
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run",
]
SCREENSHOTS = Path(__file__).resolve().parent.parent / "build" / "screenshots"
API_TOKEN = "page-api-token"
WAIT_MS = 20_000  # every expectation on the page is bounded by this
LONG_S = 3600.0  # a job timeline that never moves on its own: the test pins each status

TAG = "The tag '{}' was not provided in the input data."
TEN_KB = "Template parsing failed: " + "very long error text " * 500
INJECTIONS = (
    "<script>window.__pwned = 'script'</script>",
    '"><img src=x onerror="window.__pwned=\'img\'">',
    "<a href=\"javascript:window.__pwned='link'\">click me</a>",
    "<!channel> <!here> @everyone",
    "RTL \u202egnp.exe\u202c and zero\u200bwidth\u200d text",
    TEN_KB,
)


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    if not os.access(CHROMIUM, os.X_OK):
        if os.environ.get("CI") == "true":
            pytest.fail(f"{CHROMIUM} is missing: .ci/run installs the chromium package")
        pytest.skip("chromium is not installed (apt-get install chromium)")
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            await browser.close()


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    sim_config = SimulatorConfig(seed=11, developer_tokens=[SecretStr(TOKEN)])
    # http.api_token: the page's actions (retry) need it; without it they are off.
    async for w in webhook_world(tmp_path, sim_config, World, http={"api_token": API_TOKEN}):
        yield w


class Watcher:
    """A page that records every dialog (an injected script's alert would be one)."""

    def __init__(self, page: Page) -> None:
        self.page = page
        self.dialogs: list[str] = []
        page.on("dialog", self._dialog)

    async def _dialog(self, dialog: Any) -> None:
        self.dialogs.append(dialog.message)
        await dialog.dismiss()


async def open_page(browser: Browser, url: str) -> Watcher:
    page = await browser.new_page(viewport={"width": 1280, "height": 900})
    watcher = Watcher(page)
    await page.goto(url)
    return watcher


async def screenshot(page: Page, name: str) -> Path:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    await page.screenshot(path=str(path), full_page=True)
    return path


UNKNOWN_BATCH = "99999999"  # a Box id the simulator never issued


async def watch(world: World, batch_id: str) -> None:
    """What `docgen-monitor watch` does: the daemon's watch API."""
    async with aiohttp.ClientSession() as http, http.post(
        f"{world.daemon.base_url}/api/v1/watch/batches/{batch_id}",
        headers={"Authorization": f"Bearer {API_TOKEN}"},
    ) as resp:
        assert resp.status == 202, await resp.text()


async def start_daemon(world: World) -> None:
    world.daemon.start()
    await world.daemon.wait_ready()


async def pin(world: World, job_id: str, status: str, *errors: str) -> None:
    body: dict[str, Any] = {"status": status}
    if errors:
        body["errors"] = list(errors)
    await world.control.call("PUT", f"/_sim/jobs/{job_id}", body)


async def still_batch(world: World, jobs: int) -> dict[str, Any]:
    """A batch whose jobs stay `submitted` until the test pins them."""
    return await world.control.start_batch(
        jobs, submitted_after_s=0.0, min_duration_s=LONG_S, max_duration_s=LONG_S
    )


async def test_batches_and_failure_groups_follow_the_simulator_without_a_reload(
    world: World, browser: Browser
) -> None:
    # History the baseline records is not a recent failure, whatever its status.
    await world.control.call("POST", "/_sim/seed", {"count": 30, "outcomes": {"failed": 1.0}})
    await start_daemon(world)
    first = await still_batch(world, 4)
    second = await still_batch(world, 2)
    for watched in (first["batch_id"], UNKNOWN_BATCH):
        await watch(world, watched)
    watcher = await open_page(browser, world.daemon.base_url + "/")
    page = watcher.page
    row = page.locator(f"tr.batch[data-batch-id='{first['batch_id']}']")
    await expect(row.locator(".counts")).to_have_text("4 submitted", timeout=WAIT_MS)
    await expect(row.locator(".done")).to_have_text("0/4")
    await expect(row.locator(".badge")).to_have_text("watched")
    other = page.locator(f"tr.batch[data-batch-id='{second['batch_id']}']")
    await expect(other).to_contain_text("no")
    await expect(other.locator(".badge")).to_have_count(0)
    unknown = page.locator(f"tr.batch[data-batch-id='{UNKNOWN_BATCH}']")
    await expect(unknown).to_contain_text("Box does not list it yet")
    await expect(unknown.locator(".badge")).to_have_text("watched")
    await expect(page.locator("#failures")).to_contain_text("No job failed")
    await page.evaluate("window.__samePage = 'yes'")

    one, two = first["job_ids"][:2]
    await pin(world, one, "completed")
    await pin(world, two, "failed", TAG.format("customer_name"))
    for job_id in second["job_ids"]:
        await pin(world, job_id, "failed", TAG.format("city"))

    # The row's counts change as the simulator moves jobs, with no reload of the page.
    await expect(row.locator(".counts")).to_have_text(
        "1 completed1 failed2 submitted", timeout=WAIT_MS
    )
    await expect(row.locator(".done")).to_have_text("2/4")
    # A batch whose every job ended leaves the active list.
    await expect(page.locator(f"tr.batch[data-batch-id='{second['batch_id']}']")).to_have_count(
        0, timeout=WAIT_MS
    )
    group = page.locator(".failure-group", has_text="The tag '…' was not provided in the input")
    await expect(group.locator(".group-count")).to_have_text("3", timeout=WAIT_MS)
    await expect(group).to_contain_text("e.g. customer_name, city")
    await expect(group).to_contain_text("3 failed · 2 batches")
    assert await page.evaluate("window.__samePage") == "yes"
    await expect(page.locator("#polling .badge").first).to_have_text("ready")
    await expect(page.locator("#notifiers tr.notifier[data-notifier='sink']")).to_be_visible()
    await screenshot(page, "status-page-batches")
    assert await world.daemon.stop() == 0


async def test_texts_from_box_show_as_text_and_no_injected_script_runs(
    world: World, browser: Browser
) -> None:
    await start_daemon(world)
    batch = await still_batch(world, 1)
    await pin(world, batch["job_ids"][0], "failed", *INJECTIONS)
    watcher = await open_page(browser, world.daemon.base_url + "/")
    page = watcher.page
    failures = page.locator("#failures")
    await expect(failures.locator(".failure-group")).to_have_count(len(INJECTIONS),
                                                                   timeout=WAIT_MS)
    # Let the live script swap the section in at least once more, then look.
    await page.locator("#updated-at").evaluate("e => e.dataset.seen = '1'")
    await expect(page.locator("#updated-at:not([data-seen])")).to_be_attached(timeout=WAIT_MS)
    for details in await failures.locator("details").all():
        await details.locator("summary").click()

    text = await failures.inner_text()
    assert "<script>window.__pwned = 'script'</script>" in text
    assert '"><img src=x onerror="window.__pwned=\'img\'">' in text
    assert "<!channel> <!here> @everyone" in text
    assert "gnp.exe and zerowidth text" in text  # the override and zero-width marks are gone
    assert "\u202e" not in text and "\u200b" not in text
    assert re.search(r"very long error text[^\n]*… \(\d[\d,]* more characters\)", text)
    assert len(text) < 20_000  # a 10 kB text is cut, not shown whole (nor twice)
    live = page.locator("#live")
    assert await live.locator("script, img, iframe, object, embed").count() == 0
    assert await live.locator("a[href^='javascript']").count() == 0
    assert await page.evaluate("window.__pwned") is None
    assert watcher.dialogs == []
    await screenshot(page, "status-page-injections")
    assert await world.daemon.stop() == 0


@pytest.fixture
async def failing_world(tmp_path: Path) -> AsyncIterator[World]:
    sim_config = SimulatorConfig(seed=12, developer_tokens=[SecretStr(TOKEN)])
    async for w in webhook_world(tmp_path, sim_config, World, http={"api_token": API_TOKEN}):
        config = yaml.safe_load(w.config_path.read_text())
        # max_attempts: 1 makes an event dead at its first failure, instead of after a day.
        config["notifiers"][0]["max_attempts"] = 1
        w.config_path.write_text(yaml.safe_dump(config))
        yield w


async def test_a_dead_letter_leaves_the_page_after_its_retry_button_is_clicked(
    failing_world: World, browser: Browser
) -> None:
    world = failing_world
    world.receiver.fail_status = 500
    await start_daemon(world)
    batch = await still_batch(world, 2)
    watcher = await open_page(browser, world.daemon.base_url + "/")
    page = watcher.page
    letters = page.locator("#dead-letters tr.dead-letter")
    await expect(letters).to_have_count(2, timeout=WAIT_MS)  # each job's job.discovered
    await expect(page.locator("#notifiers tr.notifier[data-notifier='sink']")).to_contain_text(
        "HTTP 500")
    # Signed out, there is no Retry button; a wrong token does not sign in.
    assert await letters.locator("button").count() == 0
    await page.fill("#api_token", "not-the-token")
    await page.click("text=Sign in for actions")
    await expect(page.locator("#notice")).to_have_text("That is not the API token.")
    await page.fill("#api_token", API_TOKEN)
    await page.click("text=Sign in for actions")
    await expect(page.locator("#notice")).to_contain_text("Signed in")
    await expect(page).to_have_url(re.compile(r"/#notice$"))  # a reload shows no old notice

    world.receiver.fail_status = None
    target = letters.first
    event_id = await target.get_attribute("data-event-id")
    assert event_id is not None and event_id.split(":")[0] in batch["job_ids"]
    await target.locator("button", has_text="Retry").click()

    await expect(page.locator("#notice")).to_contain_text("put back in the queue")
    await expect(page.locator(f"tr.dead-letter[data-event-id='{event_id}']")).to_have_count(
        0, timeout=WAIT_MS)
    await world.receiver.wait_for(lambda r: event_id in r.ids(), timeout_s=20)
    await expect(letters).to_have_count(1)  # only the one clicked was retried
    await screenshot(page, "status-page-dead-letters")
    assert watcher.dialogs == []
    assert await world.daemon.stop() == 0



UI_TOKEN = "page-ui-token"


@pytest.fixture
async def guarded_world(tmp_path: Path) -> AsyncIterator[World]:
    sim_config = SimulatorConfig(seed=13, developer_tokens=[SecretStr(TOKEN)])
    # http.ui_token: the page behind a token (off by default); api_token for its actions.
    async for w in webhook_world(tmp_path, sim_config, World,
                                 http={"api_token": API_TOKEN, "ui_token": UI_TOKEN}):
        yield w


def basic(password: str) -> str:
    return "Basic " + base64.b64encode(f"ops:{password}".encode()).decode()


async def test_a_page_behind_ui_token_asks_a_browser_and_refuses_cross_site_actions(
    guarded_world: World, browser: Browser
) -> None:
    world = guarded_world
    await start_daemon(world)
    base = world.daemon.base_url
    # unsafe=True: keep cookies of an IP address host (127.0.0.1), as a browser does.
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
        for path in ("/", "/ui/live", "/static/style.css"):
            async with http.get(base + path) as resp:
                assert resp.status == 401, path
                assert resp.headers["WWW-Authenticate"].startswith("Basic ")
        async with http.get(base + "/", headers={"Authorization": basic("wrong")}) as resp:
            assert resp.status == 401
        async with http.get(base + "/", headers={"Authorization": f"Bearer {UI_TOKEN}"}) as resp:
            assert resp.status == 200
            csp = resp.headers["Content-Security-Policy"]
            assert "script-src 'self'" in csp and "unsafe-inline" not in csp
            body = await resp.text()
        assert UI_TOKEN not in body and API_TOKEN not in body

        read = {"Authorization": basic(UI_TOKEN)}
        retry = {"notifier": "sink", "csrf": "guess"}
        async with http.post(base + "/ui/dead-letters/retry", data=retry, headers=read,
                             allow_redirects=False) as resp:
            assert resp.status == 403  # no session
        async with http.post(base + "/ui/session", data={"api_token": API_TOKEN},
                             headers={**read, "Origin": "http://evil.example"},
                             allow_redirects=False) as resp:
            assert resp.status == 403  # a cross-site sign-in
        async with http.post(base + "/ui/session", data={"api_token": API_TOKEN}, headers=read,
                             allow_redirects=False) as resp:
            assert resp.status == 303
            cookie = resp.headers["Set-Cookie"]
            assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
        async with http.get(base + "/", headers=read) as resp:
            csrf = re.search(r'name="csrf" value="([^"]+)"', await resp.text())
        assert csrf is not None
        async with http.post(base + "/ui/dead-letters/retry", data=retry, headers=read,
                             allow_redirects=False) as resp:
            assert resp.status == 403  # the session's cookie without its CSRF token
        good = {"notifier": "sink", "csrf": csrf.group(1)}
        async with http.post(base + "/ui/dead-letters/retry", data=good,
                             headers={**read, "Origin": "http://evil.example"},
                             allow_redirects=False) as resp:
            assert resp.status == 403  # the right token from another site's page
        async with http.post(base + "/ui/dead-letters/retry", data=good, headers=read,
                             allow_redirects=False) as resp:
            assert resp.status == 303
            assert resp.headers["Location"] == "/?done=nothing#notice"

    context = await browser.new_context(http_credentials={"username": "ops",
                                                          "password": UI_TOKEN})
    page = await context.new_page()
    await page.goto(base + "/")
    await expect(page.locator("#polling .badge").first).to_have_text("ready", timeout=WAIT_MS)
    await page.locator("#updated-at").evaluate("e => e.dataset.seen = '1'")
    # The live script's requests carry the credentials too: the section is swapped in.
    await expect(page.locator("#updated-at:not([data-seen])")).to_be_attached(timeout=WAIT_MS)
    await expect(page.locator("#live-state")).to_have_text("· live")
    await context.close()

    # Without JavaScript the page reads the same; only the live updates are missing.
    context = await browser.new_context(java_script_enabled=False, http_credentials={
        "username": "ops", "password": UI_TOKEN})
    page = await context.new_page()
    await page.goto(base + "/")
    await expect(page.locator("#polling .badge").first).to_have_text("ready")
    await expect(page.locator("#notifiers tr.notifier[data-notifier='sink']")).to_be_visible()
    await expect(page.locator("#live-state")).to_have_text("")
    await context.close()
    assert await world.daemon.stop() == 0


async def test_silences_are_added_shown_live_and_expired_from_the_page(
    world: World, browser: Browser
) -> None:
    await start_daemon(world)
    watcher = await open_page(browser, world.daemon.base_url + "/")
    page = watcher.page
    rows = page.locator("#silences tr.silence")
    await expect(page.locator("#silences")).to_contain_text("No active or pending silences")
    assert await page.locator("#silence_match").count() == 0  # signed out: no form
    await page.fill("#api_token", API_TOKEN)
    await page.click("text=Sign in for actions")
    await expect(page.locator("#notice")).to_contain_text("Signed in")

    await page.fill("#silence_match", "template_id=777 colour=red")
    await page.fill("#silence_comment", "typo")
    await page.click("text=Add silence")
    await expect(page.locator("#notice")).to_contain_text("No silence added")
    await expect(rows).to_have_count(0)

    await page.fill("#silence_match", "template_id=777 to_status=failed")
    await page.fill("#silence_duration", "1h30m")
    await page.fill("#silence_comment", "fixing <b>tags</b> \u202eevil")
    await page.click("text=Add silence")
    await expect(page.locator("#notice")).to_contain_text("Silence added")
    await expect(rows).to_have_count(1)
    row = rows.first
    await expect(row).to_contain_text("template_id=777 to_status=failed")
    await expect(row).to_contain_text("fixing <b>tags</b> evil")  # as text, bidi mark out
    await expect(row).to_contain_text("status page")
    await expect(row).to_contain_text("in 1 h 29 min")
    assert await page.locator("#silences b").count() == 0

    # One added elsewhere (the HTTP API) shows up without a reload.
    async with aiohttp.ClientSession() as http, http.post(
        world.daemon.base_url + "/api/v1/silences",
        headers={"Authorization": f"Bearer {API_TOKEN}"},
        json={"match": {"batch_id": "42"}, "duration": "2h", "comment": "from a script"},
    ) as resp:
        assert resp.status == 201
    await expect(rows).to_have_count(2, timeout=WAIT_MS)
    await screenshot(page, "status-page-silences")

    await page.locator("tr.silence", has_text="fixing").locator("button",
                                                                 has_text="Expire").click()
    await expect(page.locator("#notice")).to_contain_text("Silence ended")
    await expect(rows).to_have_count(1)
    await expect(rows.first).to_contain_text("from a script")
    assert watcher.dialogs == []
    assert await world.daemon.stop() == 0


async def test_a_standby_replica_shows_the_page_names_its_leader_and_the_same_batches(
    browser: Browser, tmp_path: Path, pg_backend: PostgresBackend
) -> None:
    """Two `docgen-monitor run` replicas on one PostgreSQL schema (a Service load-balances
    over both): the standby's page answers 200, says it is a standby and which replica leads,
    and shows the batches and failures the leader's page shows, read from the shared store.
    A dead letter retried on the standby is sent by the leader."""
    async with contextlib.asynccontextmanager(cluster_on)(tmp_path, pg_backend.url, 2, LONG_S) as c:
        for replica in c.replicas:
            config = yaml.safe_load(replica.config_path.read_text())
            config["http"]["api_token"] = API_TOKEN  # actions (retry) are off without it
            config["notifiers"][0]["max_attempts"] = 1  # dead at the first failure, not in a day
            replica.config_path.write_text(yaml.safe_dump(config))
        c.receiver.fail_status = 500
        await c.start()
        leader = await c.polling_leader(2 * LEASE_TTL_S)
        standby = next(r for r in c.replicas if r is not leader)
        batch = await c.control.start_batch(
            3, submitted_after_s=0.0, min_duration_s=LONG_S, max_duration_s=LONG_S
        )
        await c.control.call("PUT", f"/_sim/jobs/{batch['job_ids'][0]}",
                             {"status": "failed", "errors": [TAG.format("city")]})

        lead_page = (await open_page(browser, leader.base_url + "/")).page
        row = f"tr.batch[data-batch-id='{batch['batch_id']}']"
        await expect(lead_page.locator(row)).to_have_count(1, timeout=WAIT_MS)
        await expect(lead_page.locator("#polling .role")).to_have_text("leader")
        leader_name = await lead_page.locator("#replica").inner_text()

        page = await browser.new_page(viewport={"width": 1280, "height": 900})
        response = await page.goto(standby.base_url + "/")
        assert response is not None and response.status == 200
        await expect(page.locator("#polling .role")).to_have_text("standby")
        await expect(page.locator("#role .leader")).to_have_text(leader_name)
        await expect(page.locator("#role")).to_contain_text("This replica is a standby")
        assert await page.locator("#replica").inner_text() != leader_name
        await expect(page.locator("#last-sweep")).to_have_count(0)  # the leader's figure
        await expect(page.locator(row).locator(".counts")).to_have_text(
            "1 failed2 submitted", timeout=WAIT_MS
        )
        group = page.locator(".failure-group", has_text="The tag '…' was not provided")
        await expect(group.locator(".group-count")).to_have_text("1")
        ids = "els => els.map(e => e.dataset.batchId).sort()"
        assert await page.locator("tr.batch").evaluate_all(ids) == await lead_page.locator(
            "tr.batch"
        ).evaluate_all(ids)
        await screenshot(page, "status-page-standby")

        # Retry on the standby: a requeue in the shared store, which the leader delivers.
        letter = page.locator("#dead-letters tr.dead-letter").first
        await expect(letter).to_be_attached(timeout=WAIT_MS)
        event_id = await letter.get_attribute("data-event-id")
        assert event_id is not None
        c.receiver.fail_status = None
        async with aiohttp.ClientSession() as http, http.post(
            standby.base_url + "/ui/dead-letters/retry",
            data={"notifier": "sink", "event_id": event_id},
            headers={"Authorization": f"Bearer {API_TOKEN}"},
        ) as resp:
            assert resp.status == 200 and await resp.json() == {"retried": 1}
        assert [line.get("on") for line in standby.log_lines()
                if line.get("event") == "dead_letters_retried"] == ["standby"]
        await c.receiver.wait_for(lambda r: event_id in r.ids(), timeout_s=20)
        await expect(page.locator(f"tr.dead-letter[data-event-id='{event_id}']")).to_have_count(
            0, timeout=WAIT_MS)
        # The event history answers on the standby too (the same store handle).
        async with aiohttp.ClientSession() as http, http.get(
            standby.base_url + f"/api/v1/events?batch={batch['batch_id']}",
            headers={"Authorization": f"Bearer {API_TOKEN}"},
        ) as resp:
            assert resp.status == 200, await resp.text()
            history = (await resp.json())["events"]
        assert {e["job_id"] for e in history} == set(batch["job_ids"])
        assert event_id in {e["id"] for e in history}
        await stop_all(c)
