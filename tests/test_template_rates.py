"""Failure ratio per template version and `template.failure_rate_rose`, through the Recorder (the
one commit path) on every store backend, with an injected clock; the pure decision alone."""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import pytest
import yaml

from monitor.config import NotifierSpec, Route, TemplateFailuresConfig
from monitor.metrics import Metrics
from monitor.model import Event, EventType, JobState
from monitor.notify.base import NotifierRegistry
from monitor.notify.console import ConsoleConfig, ConsoleNotifier
from monitor.notify.router import Router
from monitor.recorder import Recorder
from monitor.store.base import OutboxState, Store
from monitor.template_rates import Counts, RatePolicy, VersionCounts, policy_of, rise_id, rises
from tests.fake_slack import FakeSlack, untrusted_leaks
from tests.harness import free_port, write_config
from tests.receiver import WebhookReceiver
from tests.smtp_sink import SmtpSink, parts
from tests.test_cli import run_cli
from tests.test_email import mailer
from tests.test_slack import bot as slack_bot
from tests.test_slack import make as make_slack

T0 = 1_800_000_000.0
RISE = EventType.TEMPLATE_FAILURE_RATE_ROSE
ROUTES = [
    Route.model_validate({"match": {"type": ["template.failure_rate_rose"]}, "notify": ["qa"]}),
    Route.model_validate({"match": {}, "notify": ["audit"]}),
]


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


def jobs(batch: str, version: str, n: int, template: str = "t1") -> list[JobState]:
    return [JobState(id=f"{batch}-{i}", batch_id=batch, status="submitted",
                     template_file_id=template, output_type="pdf",
                     template_file_version_id=version) for i in range(n)]


def finished(batch: Sequence[JobState], failed: int) -> list[JobState]:
    """The batch with its first `failed` jobs failed and the rest completed."""
    return [replace(j, status="failed" if i < failed else "completed",
                    errors=("The tag 'city' was not provided",) if i < failed else ())
            for i, j in enumerate(batch)]


def recorder(store: Store, clock: Clock) -> Recorder:
    # The defaults a user gets: 24 h window, 20 jobs, +10 points and twice the old ratio.
    return Recorder(store, Router(ROUTES), Metrics(), clock=clock,
                    rates=policy_of(TemplateFailuresConfig()))


async def run_batch(rec: Recorder, clock: Clock, batch: list[JobState],
                    failed: int) -> tuple[Event, ...]:
    """The batch seen submitted, then finished a minute later: the events of the finish."""
    await rec.record_batch(batch[0].batch_id, batch)
    clock.now += 60
    recorded = await rec.record_batch(batch[0].batch_id, finished(batch, failed))
    clock.now += 60
    return tuple(e for e in recorded.events if e.type is RISE)


async def test_a_version_that_fails_markedly_more_gives_one_routed_event(store: Store) -> None:
    clock = Clock()
    rec = recorder(store, clock)
    assert await run_batch(rec, clock, jobs("b1", "v1", 40), failed=2) == ()  # 5%
    # 19 jobs of the new version all failed: below the 20 jobs a version needs, no verdict.
    assert await run_batch(rec, clock, jobs("b2", "v2", 19), failed=19) == ()
    # One more finished job of v2: 20 jobs, 19 failed (95%) against 5%.
    (event,) = await run_batch(rec, clock, jobs("b3", "v2", 1), failed=0)
    assert event.id == rise_id("t1", "v1", "v2") == "template:t1:v1:v2:failure_rate_rose"
    assert event.template is not None and event.job is None and event.batch is None
    body = event.wire()
    assert body["type"] == "template.failure_rate_rose"
    assert body["template"] == {
        "id": "t1", "version_id": "v2", "failure_ratio": 0.95, "jobs": 20, "failed_jobs": 19,
        "previous_version_id": "v1", "previous_failure_ratio": 0.05, "previous_jobs": 40,
        "previous_failed_jobs": 2, "window_s": 86400.0,
    }
    # Committed with the snapshot through the Recorder, routed by its type like any event.
    pending = await store.list_outbox(OutboxState.PENDING)
    assert [r.notifier for r in pending if r.event.id == event.id] == ["qa"]
    assert {r.event.id for r in pending if r.notifier == "qa"} == {event.id}
    assert {r.event.type for r in pending if r.notifier == "audit"} == {
        EventType.JOB_DISCOVERED, EventType.JOB_STATUS_CHANGED, EventType.BATCH_COMPLETED}
    # More failures of the same two versions: still one event, however often it is checked.
    assert await run_batch(rec, clock, jobs("b4", "v2", 30), failed=30) == ()
    # A restart replaying the same kind of observation mints nothing twice.
    again = recorder(store, clock)
    assert await run_batch(again, clock, jobs("b5", "v2", 5), failed=5) == ()
    rises_stored = [r for r in await store.list_outbox(OutboxState.PENDING)
                    if r.event.type is RISE]
    assert [r.event.id for r in rises_stored] == [event.id]


