"""Silences in delivery: a muted event is recorded and counted but never sent, before, during and
after the silence, with the real dispatcher, every store backend (the `store` fixture of
`tests/conftest.py`) and a real receiver."""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from monitor.config import DeliveryConfig
from monitor.errors import ConfigError
from monitor.metrics import Metrics
from monitor.model import Event, EventJob, EventType, SnapshotChanges
from monitor.notify.dispatcher import Dispatcher
from monitor.notify.silences import Silencer, new_silence, parse_matchers
from monitor.store import open_store
from monitor.store.base import EventQuery, RoutedEvent, Store
from tests.receiver import WebhookReceiver
from tests.test_delivery import webhook

WAIT_S = 10.0


def event(job_id: str, detected_at: float, template: str = "123",
          to_status: str = "failed") -> Event:
    return Event(
        id=f"{job_id}:pending:{to_status}", type=EventType.JOB_STATUS_CHANGED,
        detected_at=datetime.fromtimestamp(detected_at, UTC),
        from_status="pending", to_status=to_status,
        job=EventJob(id=job_id, batch_id="b1", status=to_status, template_file_id=template,
                     output_file_id=None, output_type="pdf"),
    )


async def outcomes(store: Store) -> dict[str, str]:
    return {r.event.id: r.deliveries[0].outcome for r in await store.list_events(EventQuery())}


async def settled(store: Store, wanted: dict[str, str]) -> None:
    """Wait (bounded) until the history shows `wanted`."""
    deadline = time.monotonic() + WAIT_S
    while (got := await outcomes(store)) != wanted:
        assert time.monotonic() < deadline, got
        await asyncio.sleep(0.02)


def test_matchers_read_like_a_routes_match() -> None:
    assert parse_matchers(["template_id=123", "to_status=failed,completed_with_error",
                           "template_id=456"]) == {
        "template_id": ("123", "456"), "to_status": ("failed", "completed_with_error")}
    assert parse_matchers(["type=job.stuck"]) == {"type": ("job.stuck",)}


def test_bad_matchers_are_refused_with_every_problem() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_matchers(["template_id", "colour=red", "type=job.exploded"])
    problems = caught.value.problems
    assert problems[0].startswith("match[0]: expected KEY=VALUE")
    with pytest.raises(ConfigError) as caught:
        parse_matchers(["colour=red", "type=job.exploded"])
    text = "\n".join(caught.value.problems)
    assert "match.colour" in text and "match.type" in text
    with pytest.raises(ConfigError, match="at least one"):
        parse_matchers([])


def test_a_stored_silence_this_build_cannot_read_mutes_nothing_and_stops_nothing() -> None:
    now = time.time()
    unreadable = new_silence({"template_id": ("123",)}, duration_s=60, comment="c",
                             created_by="t", now=now)
    unreadable = replace(unreadable, match={"colour": ("red",)})
    good = new_silence({"template_id": ("123",)}, duration_s=60, comment="c", created_by="t",
                       now=now)
    with capture_logs() as logs:
        silencer = Silencer([unreadable, good])
    assert silencer.silencing(event("j1", now), now) == good
    assert logs == [{"event": "silence_unreadable", "silence_id": unreadable.id,
                     "log_level": "warning"}]


def test_a_silence_needs_a_duration_and_a_comment() -> None:
    with pytest.raises(ConfigError) as caught:
        new_silence({"template_id": ("1",)}, duration_s=0, comment=" ", created_by="a", now=0)
    assert len(caught.value.problems) == 2


async def test_matching_events_are_silenced_and_others_flow(
    store: Store, receiver: WebhookReceiver
) -> None:
    now = time.time()
    # Detected before the silence began but still owed when it is active: muted too (a backlog).
    backlog = event("j0", now - 600)
    await store.add_silence(new_silence({"template_id": ("123",), "to_status": ("failed",)},
                                        duration_s=3600, comment="fixing tags",
                                        created_by="test", now=now - 60))
    muted, other = event("j1", now), event("j2", now, template="999")
    await store.commit(SnapshotChanges(), [RoutedEvent(e, ("sink",))
                                           for e in (backlog, muted, other)], now=now)
    metrics = Metrics()
    notifier = webhook(receiver.url)
    dispatcher = Dispatcher(store, {"sink": notifier}, DeliveryConfig(), metrics)
    dispatcher.start()
    try:
        await settled(store, {backlog.id: "silenced", muted.id: "silenced", other.id: "delivered"})
    finally:
        await dispatcher.stop(5)
        await notifier.close()
    assert receiver.ids() == {other.id}
    assert metrics.notifications.labels("sink", "silenced")._value.get() == 2


async def test_after_a_silence_ends_nothing_it_muted_is_sent_and_new_events_flow(
    store: Store, receiver: WebhookReceiver
) -> None:
    now = time.time()
    silence = new_silence({"template_id": ("123",)}, duration_s=3600, comment="fixing tags",
                          created_by="test", now=now - 120)
    await store.add_silence(silence)
    during = event("j1", now - 60)
    await store.commit(SnapshotChanges(), [RoutedEvent(during, ("sink",))], now=now)
    notifier = webhook(receiver.url)
    dispatcher = Dispatcher(store, {"sink": notifier}, DeliveryConfig(), Metrics())
    dispatcher.start()
    try:
        await settled(store, {during.id: "silenced"})
        ended = await store.expire_silence(silence.id, time.time())
        assert ended is not None and not ended.active_at(time.time())
        # Detected while the silence was on, first handed out after it ended: still muted.
        late = event("j2", now - 30)
        after = event("j3", time.time() + 1)
        await store.commit(SnapshotChanges(),
                           [RoutedEvent(e, ("sink",)) for e in (late, after)], now=time.time())
        dispatcher.wake()
        await settled(store, {during.id: "silenced", late.id: "silenced",
                              after.id: "delivered"})
    finally:
        await dispatcher.stop(5)
        await notifier.close()
    assert receiver.ids() == {after.id}


async def test_silences_can_come_from_another_store_than_the_outbox(
    store: Store, receiver: WebhookReceiver, tmp_path: Path
) -> None:
    """One store per Box account: the silences are read from the base store every account
    shares (`Dispatcher(silences=...)`), not from the account's own."""
    now = time.time()
    async with open_store(f"sqlite:///{tmp_path / 'base.db'}") as base:
        await base.add_silence(new_silence({"template_id": ("123",)}, duration_s=600,
                                           comment="fixing tags", created_by="test", now=now))
        muted, other = event("j1", now), event("j2", now, template="999")
        await store.commit(SnapshotChanges(), [RoutedEvent(e, ("sink",)) for e in (muted, other)],
                           now=now)
        notifier = webhook(receiver.url)
        dispatcher = Dispatcher(store, {"sink": notifier}, DeliveryConfig(), Metrics(),
                                silences=base)
        dispatcher.start()
        try:
            await settled(store, {muted.id: "silenced", other.id: "delivered"})
        finally:
            await dispatcher.stop(5)
            await notifier.close()
    assert receiver.ids() == {other.id}
