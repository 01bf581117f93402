"""Concurrent delivery over real sockets: a webhook notifier keeps up to `concurrency` events in
flight, yet the events of one job reach the receiver one after another, in order, even when
the receiver answers out of order and refuses one of them the first time."""

from __future__ import annotations

import itertools
import random
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import structlog

from monitor.config import DeliveryConfig, NotifierSpec
from monitor.metrics import Metrics
from monitor.model import Event, EventJob, EventType, SnapshotChanges
from monitor.notify.base import NotifierRegistry
from monitor.notify.dispatcher import Dispatcher
from monitor.notify.webhook import WebhookNotifier
from monitor.store import open_store
from monitor.store.base import RoutedEvent, Store
from tests.receiver import Delivery, WebhookReceiver

STEPS = ("submitted", "processing", "completed")  # each job's events, in the order they happen
T = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)


def job_events(job: int) -> list[Event]:
    """A job's life: discovered, then each status change, in order."""
    ref = EventJob(id=f"j{job}", batch_id="b1", status="submitted", template_file_id="t1",
                   output_file_id=None, output_type="pdf")
    events = [Event(id=f"j{job}:1:new:submitted", type=EventType.JOB_DISCOVERED,
                    detected_at=T, to_status="submitted", job=ref)]
    for n, (before, after) in enumerate(itertools.pairwise(STEPS), start=2):
        events.append(Event(
            id=f"j{job}:{n}:{before}:{after}", type=EventType.JOB_STATUS_CHANGED,
            detected_at=T + timedelta(seconds=n), from_status=before, to_status=after,
            job=ref.model_copy(update={"status": after})))
    return events


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    async with open_store(f"sqlite:///{tmp_path / 'state.db'}") as s:
        yield s


def webhook(url: str) -> WebhookNotifier:
    """A webhook notifier with every default (concurrency 16)."""
    spec = NotifierSpec.model_validate({"name": "sink", "type": "webhook", "url": url,
                                        "secret": "s3cret"})
    notifier = NotifierRegistry.from_entry_points().create(spec, timeout_s=5.0)
    assert isinstance(notifier, WebhookNotifier)
    return notifier


async def deliver_all(store: Store, receiver: WebhookReceiver, events: list[Event],
                      config: DeliveryConfig) -> None:
    """Commit `events` in one transaction (each job's events together, in order, as one poll
    that saw a job's whole life would), run the dispatcher until the receiver holds every one,
    and stop it."""
    notifier = webhook(receiver.url)
    dispatcher = Dispatcher(store, {"sink": notifier}, config, Metrics())
    await store.commit(SnapshotChanges(), [RoutedEvent(e, ("sink",)) for e in events])
    dispatcher.start()
    try:
        want = {e.id for e in events}
        await receiver.wait_for(lambda r: want <= r.ids(), 30)
    finally:
        await dispatcher.stop(2)
        await notifier.close()


def assert_each_job_in_order(deliveries: list[Delivery], events: list[Event]) -> None:
    """Per job: its events were accepted in the order they happened, and each request arrived
    only after the one before it was answered (never two of one job in flight)."""
    accepted = {d.event_id: d for d in deliveries}
    by_job: dict[str, list[Event]] = {}
    for e in events:
        assert e.job is not None
        by_job.setdefault(e.job.id, []).append(e)
    for job, job_events_ in by_job.items():
        got = [accepted[e.id] for e in job_events_]
        for before, after in itertools.pairwise(got):
            assert after.arrived_at >= before.received_at, (job, before.event_id, after.event_id)


async def test_concurrent_sends_keep_each_jobs_order_against_a_receiver_that_reorders(
    store: Store,
) -> None:
    """Random answer delays reorder the receiver's answers across jobs; with the default
    concurrency the receiver holds several requests at once, and no job's events overtake."""
    rng = random.Random(7)
    receiver = await WebhookReceiver(delay_s=lambda _key: rng.uniform(0.0, 0.05)).start()
    events = [e for job in range(40) for e in job_events(job)]
    try:
        await deliver_all(store, receiver, events, DeliveryConfig())
    finally:
        await receiver.close()
    assert receiver.max_in_flight > 1, "never more than one request in flight"
    assert receiver.max_in_flight <= 16
    assert len(receiver.deliveries) == len(events)  # each once: none repeated
    completion = [d.event_id for d in receiver.deliveries]
    assert completion != sorted(completion, key=[e.id for e in events].index), (
        "the receiver's answers were not reordered: the test proves nothing")
    assert_each_job_in_order(receiver.deliveries, events)


async def test_a_refused_event_holds_its_jobs_later_events_until_its_retry_succeeds(
    store: Store,
) -> None:
    """The receiver refuses one job's first event once: that job's later events wait for its
    retry (default backoff, about a second), while the other jobs are delivered meanwhile."""
    receiver = WebhookReceiver()
    events = [e for job in range(10) for e in job_events(job)]
    held = job_events(3)
    receiver.fail_once = {held[0].id}
    await receiver.start()
    try:
        await deliver_all(store, receiver, events, DeliveryConfig())
    finally:
        await receiver.close()
    assert receiver.refused == 1
    assert_each_job_in_order(receiver.deliveries, events)
    order = [d.event_id for d in receiver.deliveries]
    first_of_held = order.index(held[0].id)
    others = [e.id for e in events if not e.id.startswith("j3:")]
    assert all(order.index(e) < first_of_held for e in others), (
        "other jobs waited for the refused one")
    assert order[first_of_held:] == [e.id for e in held]


async def test_delivered_events_are_logged_once_per_write_of_their_marks(store: Store) -> None:
    """A stream of hundreds of events a second would drown the log in one line each: every
    event is counted in an `events_delivered` line, one per write of marks, and such a line
    names no single event (the first sender's bound fields are not the write's)."""
    receiver = await WebhookReceiver().start()
    events = [e for job in range(40) for e in job_events(job)]
    try:
        with structlog.testing.capture_logs(
            processors=[structlog.contextvars.merge_contextvars]
        ) as logs:
            await deliver_all(store, receiver, events, DeliveryConfig())
    finally:
        await receiver.close()
    lines = [x for x in logs if x["event"] == "events_delivered"]
    assert sum(x["count"] for x in lines) == len(events)
    assert len(lines) < len(events)
    assert all("event_id" not in x and "job_id" not in x for x in lines)
    per_event = [x for x in logs if x["event"] == "event_delivered"]
    assert {x["event_id"] for x in per_event} == {e.id for e in events}  # at debug, each one
    assert {x["log_level"] for x in per_event} == {"debug"}
