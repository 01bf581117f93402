"""Grouping in the dispatcher (Alertmanager's group_by / group_wait / group_interval) with the
real SQLite store, and the results a notifier may give back: held events, partial success, a
rate limit. The notifier here is a plugin written for the test, as a third party would."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import ClassVar, Literal

import pytest

from monitor.config import DeliveryConfig
from monitor.metrics import Metrics
from monitor.model import Event, EventJob, EventType, SnapshotChanges
from monitor.notify.base import DeliveryResult, Notifier, NotifierConfig
from monitor.notify.dispatcher import Dispatcher, group_key
from monitor.store import open_store
from monitor.store.base import OutboxState, RoutedEvent, Store
from tests.harness import wait_until

DEFAULTS = DeliveryConfig()


class RecordingConfig(NotifierConfig):
    type: Literal["recording"] = "recording"


class Recording(Notifier):
    """Keeps each send; answers with the next scripted result (then: delivered)."""

    type_name: ClassVar[str] = "recording"
    config_model: ClassVar[type[NotifierConfig]] = RecordingConfig

    def __init__(self, config: NotifierConfig, *, timeout_s: float = 2.0) -> None:
        super().__init__(config, timeout_s=timeout_s)
        self.sends: list[tuple[float, list[str]]] = []
        self.script: list[DeliveryResult] = []

    async def send(self, events: Sequence[Event]) -> DeliveryResult:
        self.sends.append((time.time(), [e.id for e in events]))
        return self.script.pop(0) if self.script else DeliveryResult.delivered()


def recording(**settings: object) -> Recording:
    return Recording(RecordingConfig.model_validate({"name": "rec", "type": "recording",
                                                     **settings}))


def event(job: str, batch: str, at: float, to_status: str = "completed") -> Event:
    return Event(
        id=f"{job}:2:submitted:{to_status}", type=EventType.JOB_STATUS_CHANGED,
        detected_at=datetime.fromtimestamp(at, UTC), from_status="submitted",
        to_status=to_status,
        job=EventJob(id=job, batch_id=batch, status=to_status, template_file_id="t1",
                     output_file_id=None, output_type="pdf"),
    )


async def emit(store: Store, *events: Event) -> None:
    await store.commit(SnapshotChanges(), [RoutedEvent(e, ("rec",)) for e in events])


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    async with open_store(f"sqlite:///{tmp_path / 'state.db'}") as s:
        yield s


def test_group_key_names_each_field_in_order() -> None:
    e = event("j1", "b1", 0, "failed")
    assert group_key(e, ["batch", "to_status"]) == "batch=b1|to_status=failed"
    assert group_key(e, ["template"]) == "template=t1"
    assert group_key(e, []) == ""


async def test_groups_wait_then_flush_at_most_once_per_interval_even_across_a_restart(
    store: Store,
) -> None:
    rec = recording(group_by=["batch"], group_wait=0.4, group_interval=1.0)
    t0 = time.time()
    await emit(store, event("j1", "b1", t0), event("j2", "b2", t0), event("j3", "b1", t0))
    dispatcher = Dispatcher(store, {"rec": rec}, DEFAULTS, Metrics())
    dispatcher.start()
    try:
        await wait_until(lambda: _true(len(rec.sends) == 2), 5, "both groups flushed")
        assert sorted(ids for _, ids in rec.sends) == [
            ["j1:2:submitted:completed", "j3:2:submitted:completed"],
            ["j2:2:submitted:completed"],
        ]
        assert all(at >= t0 + 0.4 for at, _ in rec.sends)
        first_flush = max(at for at, _ in rec.sends)
    finally:
        await dispatcher.stop(2)

    again = recording(group_by=["batch"], group_wait=0.4, group_interval=1.0)
    await emit(store, event("j4", "b1", time.time()))
    restarted = Dispatcher(store, {"rec": again}, DEFAULTS, Metrics())  # a new process
    restarted.start()
    try:
        await wait_until(lambda: _true(len(again.sends) == 1), 5, "the b1 group's next flush")
        at, ids = again.sends[0]
        assert ids == ["j4:2:submitted:completed"]
        assert at >= first_flush + 1.0 - 0.05  # the interval counts from the stored flush
    finally:
        await restarted.stop(2)
    assert await store.outbox_counts() == {"rec": {**dict.fromkeys(OutboxState, 0),
                                                   OutboxState.DELIVERED: 4}}


async def test_held_events_come_back_with_the_next_flush_and_cost_no_attempt(
    store: Store,
) -> None:
    rec = recording(group_by=[], group_wait=0, group_interval=0.2)
    rec.script = [DeliveryResult.delivered(held=["j2:2:submitted:completed"])]
    await emit(store, event("j1", "b1", time.time()), event("j2", "b1", time.time()))
    dispatcher = Dispatcher(store, {"rec": rec}, DEFAULTS, Metrics())
    dispatcher.start()
    try:
        await wait_until(lambda: _true(len(rec.sends) == 2), 5, "the held event again")
    finally:
        await dispatcher.stop(2)
    assert [ids for _, ids in rec.sends] == [
        ["j1:2:submitted:completed", "j2:2:submitted:completed"],
        ["j2:2:submitted:completed"],
    ]
    assert rec.sends[1][0] - rec.sends[0][0] >= 0.99  # held at least MIN_HOLD_S
    delivered = await store.list_outbox(OutboxState.DELIVERED)
    assert [(d.event.id, d.attempts) for d in delivered] == [
        ("j1:2:submitted:completed", 1), ("j2:2:submitted:completed", 1)]


async def test_partial_success_is_not_repeated_and_a_rate_limit_is_not_an_attempt(
    store: Store,
) -> None:
    rec = recording(group_by=["batch"], group_wait=0, group_interval=0, max_attempts=1)
    rec.script = [
        DeliveryResult.failed("429", 0.3, rate_limited=True),
        DeliveryResult.failed("HTTP 500 after the first", settled=["j1:2:submitted:completed"]),
    ]
    await emit(store, event("j1", "b1", time.time()), event("j2", "b1", time.time()))
    dispatcher = Dispatcher(store, {"rec": rec}, DEFAULTS, Metrics())
    dispatcher.start()
    try:
        async def settled() -> bool:
            counts = (await store.outbox_counts())["rec"]
            return counts[OutboxState.DELIVERED] == 1 and counts[OutboxState.DEAD] == 1

        await wait_until(settled, 5, "one delivered, one dead")
    finally:
        await dispatcher.stop(2)
    assert [ids for _, ids in rec.sends] == [
        ["j1:2:submitted:completed", "j2:2:submitted:completed"]] * 2
    assert rec.sends[1][0] - rec.sends[0][0] >= 0.3  # Retry-After honoured
    # max_attempts=1: the 429 cost no attempt, else both would be dead after the first send.
    [dead] = await store.list_outbox(OutboxState.DEAD)
    assert (dead.event.id, dead.attempts, dead.last_error) == (
        "j2:2:submitted:completed", 1, "HTTP 500 after the first")


async def _true(value: bool) -> bool:
    return value