async def test_a_third_version_is_compared_with_the_second(store: Store) -> None:
    clock = Clock()
    rec = recorder(store, clock)
    await run_batch(rec, clock, jobs("b1", "v1", 20), failed=0)
    (first,) = await run_batch(rec, clock, jobs("b2", "v2", 20), failed=10)
    assert first.id == rise_id("t1", "v1", "v2")
    (second,) = await run_batch(rec, clock, jobs("b3", "v3", 20), failed=20)
    assert second.template is not None
    assert (second.template.previous_version_id, second.template.version_id) == ("v2", "v3")
    assert (second.template.previous_failure_ratio, second.template.failure_ratio) == (0.5, 1.0)


async def test_no_event_below_the_thresholds_or_outside_the_window(store: Store) -> None:
    clock = Clock()
    rec = recorder(store, clock)
    await run_batch(rec, clock, jobs("b1", "v1", 40), failed=12)  # 30%
    # 45%: fifteen points more, but not twice the old ratio: noise, not a regression.
    assert await run_batch(rec, clock, jobs("b2", "v2", 40), failed=18) == ()
    # Another template's versions count apart.
    await run_batch(rec, clock, jobs("c1", "w1", 20, template="t2"), failed=0)
    clock.now += 86_401  # the window moved past every job so far
    assert await run_batch(rec, clock, jobs("c2", "w2", 20, template="t2"), failed=20) == ()
    assert [r for r in await store.list_outbox(OutboxState.PENDING)
            if r.event.type is RISE] == []


async def test_disabled_counts_nothing(store: Store) -> None:
    clock = Clock()
    rec = Recorder(store, Router(ROUTES), Metrics(), clock=clock,
                   rates=policy_of(TemplateFailuresConfig(enabled=False)))
    await run_batch(rec, clock, jobs("b1", "v1", 20), failed=0)
    assert await run_batch(rec, clock, jobs("b2", "v2", 20), failed=20) == ()


def counts(**by_version: tuple[int, int, float]) -> Counts:
    return {("t1", v): VersionCounts(*c) for v, c in by_version.items()}


@pytest.mark.parametrize(("old", "new", "fires"), [
    ((100, 2, T0), (100, 15, T0 + 1), True),  # 2% -> 15%
    ((100, 30, T0), (100, 41, T0 + 1), False),  # 30% -> 41%: not twice
    ((100, 0, T0), (100, 9, T0 + 1), False),  # 0% -> 9%: under ten points
    ((100, 0, T0), (100, 10, T0 + 1), True),  # exactly ten points
    ((100, 50, T0), (100, 0, T0 + 1), False),  # the newer version is the better one
])
def test_the_decision(old: tuple[int, int, float], new: tuple[int, int, float],
                      fires: bool) -> None:
    found = rises(counts(v1=old, v2=new), RatePolicy(), T0)
    assert [e.id for e in found] == ([rise_id("t1", "v1", "v2")] if fires else [])


# -- routing and rendering ----------------------------------------------------------------------


def rise_event(template_id: str = "t1 <!channel>") -> Event:
    """A rise about a template whose id tries an injection (ids come from Box: untrusted)."""
    found = rises(counts(v1=(60, 3, T0), v2=(40, 14, T0 + 1)), RatePolicy(), T0 + 2)
    (event,) = found
    assert event.template is not None
    return event.model_copy(update={"template": event.template.model_copy(
        update={"id": template_id})})


