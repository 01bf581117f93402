"""Slack notifier against the local fake Slack (tests/fake_slack.py) over real sockets, with the
real SQLite store holding the batch snapshot and the thread mapping."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from monitor.config import NotifierSpec
from monitor.model import Event, EventBatch, EventJob, EventType, JobState, SnapshotChanges
from monitor.notify.base import NotifierRegistry
from monitor.notify.slack import SlackNotifier
from monitor.store import open_store
from monitor.store.base import OutboxState, RoutedEvent, Store, ThreadRef
from tests.fake_slack import FakeSlack, Message, untrusted_leaks
from tests.harness import free_port, wait_until

CHANNEL = "C0123456789"
T0 = time.time() - 5
INJECTIONS = (
    "<!channel> render failed",
    "file <@U123> & <!here> <!everyone> <!subteam^S1>",
    "<https://evil.example|click here> <script>alert(1)</script>",
)
# Exactly what Slack must receive for each: only &, < and > are entity-encoded.
ESCAPED = (
    "&lt;!channel&gt; render failed",
    "file &lt;@U123&gt; &amp; &lt;!here&gt; &lt;!everyone&gt; &lt;!subteam^S1&gt;",
    "&lt;https://evil.example|click here&gt; &lt;script&gt;alert(1)&lt;/script&gt;",
)


def job(n: int, status: str = "submitted", batch: str = "b1", **kw: Any) -> JobState:
    return JobState(id=f"j{n}", batch_id=batch, status=status, template_file_id="t9",
                    output_type="pdf", seq=2, first_seen_at=T0, changed_at=T0 + n * 0.01,
                    created_by_id="u7", **kw)


def changed(j: JobState, from_status: str = "submitted") -> Event:
    return Event(
        id=f"{j.id}:{j.seq}:{from_status}:{j.status}", type=EventType.JOB_STATUS_CHANGED,
        detected_at=datetime.fromtimestamp(T0, UTC), from_status=from_status, to_status=j.status,
        job=EventJob(id=j.id, batch_id=j.batch_id, status=j.status,
                     template_file_id=j.template_file_id, output_file_id=None,
                     output_type=j.output_type, created_by_id=j.created_by_id,
                     errors=j.errors, warnings=j.warnings),
    )


def completed(batch: str, counts: dict[str, int]) -> Event:
    return Event(id=f"{batch}:completed:{sum(counts.values())}", type=EventType.BATCH_COMPLETED,
                 detected_at=datetime.fromtimestamp(T0, UTC),
                 batch=EventBatch(id=batch, counts=counts, duration_s=1.0))


@pytest.fixture
async def slack() -> AsyncIterator[FakeSlack]:
    fake = await FakeSlack(enforce_rate=True).start()
    yield fake
    await fake.stop()


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    async with open_store(f"sqlite:///{tmp_path / 'state.db'}") as s:
        yield s


def make(store: Store | None, **settings: Any) -> SlackNotifier:
    spec = NotifierSpec.model_validate({"name": "team-slack", "type": "slack",
                                        "post_interval": "0.6s", **settings})
    notifier = NotifierRegistry.from_entry_points().create(spec, timeout_s=2.0)
    assert isinstance(notifier, SlackNotifier)
    if store is not None:
        notifier.attach(store)
    return notifier


def bot(slack: FakeSlack, store: Store | None, **settings: Any) -> SlackNotifier:
    return make(store, token="xoxb-test", channel=CHANNEL, api_url=slack.api_url, **settings)


def section_texts(message_blocks: list[dict[str, Any]] | None) -> list[str]:
    return [b["text"]["text"] for b in message_blocks or [] if b["type"] == "section"]


async def test_bot_mode_one_parent_per_batch_edited_in_place_and_failures_in_the_thread(
    slack: FakeSlack, store: Store
) -> None:
    jobs = [job(n) for n in range(10)]
    await store.commit(SnapshotChanges(upserts=tuple(jobs)), [])
    notifier = bot(slack, store, failures_per_reply=3)
    try:
        first = [changed(replace(jobs[0], status="completed"))]
        await store.commit(SnapshotChanges(upserts=(replace(jobs[0], status="completed"),)), [])
        assert (await notifier.send(first)).ok
        [parent] = slack.parents()
        assert "1/10 jobs done" in parent.text
        assert await store.get_thread("team-slack", "b1") == ThreadRef(CHANNEL, parent.ts)

        done = [replace(j, status="completed") for j in jobs[:6]]
        bad = [replace(j, status="failed", errors=(f"error {j.id}",)) for j in jobs[6:]]
        await store.commit(SnapshotChanges(upserts=(*done, *bad)), [])
        events = [changed(j) for j in done[1:]] + [changed(j) for j in bad]
        result = await notifier.send([*events, completed("b1", {"completed": 6, "failed": 4})])
        assert result.ok and not result.held
    finally:
        await notifier.close()
    assert len(slack.parents()) == 1
    assert parent.edits == 1
    assert "10/10 jobs done" in parent.text and "failed: *4*" in parent.text
    replies = slack.replies(parent.ts)
    # 3 jobs per reply, the rest at the end; each reply one line for their one signature.
    assert [section_texts(r.blocks) for r in replies] == [
        ["*3 jobs* (failed): error j&lt;n&gt;\n> error j6\n_jobs j6, j7, j8_"],
        ["*1 job* (failed): error j&lt;n&gt;\n> error j9\n_job j9_"],
    ]
    # What went over the wire: bearer auth, utf-8 JSON, no mention parsing, no unfurling,
    # thread_ts as a string, the update naming the channel id and ts.
    posts = slack.calls("chat.postMessage", ok=True)
    assert all(p.headers["Authorization"] == "Bearer xoxb-test" for p in slack.requests)
    assert all(p.headers["Content-Type"] == "application/json; charset=utf-8" for p in posts)
    assert all("link_names" not in p.args and "parse" not in p.args for p in slack.requests)
    assert all(p.args["unfurl_links"] is False and p.args["unfurl_media"] is False
               for p in posts)
    assert [p.args.get("thread_ts") for p in posts] == [None, parent.ts, parent.ts]
    [update] = slack.calls("chat.update")
    assert (update.args["channel"], update.args["ts"]) == (CHANNEL, parent.ts)


async def test_after_a_restart_the_same_parent_is_edited_never_a_second_one(
    slack: FakeSlack, store: Store
) -> None:
    jobs = [job(n) for n in range(3)]
    await store.commit(SnapshotChanges(upserts=tuple(jobs)), [])
    before = bot(slack, store)
    try:
        assert (await before.send([changed(jobs[0], "pending")])).ok
    finally:
        await before.close()
    after = bot(slack, store)  # a new process: nothing in memory
    try:
        final = [replace(j, status="completed") for j in jobs]
        await store.commit(SnapshotChanges(upserts=tuple(final)), [])
        assert (await after.send([changed(j) for j in final])).ok
    finally:
        await after.close()
    [parent] = slack.parents()
    assert parent.edits == 1 and "3/3 jobs done" in parent.text


async def test_failures_wait_for_company_until_the_batch_completes(
    slack: FakeSlack, store: Store
) -> None:
    jobs = [job(n) for n in range(5)]
    bad = replace(jobs[0], status="failed", errors=("boom",))
    await store.commit(SnapshotChanges(upserts=(bad, *jobs[1:])), [])
    notifier = bot(slack, store, failures_per_reply=10, reply_wait="1h")
    try:
        result = await notifier.send([changed(bad)])
        assert result.ok and result.held == {changed(bad).id}
        assert slack.replies(slack.parents()[0].ts) == []
    finally:
        await notifier.close()


async def test_injection_corpus_arrives_as_literal_text_in_every_slack_payload(
    slack: FakeSlack, store: Store
) -> None:
    bad = [replace(job(n, batch="<!channel>"), status="failed", errors=(text,),
                   created_by_id="<@U999>") for n, text in enumerate(INJECTIONS)]
    await store.commit(SnapshotChanges(upserts=tuple(bad)), [])
    notifier = bot(slack, store)
    try:
        assert (await notifier.send([changed(j) for j in bad])).ok
    finally:
        await notifier.close()
    for request in slack.calls():
        for key in ("text", "blocks"):
            raw = json.dumps(request.args.get(key), ensure_ascii=False)
            assert untrusted_leaks(raw) == [], (key, raw)
    [reply] = slack.replies(slack.parents()[0].ts)
    texts = section_texts(reply.blocks)
    assert len(texts) == 3  # three signatures: one line each, escaped
    for n, expected in enumerate(ESCAPED):
        [line] = [t for t in texts if f"_job j{n}_" in t]
        assert line.startswith("*1 job* (failed): ") and expected in line
    assert all("e.g." not in t for t in texts)  # no quoted name or file name varies
    assert "Doc Gen batch &lt;!channel&gt;" in slack.parents()[0].text


async def test_huge_and_numerous_failures_stay_within_slack_limits(
    slack: FakeSlack, store: Store
) -> None:
    bad = [replace(job(n), status="failed", errors=("x" * 10_000,) * 5) for n in range(45)]
    await store.commit(SnapshotChanges(upserts=tuple(bad)), [])
    notifier = bot(slack, store, failures_per_reply=40, post_interval=0)
    slack.enforce_rate = False
    try:
        assert (await notifier.send([changed(j) for j in bad])).ok
    finally:
        await notifier.close()
    assert all(r.status == 200 and r.answer["ok"] for r in slack.requests)
    replies = slack.replies(slack.parents()[0].ts)
    assert [len(r.blocks or []) for r in replies] == [1, 1]  # 40 + 5 jobs, one signature
    assert all(len(r.text) <= 4000 for r in replies)
    assert section_texts(replies[0].blocks)[0].startswith("*40 jobs* (failed): xxx")
    assert all(len(t) <= 3000 for r in replies for t in section_texts(r.blocks))


def forty_two_failures() -> list[JobState]:
    """42 failed jobs of two kinds: 30 missing tags (three names, one of them hostile) and 12
    unreadable images (file names vary)."""
    tags = ("customer_name", "city", "<!channel>")
    missing = [replace(job(n), status="failed",
                       errors=(f"The tag '{tags[n % 3]}' was not provided",)) for n in range(30)]
    images = [replace(job(n), status="failed",
                      errors=(f"Image photo_{n}.png could not be read (error {n})",))
              for n in range(30, 42)]
    return missing + images


async def test_a_42_failure_batch_is_one_thread_reply_with_one_line_per_signature(
    slack: FakeSlack, store: Store
) -> None:
    bad = forty_two_failures()
    await store.commit(SnapshotChanges(upserts=tuple(bad)), [])
    notifier = bot(slack, store)  # the defaults: up to 50 jobs in one reply
    try:
        result = await notifier.send([*(changed(j) for j in bad),
                                      completed("b1", {"failed": 42})])
        assert result.ok and not result.held
    finally:
        await notifier.close()
    [reply] = slack.replies(slack.parents()[0].ts)
    assert reply.text.startswith("42 failed job(s) in batch b1:")
    assert untrusted_leaks(json.dumps([reply.text, reply.blocks], ensure_ascii=False)) == []
    tags, images = section_texts(reply.blocks)
    assert tags.splitlines()[0] == ("*30 jobs* (failed): The tag '…' was not provided"
                                    " — e.g. customer_name, city, &lt;!channel&gt;")
    assert tags.splitlines()[-1] == "_jobs j0, j1, j2, j3, j4 and 25 more_"
    assert images.splitlines()[0] == (
        "*12 jobs* (failed): Image &lt;file&gt; could not be read (error &lt;n&gt;)"
        " — e.g. photo_30.png, photo_31.png, photo_32.png, photo_33.png, photo_34.png")


FAULTS = [
    ("throttle", "rate limited (HTTP 429)", True),
    ("fail", "HTTP 500", False),
    ("timeout", "no answer within 0.5s", False),
    ("refused", "connection failed: ClientConnectorError", False),
]


@pytest.mark.parametrize("mode", ["bot", "webhook"])
@pytest.mark.parametrize(("fault", "detail", "limited"), FAULTS)
async def test_transport_failures_are_results_never_exceptions(
    slack: FakeSlack, store: Store, mode: str, fault: str, detail: str, limited: bool
) -> None:
    await store.commit(SnapshotChanges(upserts=(job(1),)), [])
    url = slack.url if fault != "refused" else f"http://127.0.0.1:{free_port()}"
    settings: dict[str, Any] = {"timeout": "0.5s"}
    if mode == "bot":
        settings |= {"token": "xoxb-test", "channel": CHANNEL, "api_url": f"{url}/api/"}
    else:
        settings["webhook_url"] = f"{url}/services/T000/B000/XXXX"
    slack.throttle_next = int(fault == "throttle")
    slack.fail_next = int(fault == "fail")
    slack.delay_next_s = 1.5 if fault == "timeout" else 0.0
    notifier = make(store, **settings)
    try:
        result = await notifier.send([changed(job(1), "pending")])
    finally:
        await notifier.close()
    assert not result.ok
    assert result.detail.startswith(detail), result.detail
    assert result.rate_limited is limited
    assert (result.retry_after_s == 1.0) is limited
    assert not result.settled
    assert await store.get_thread("team-slack", "b1") is None
    assert "XXXX" not in result.detail and "xoxb" not in result.detail


async def test_a_revoked_token_is_a_failed_delivery(slack: FakeSlack, store: Store) -> None:
    notifier = make(store, token="xoxb-wrong", channel=CHANNEL, api_url=slack.api_url)
    try:
        result = await notifier.send([changed(job(1))])
    finally:
        await notifier.close()
    assert (result.ok, result.detail) == (False, "chat.postMessage: invalid_auth")


async def test_webhook_mode_posts_one_escaped_summary_per_send(
    slack: FakeSlack, store: Store
) -> None:
    bad = [replace(job(n), status="failed", errors=(t,)) for n, t in enumerate(INJECTIONS)]
    await store.commit(SnapshotChanges(upserts=tuple(bad)), [])
    notifier = make(store, webhook_url=slack.webhook_url(), max_failures_in_summary=2)
    try:
        assert (await notifier.send([changed(j) for j in bad])).ok
    finally:
        await notifier.close()
    [hook] = slack.calls("webhook")
    assert hook.status == 200 and "Authorization" not in hook.headers
    text = hook.args["text"]
    assert untrusted_leaks(text) == []
    assert text.count("• 1 job failed: ") == 2  # three signatures, the first two shown
    # Equal groups: the most recent first (j2's, then j1's), each escaped.
    assert "• 1 job failed: &lt;https://evil.example|click here&gt; &lt;script&gt;" in text
    assert "• 1 job failed: file &lt;@U&lt;n&gt;&gt; &amp; &lt;!here&gt;" in text
    assert "… and 1 more kinds of failure" in text


async def test_a_revoked_webhook_is_a_failed_delivery(slack: FakeSlack) -> None:
    notifier = make(None, webhook_url=slack.webhook_url("T000/B000/REVOKED"))
    try:
        result = await notifier.send([changed(job(1))])
    finally:
        await notifier.close()
    assert (result.ok, result.detail) == (False, "HTTP 404: no_service")


def test_config_needs_exactly_one_mode() -> None:
    registry = NotifierRegistry.from_entry_points()
    for settings in ({}, {"token": "x"}, {"token": "x", "channel": "C1", "webhook_url": "http://h"}):
        spec = NotifierSpec.model_validate({"name": "s", "type": "slack", **settings})
        with pytest.raises(ValueError, match=r"token|webhook_url"):
            registry.create(spec, timeout_s=1)


# -- the parent: a failing edit waits on its own; an unanswered post is never repeated ----------


async def parent_text_contains(slack: FakeSlack, text: str) -> bool:
    return any(text in p.text for p in slack.parents())


async def test_a_failing_parent_edit_does_not_stop_the_replies_and_is_retried_on_its_own(
    slack: FakeSlack, store: Store
) -> None:
    """The thread replies go on and the batch is delivered while `chat.update` fails; the edit
    keeps its own retry (store + timer) and the parent converges to the final text."""
    jobs = [job(n) for n in range(6)]
    await store.commit(SnapshotChanges(upserts=tuple(jobs)), [])
    notifier = bot(slack, store, failures_per_reply=2)
    try:
        assert (await notifier.send([changed(jobs[0], "pending")])).ok
        [parent] = slack.parents()
        done = [replace(j, status="completed") for j in jobs[:3]]
        bad = [replace(j, status="failed", errors=(f"error {j.id}",)) for j in jobs[3:]]
        await store.commit(SnapshotChanges(upserts=(*done, *bad)), [])
        slack.fail_updates = 2  # this send's edit and the first retry fail
        result = await notifier.send([*(changed(j) for j in (*done, *bad)),
                                      completed("b1", {"completed": 3, "failed": 3})])
        assert result.ok and not result.held, result
        replies = slack.replies(parent.ts)
        assert [section_texts(r.blocks)[0][:9] for r in replies] == ["*2 jobs* ", "*1 job* ("]
        assert "6/6 jobs done" not in parent.text
        [pending] = await store.pending_edits("team-slack")
        assert pending.thread == ThreadRef(CHANNEL, parent.ts)
        await wait_until(lambda: parent_text_contains(slack, "6/6 jobs done"), 15,
                         "the parent edit to be retried until it lands")
        assert await store.pending_edits("team-slack") == []
    finally:
        await notifier.close()
    assert len(slack.parents()) == 1 and "failed: *3*" in parent.text
    assert [r.status for r in slack.calls("chat.update")] == [500, 500, 200]


async def test_a_pending_parent_edit_is_retried_after_a_restart(
    slack: FakeSlack, store: Store
) -> None:
    jobs = [job(n) for n in range(2)]
    await store.commit(SnapshotChanges(upserts=tuple(jobs)), [])
    before = bot(slack, store)
    try:
        assert (await before.send([changed(jobs[0], "pending")])).ok
        final = [replace(j, status="completed") for j in jobs]
        await store.commit(SnapshotChanges(upserts=tuple(final)), [])
        slack.fail_updates = 1000
        assert (await before.send([changed(j) for j in final])).ok
    finally:
        await before.close()
    assert len(await store.pending_edits("team-slack")) == 1
    slack.fail_updates = 0
    after = bot(slack, store)  # a new process: the edit is known only to the store
    try:
        await after.start()
        await wait_until(lambda: parent_text_contains(slack, "2/2 jobs done"), 10,
                         "the restarted notifier to retry the stored edit")
    finally:
        await after.close()
    assert await store.pending_edits("team-slack") == []


async def test_a_parent_edit_slack_can_never_accept_is_abandoned(
    slack: FakeSlack, store: Store
) -> None:
    jobs = [job(n) for n in range(2)]
    await store.commit(SnapshotChanges(upserts=tuple(jobs)), [])
    notifier = bot(slack, store)
    try:
        assert (await notifier.send([changed(jobs[0], "pending")])).ok
        slack.messages.clear()  # someone deleted the parent
        await store.commit(SnapshotChanges(upserts=(replace(jobs[0], status="completed"),)), [])
        with capture_logs() as logs:
            assert (await notifier.send([changed(replace(jobs[0], status="completed"))])).ok
    finally:
        await notifier.close()
    [abandoned] = [e for e in logs if e["event"] == "slack_parent_edit_abandoned"]
    assert abandoned["error"] == "chat.update: message_not_found"
    assert await store.pending_edits("team-slack") == []


async def test_a_parent_whose_answer_never_came_is_found_by_its_metadata_not_posted_twice(
    slack: FakeSlack, store: Store
) -> None:
    """Slack stored the parent but its answer was lost (here: past the client's timeout):
    the next attempt finds the message in conversations.history by its metadata."""
    jobs = [job(n) for n in range(3)]
    await store.commit(SnapshotChanges(upserts=tuple(jobs)), [])
    notifier = bot(slack, store, failures_per_reply=1)
    started = time.time()
    try:
        slack.answer_next_post_late_s = 3.0  # the client gives up after 2 s
        first = await notifier.send([changed(jobs[0], "pending")])
        assert (first.ok, first.detail) == (False, "no answer within 2s")
        [parent] = slack.parents()
        assert await store.get_thread("team-slack", "b1") is None
        bad = replace(jobs[1], status="failed", errors=("boom",))
        await store.commit(SnapshotChanges(upserts=(bad,)), [])
        with capture_logs() as logs:
            second = await notifier.send([changed(jobs[0], "pending"), changed(bad)])
        assert second.ok, second
    finally:
        await notifier.close()
    assert slack.parents() == [parent]
    assert parent.metadata == {"event_type": "docgen_batch",
                               "event_payload": {"batch_id": "b1", "notifier": "team-slack"}}
    assert await store.get_thread("team-slack", "b1") == ThreadRef(CHANNEL, parent.ts)
    assert "1/3 jobs done" in parent.text  # edited to the current counts
    assert len(slack.replies(parent.ts)) == 1
    [lookup] = slack.calls("conversations.history")
    assert lookup.args["include_all_metadata"] == "true" and lookup.args["channel"] == CHANNEL
    assert float(parent.ts) > float(lookup.args["oldest"]) >= started - 61
    assert [e["ts"] for e in logs if e["event"] == "slack_parent_recovered"] == [parent.ts]


async def test_a_reply_whose_answer_never_came_is_found_in_the_thread_not_posted_twice(
    slack: FakeSlack, store: Store
) -> None:
    """Slack stored a thread reply but its answer was lost (past the client's timeout, as a
    SIGKILL would lose it): the next process finds the reply by its metadata with
    conversations.replies, records its events delivered and posts only the rest."""
    jobs = [job(n) for n in range(4)]
    await store.commit(SnapshotChanges(upserts=tuple(jobs)), [])
    bad = [replace(j, status="failed", errors=(f"boom {j.id}",)) for j in jobs[:3]]
    done = replace(jobs[3], status="completed")
    events = [changed(j) for j in (*bad, done)]
    await store.commit(SnapshotChanges(upserts=(*bad, done)),
                       [RoutedEvent(e, ("team-slack",)) for e in events])
    before = bot(slack, store, failures_per_reply=2)
    started = time.time()
    try:
        slack.answer_next_reply_late_s = 3.0  # stored at once; the client gives up after 2 s
        first = await before.send(events[:2])
        assert (first.ok, first.detail) == (False, "no answer within 2s")
    finally:
        await before.close()
    [parent] = slack.parents()
    [lost] = slack.replies(parent.ts)
    after = bot(slack, store, failures_per_reply=2)  # a new process: nothing in memory
    try:
        with capture_logs() as logs:
            second = await after.send(events)
        assert second.ok, second
    finally:
        await after.close()
    replies = slack.replies(parent.ts)
    assert len(replies) == 2 and replies[0] is lost
    assert section_texts(lost.blocks)[0].startswith("*2 jobs* (failed): boom j&lt;n&gt;")
    assert section_texts(lost.blocks)[0].endswith("_jobs j0, j1_")
    [rest] = section_texts(replies[1].blocks)
    assert "boom j2" in rest and rest.endswith("_job j2_")
    assert lost.metadata is not None and lost.metadata["event_type"] == "docgen_batch_reply"
    assert json.loads(lost.metadata["event_payload"]["event_ids"]) == [events[0].id, events[1].id]
    assert lost.metadata["event_payload"]["batch_id"] == "b1"
    [lookup] = slack.calls("conversations.replies")
    assert (lookup.args["channel"], lookup.args["ts"]) == (CHANNEL, parent.ts)
    assert lookup.args["include_all_metadata"] == "true"
    assert float(lost.ts) > float(lookup.args["oldest"]) >= started - 61
    [recovered] = [e for e in logs if e["event"] == "slack_replies_recovered"]
    assert (recovered["replies"], recovered["events"]) == (1, 2)
    delivered = await store.list_outbox(OutboxState.DELIVERED, "team-slack")
    assert sorted(d.event.id for d in delivered) == sorted(e.id for e in events)
    assert await store.reply_posts_in_doubt("team-slack", "b1") is None


async def test_replies_posted_without_a_lost_answer_are_never_looked_up(
    slack: FakeSlack, store: Store
) -> None:
    """The lookup is for replies in doubt only: answered replies leave nothing to look for."""
    jobs = [replace(job(n), status="failed", errors=("x",)) for n in range(4)]
    await store.commit(SnapshotChanges(upserts=tuple(jobs)), [])
    notifier = bot(slack, store, failures_per_reply=2)
    try:
        assert (await notifier.send([changed(j) for j in jobs[:2]])).ok
        assert (await notifier.send([changed(j) for j in jobs[2:]])).ok
    finally:
        await notifier.close()
    assert len(slack.replies(slack.parents()[0].ts)) == 2
    assert slack.calls("conversations.replies") == []
    assert await store.reply_posts_in_doubt("team-slack", "b1") is None


async def test_a_reply_slack_refused_is_not_in_doubt_and_is_retried_without_a_lookup(
    slack: FakeSlack, store: Store
) -> None:
    """A 429 says Slack stored nothing: the retry posts the reply without reading the thread."""
    jobs = [job(0), replace(job(1), status="failed", errors=("x",))]
    await store.commit(SnapshotChanges(upserts=tuple(jobs)), [])
    notifier = bot(slack, store, failures_per_reply=1)
    try:
        assert (await notifier.send([changed(jobs[0], "pending")])).ok
        slack.throttle_next = 1
        refused = await notifier.send([changed(jobs[1])])
        assert (refused.ok, refused.rate_limited) == (False, True)
        assert await store.reply_posts_in_doubt("team-slack", "b1") is None
        assert (await notifier.send([changed(jobs[1])])).ok
    finally:
        await notifier.close()
    assert len(slack.replies(slack.parents()[0].ts)) == 1
    assert slack.calls("conversations.replies") == []


async def test_without_history_access_a_lost_reply_is_posted_again_and_said_so(
    slack: FakeSlack, store: Store
) -> None:
    """A bot without channels:history cannot read the thread: it logs why and posts the reply
    again (a repeated reply is the lesser harm than a failure never told)."""
    slack.scopes["xoxb-test"] = frozenset({"chat:write"})
    bad = replace(job(1), status="failed", errors=("x",))
    await store.commit(SnapshotChanges(upserts=(bad,)), [])
    notifier = bot(slack, store, failures_per_reply=1)
    try:
        slack.answer_next_reply_late_s = 3.0
        assert not (await notifier.send([changed(bad)])).ok
        with capture_logs() as logs:
            assert (await notifier.send([changed(bad)])).ok
    finally:
        await notifier.close()
    assert len(slack.replies(slack.parents()[0].ts)) == 2
    [warning] = [e for e in logs if e["event"] == "slack_reply_lookup_unavailable"]
    assert warning["error"] == "conversations.replies: missing_scope"
    assert await store.reply_posts_in_doubt("team-slack", "b1") is None


async def test_the_parent_lookup_pages_back_through_a_busy_channel(
    slack: FakeSlack, store: Store
) -> None:
    await store.commit(SnapshotChanges(upserts=(job(1),)), [])
    slack.enforce_rate = False
    notifier = bot(slack, store, post_interval=0)
    try:
        slack.answer_next_post_late_s = 3.0
        assert not (await notifier.send([changed(job(1), "pending")])).ok
        for n in range(450):  # other messages posted since: three pages of 200
            ts = f"{int(time.time())}.{500_000 + n:06d}"  # newer than the parent, not future
            slack.messages[(CHANNEL, ts)] = Message(CHANNEL, ts, "B001", f"noise {n}", None, None)
        assert (await notifier.send([changed(job(1), "pending")])).ok
    finally:
        await notifier.close()
    assert len(slack.parents()) == 451
    assert len(slack.calls("conversations.history", ok=True)) == 3


async def test_without_history_access_a_lost_answer_gives_way_to_a_second_post(
    slack: FakeSlack, store: Store
) -> None:
    """A bot without channels:history cannot look: it logs why and posts again rather than
    never posting (the documented degraded mode)."""
    slack.scopes["xoxb-test"] = frozenset({"chat:write"})
    await store.commit(SnapshotChanges(upserts=(job(1),)), [])
    notifier = bot(slack, store)
    try:
        slack.answer_next_post_late_s = 3.0
        assert not (await notifier.send([changed(job(1), "pending")])).ok
        with capture_logs() as logs:
            assert (await notifier.send([changed(job(1), "pending")])).ok
    finally:
        await notifier.close()
    assert len(slack.parents()) == 2
    [warning] = [e for e in logs if e["event"] == "slack_parent_lookup_unavailable"]
    assert warning["error"] == "conversations.history: missing_scope"


async def test_a_throttled_parent_edit_waits_for_retry_after_without_growing_its_backoff(
    slack: FakeSlack, store: Store
) -> None:
    """A 429 storm on the edit is a wait (Retry-After: 1), not a failure: the parent is
    current about a second after the storm, not after minutes of grown backoff."""
    jobs = [job(n) for n in range(2)]
    await store.commit(SnapshotChanges(upserts=tuple(jobs)), [])
    notifier = bot(slack, store)
    try:
        assert (await notifier.send([changed(jobs[0], "pending")])).ok
        final = [replace(j, status="completed") for j in jobs]
        await store.commit(SnapshotChanges(upserts=tuple(final)), [])
        slack.throttle_next, slack.throttle_retry_after = 8, 1
        with capture_logs() as logs:
            assert (await notifier.send([changed(j) for j in final])).ok
            await wait_until(lambda: parent_text_contains(slack, "2/2 jobs done"), 15,
                             "the throttled edit to land once the storm passed")
    finally:
        await notifier.close()
    waits = [e["retry_in_s"] for e in logs if e["event"] == "slack_parent_edit_failed"]
    assert len(waits) == 8 and set(waits) == {1.0}, waits
    assert await store.pending_edits("team-slack") == []
