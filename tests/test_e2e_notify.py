"""End to end for people-facing notifications over real sockets: the simulator, `docgen-monitor
run` as a subprocess, the fake Slack Web API and a real SMTP server (aiosmtpd).

A 500-job batch with 20 failures must give ONE parent Slack message whose final edit shows the
true counts, the failures in at most 5 thread replies, and one digest mail, through a SIGKILL
and restart, a Slack 429 storm and an SMTP outage. The figures (Slack calls, mails) are printed
with `-s`. A SIGKILL between Slack storing a parent and the daemon saving its ts leaves one
parent; a SIGKILL between Slack storing a thread reply and the daemon recording its events
delivered leaves each failure in the thread once."""

from __future__ import annotations

import json
import re
import signal
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
from pydantic import SecretStr

from monitor.simulator import RunningSimulator, SimulatorConfig, TimelineConfig, start_simulator
from tests import harness
from tests.fake_slack import FakeSlack, Message, untrusted_leaks
from tests.harness import TOKEN, DaemonProcess, SimControl, free_port, wait_until, write_config
from tests.smtp_sink import SmtpSink, parts
from tests.test_slack import CHANNEL, INJECTIONS

pytestmark = pytest.mark.e2e

JOBS = 500
FAILURES = 20


@dataclass
class World:
    sim: RunningSimulator
    control: SimControl
    slack: FakeSlack
    smtp: SmtpSink
    daemon: DaemonProcess


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    sim = await start_simulator(SimulatorConfig(
        seed=7, developer_tokens=[SecretStr(TOKEN)],
        timeline=TimelineConfig(submitted_after_s=0.3, min_duration_s=1.0, max_duration_s=6.0),
    ))
    slack = await FakeSlack().start()
    smtp = SmtpSink().start()
    session = aiohttp.ClientSession()
    port = free_port()
    grouping = {"group_by": ["batch"], "group_wait": "1s", "group_interval": "2s"}
    config = write_config(
        tmp_path / "config.yaml", box_url=sim.url, hook_url="http://127.0.0.1:9/unused",
        http_port=port,
        notifiers=[
            {"name": "team-slack", "type": "slack", "token": "xoxb-test", "channel": CHANNEL,
             "api_url": slack.api_url, "failures_per_reply": 10, **grouping},
            {"name": "oncall-mail", "type": "email", "from": "docgen-monitor@example.com",
             "to": ["ops@example.com"], "digest": "batch",
             "smtp": {"host": "127.0.0.1", "port": smtp.port, "starttls": False, "tls": False},
             **grouping},
        ],
        routes=[{"match": {"type": ["job.discovered", "job.status_changed", "batch.completed"]},
                 "notify": ["team-slack", "oncall-mail"]}],
    )
    daemon = DaemonProcess(config, port)
    try:
        yield World(sim, SimControl(sim.url, session), slack, smtp, daemon)
    finally:
        daemon.ensure_stopped()
        smtp.stop()
        await session.close()
        await slack.stop()
        await sim.close()