async def test_routes_test_and_check_config_know_the_type(tmp_path: Path) -> None:
    routes = [{"match": {"type": "template.failure_rate_rose", "template_id": "123"},
               "notify": ["qa"]},
              {"match": {"type": ["job.status_changed"]}, "notify": ["oncall"]}]
    notifiers = [{"name": n, "type": "webhook", "url": "http://127.0.0.1:9/h"}
                 for n in ("qa", "oncall")]
    path = str(write_config(tmp_path / "c.yaml", box_url="http://127.0.0.1:9",
                            hook_url="http://127.0.0.1:9/h", http_port=free_port(),
                            notifiers=notifiers, routes=routes))
    code, out, err = await run_cli("check-config", path)
    assert code == 0, err
    code, out, err = await run_cli("routes", "test", "--config", path, "--type",
                                   "template.failure_rate_rose", "--template", "123")
    assert code == 0, err
    assert out.splitlines()[-1] == "qa"
    code, out, err = await run_cli("routes", "test", "--config", path, "--type",
                                   "template.failure_rate_rose", "--template", "9")
    assert out == "no route matches: this event would reach no notifier\n"


async def test_a_rise_reaches_the_webhook_as_its_documented_body(
    receiver: WebhookReceiver,
) -> None:
    spec = NotifierSpec.model_validate({"name": "hook", "type": "webhook", "url": receiver.url,
                                        "secret": "s3cret"})
    notifier = NotifierRegistry.from_entry_points().create(spec, timeout_s=3.0)
    event = rise_event("t1")
    try:
        assert (await notifier.send([event])).ok
    finally:
        await notifier.close()
    body = receiver.events()[event.id]
    assert body["type"] == "template.failure_rate_rose" and "job" not in body
    assert body["template"]["previous_failure_ratio"] == 0.05
    assert body["template"]["failure_ratio"] == 0.35


async def test_a_rise_in_slack_email_and_console_is_one_escaped_sentence(
    tmp_path: Path,
) -> None:
    event = rise_event()
    sentence = ("version v2 fails 35% of its finished jobs (14 of 40); version v1 failed 5% "
                "(3 of 60), over the last 24h 00m.")
    slack = await FakeSlack().start()
    smtp = SmtpSink().start()
    try:
        bot = slack_bot(slack, None)
        hook = make_slack(None, webhook_url=slack.webhook_url())
        try:
            assert (await bot.send([event])).ok and (await hook.send([event])).ok
        finally:
            await bot.close()
            await hook.close()
        [post] = slack.calls("chat.postMessage")
        [webhook] = slack.calls("webhook")
        for text in (post.args["text"], webhook.args["text"]):
            assert f"Template t1 &lt;!channel&gt;: {sentence}" in text
            assert untrusted_leaks(text) == []
        assert "thread_ts" not in post.args  # a message of its own, not in a batch's thread
        assert (await mailer(None, smtp.port).send([event])).ok
        [mail] = smtp.received()
        assert mail["Subject"] == ("[docgen-monitor] Template t1 <!channel>: failure rate rose "
                                   "to 35% (version v2)")
        text, html = parts(mail)
        assert f"Template t1 <!channel>: {sentence}" in text
        assert "t1 &lt;!channel&gt;" in html and "<!channel>" not in html
    finally:
        smtp.stop()
        await slack.stop()
    out = io.StringIO()
    console = ConsoleNotifier(ConsoleConfig(name="c"), timeout_s=1.0, stream=out)
    assert (await console.send([event])).ok
    assert out.getvalue().endswith(
        "template t1 <!channel> version v2 fails 14/40 finished jobs (35%), "
        "version v1 failed 3/60 (5%)\n")


# -- documentation ------------------------------------------------------------------------------

ROOT = Path(__file__).resolve().parent.parent


def test_the_docs_name_the_event_and_its_thresholds() -> None:
    readme = (ROOT / "README.md").read_text()
    for event_type in EventType:  # the events table has a row for every type
        assert f"| `{event_type.value}` |" in readme, event_type
    assert '"template": {"id", "version_id", "failure_ratio"' in readme  # the webhook body
    for key in TemplateFailuresConfig.model_fields:
        assert f"| `template_failures.{key}` |" in readme, key
    assert "template.failure_rate_rose" in (ROOT / "docs" / "notifications.md").read_text()
    # The example configuration shows the thresholds, with the defaults a user gets.
    example = yaml.safe_load((ROOT / "config" / "example.yaml").read_text())
    assert TemplateFailuresConfig.model_validate(example["template_failures"]) == (
        TemplateFailuresConfig())