async def start_batch(w: World) -> tuple[str, dict[str, str]]:
    """500 jobs that all complete, 20 of them pinned to a failure carrying injection texts."""
    only_completed = {"completed": 1.0, "completed_with_error": 0.0, "failed": 0.0}
    body = await w.control.start_batch(JOBS, outcomes=only_completed)
    failures: dict[str, str] = {}
    for n, job_id in enumerate(body["job_ids"][::JOBS // FAILURES][:FAILURES]):
        status = "failed" if n % 4 else "completed_with_error"
        text = f"{INJECTIONS[n % len(INJECTIONS)]} #{n}"
        texts = {"errors": [text]} if status == "failed" else {"warnings": [text]}
        await w.control.call("PUT", f"/_sim/jobs/{job_id}", {"status": status, **texts})
        failures[job_id] = status
    return body["batch_id"], failures


async def terminal_count(w: World, batch_id: str) -> int:
    jobs = await w.control.jobs()
    return sum(j["status"] in ("completed", "completed_with_error", "failed")
               for j in jobs.values() if j["batch_id"] == batch_id)


def announced(reply: Message) -> list[str]:
    """The job ids a thread reply announces, from its metadata's event ids."""
    assert reply.metadata is not None
    return [e.split(":")[0] for e in json.loads(reply.metadata["event_payload"]["event_ids"])]


async def wait_done(w: World, batch_id: str, timeout_s: float = 45) -> None:
    async def done() -> bool:
        parents = w.slack.parents()
        replied = sum(len(announced(r)) for p in parents for r in w.slack.replies(p.ts))
        return (len(parents) >= 1 and f"{JOBS}/{JOBS} jobs done" in parents[0].text
                and replied >= FAILURES and len(w.smtp.received()) >= 1)

    try:
        await wait_until(done, timeout_s, "final Slack edit, all failure replies and the mail",
                         interval_s=0.3)
    except AssertionError:
        raise AssertionError(f"--- daemon log tail ---\n{w.daemon.logs()[-5000:]}") from None


def check_outcome(w: World, batch_id: str, failures: dict[str, str]) -> dict[str, int]:
    [parent] = w.slack.parents()  # one parent, ever
    counts = {"completed": JOBS - FAILURES, "completed_with_error": FAILURES // 4,
              "failed": FAILURES - FAILURES // 4}
    assert f"{JOBS}/{JOBS} jobs done (100%)" in parent.text
    for status, n in counts.items():
        assert f"{status}: *{n}*" in parent.text, parent.text
    replies = w.slack.replies(parent.ts)
    assert 1 <= len(replies) <= 5
    reply_text = "\n".join(b["text"]["text"] for r in replies for b in r.blocks or [])
    mentioned = [job_id for r in replies for job_id in announced(r)]
    assert set(mentioned) == set(failures), "every failure in the thread, nothing else"
    # A reply is recorded as started before it is posted and its events delivered once Slack
    # accepts it; a reply in doubt after a SIGKILL is found in the thread, never posted twice.
    assert sorted(mentioned) == sorted(failures), "each failure exactly once"
    # Listed by signature: the three injection texts (numbered) are three lines a reply at most.
    counted = [int(n) for n in re.findall(r"^\*(\d+) jobs?\* \(", reply_text, re.MULTILINE)]
    assert sum(counted) == FAILURES and len(counted) <= 3 * len(replies)
    assert untrusted_leaks(reply_text) == []
    assert "&lt;!channel&gt; render failed" in reply_text
    # Every request the daemon made was accepted or retried: the last answer for the thread
    # and the parent is ok, and no payload was refused for its content.
    refused = [r for r in w.slack.requests if r.status == 200 and not r.answer["ok"]]
    assert refused == []
    [mail] = w.smtp.received()
    assert mail["Subject"] == (f"[docgen-monitor] Batch {batch_id}: {JOBS}/{JOBS} done, "
                               f"{FAILURES} failed (completed)")
    text, html = parts(mail)
    # One entry per signature: the three injection texts, numbered, are three kinds of failure.
    counted = [int(n) for n in re.findall(r"^- (\d+) jobs? \(", text, re.MULTILINE)]
    assert sorted(counted) == [6, 7, 7], text
    assert "<script>" not in html and "&lt;script&gt;" in html
    return {
        "slack_calls": len(w.slack.requests),
        "slack_posts": len(w.slack.calls("chat.postMessage", ok=True)),
        "slack_updates": len(w.slack.calls("chat.update", ok=True)),
        "slack_429": sum(r.status == 429 for r in w.slack.requests),
        "replies": len(replies),
        "mails": len(w.smtp.received()),
    }


async def test_500_job_batch_one_parent_few_replies_one_mail_through_a_sigkill(
    world: World,
) -> None:
    """The SIGKILL falls, every run, in the window that used to repeat a reply: Slack has
    stored the first thread reply and holds its answer, so the daemon never learnt of it."""
    w = world
    w.slack.answer_next_reply_late_s = 10.0  # stored at once, answered long after the kill
    w.daemon.start()
    await w.daemon.wait_ready()
    batch_id, failures = await start_batch(w)

    async def reply_stored() -> bool:
        parents = w.slack.parents()
        return bool(parents) and bool(w.slack.replies(parents[0].ts))

    await wait_until(reply_stored, 30, "a parent message and a thread reply stored")
    w.daemon.kill()  # the reply's answer never reached the daemon
    parent_ts = w.slack.parents()[0].ts
    [lost] = w.slack.replies(parent_ts)
    w.daemon.start()
    await w.daemon.wait_ready()
    await wait_done(w, batch_id)
    figures = check_outcome(w, batch_id, failures)
    assert w.slack.parents()[0].ts == parent_ts
    assert w.slack.replies(parent_ts)[0] is lost
    assert '"slack_replies_recovered"' in w.daemon.logs()
    assert len(w.slack.calls("conversations.replies", ok=True)) == 1
    low_s, high_s, samples = await w.daemon.loop_stall_s()
    assert samples > 0  # the lag sampler runs (the figure itself is for the bench, not a gate)
    print(f"\n500 jobs, 20 failures, SIGKILL + restart: {figures}, "
          f"longest event-loop stall after the restart {low_s:g}-{high_s:g}s")
    assert await w.daemon.stop(signal.SIGTERM) == 0


async def test_a_slack_429_storm_and_an_smtp_outage_lose_nothing(world: World) -> None:
    w = world
    w.smtp.stop()  # the mail relay is down from the start
    w.daemon.start()
    await w.daemon.wait_ready()
    batch_id, failures = await start_batch(w)
    await wait_until(lambda: _true(bool(w.slack.parents())), 20, "the parent message")
    w.slack.throttle_next = 25  # every call for a while gets 429 Retry-After: 1
    await wait_until(lambda: _true(w.slack.throttle_next == 0), 40, "the 429 storm to pass")

    async def batch_done() -> bool:
        return await terminal_count(w, batch_id) == JOBS

    await wait_until(batch_done, 30, "the batch to finish")
    w.smtp.start()  # the relay comes back
    await wait_done(w, batch_id)
    figures = check_outcome(w, batch_id, failures)
    assert figures["slack_429"] >= 25
    print(f"\n500 jobs, 20 failures, 429 storm + SMTP outage: {figures}")
    assert await w.daemon.stop(signal.SIGTERM) == 0


async def _true(value: bool) -> bool:
    return value


# -- the crash window between chat.postMessage and saving the parent's ts -----------------------


@pytest.fixture
async def slack_world(tmp_path: Path) -> AsyncIterator[tuple[harness.World, FakeSlack]]:
    slack = await FakeSlack().start()
    sim_config = SimulatorConfig(
        seed=11, developer_tokens=[SecretStr(TOKEN)],
        timeline=TimelineConfig(submitted_after_s=0.3, min_duration_s=1.0, max_duration_s=3.0),
    )
    notifiers = [{"name": "team-slack", "type": "slack", "token": "xoxb-test",
                  "channel": CHANNEL, "api_url": slack.api_url,
                  "group_by": ["batch"], "group_wait": "1s", "group_interval": "2s"}]
    try:
        async for w in harness.webhook_world(
            tmp_path, sim_config, harness.World, notifiers=notifiers,
            routes=[{"match": {}, "notify": ["team-slack"]}],
        ):
            yield w, slack
    finally:
        await slack.stop()


async def test_a_sigkill_between_the_parent_post_and_saving_its_ts_leaves_one_parent(
    slack_world: tuple[harness.World, FakeSlack],
) -> None:
    """Slack stores the parent and holds its answer; the daemon is SIGKILLed while it waits.
    The restarted daemon finds the message by its metadata: exactly one parent, ever."""
    w, slack = slack_world
    slack.answer_next_post_late_s = 10.0  # stored at once, answered long after the kill
    w.daemon.start()
    await w.daemon.wait_ready()
    batch = await w.control.start_batch(12)

    async def parent_stored() -> bool:
        return bool(slack.parents())

    await wait_until(parent_stored, 20, "Slack to store the parent")
    w.daemon.kill()  # the answer (and its ts) never reached the daemon
    [parent] = slack.parents()
    w.daemon.start()
    await w.daemon.wait_ready()

    async def final_edit() -> bool:
        return "12/12 jobs done" in parent.text

    try:
        await wait_until(final_edit, 40, "the parent to show the whole batch", interval_s=0.3)
    except AssertionError:
        raise AssertionError(f"--- daemon log tail ---\n{w.daemon.logs()[-5000:]}") from None
    assert slack.parents() == [parent]
    assert parent.metadata == {"event_type": "docgen_batch", "event_payload": {
        "batch_id": batch["batch_id"], "notifier": "team-slack"}}
    assert '"slack_parent_recovered"' in w.daemon.logs()
    assert [r.method for r in slack.calls("conversations.history", ok=True)] == [
        "conversations.history"]
    assert await w.daemon.stop(signal.SIGTERM) == 0
