"""Delivery through receiver outages of hours, with the default `delivery` settings: the real
dispatcher, the real SQLite store and a real HTTP receiver, on an injected clock that the test
moves to each retry's time (hours pass in seconds, nothing sleeps)."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from monitor.config import DeliveryConfig
from monitor.metrics import Metrics
from monitor.notify.dispatcher import MAX_RETRY_AFTER_S, Dispatcher
from monitor.notify.webhook import WebhookNotifier
from monitor.store import open_store
from monitor.store.base import OutboxState, Store
from monitor.views import iso
from tests.harness import free_port, wait_until, write_config
from tests.receiver import WebhookReceiver
from tests.test_cli import run_cli
from tests.test_delivery import _commit, event, webhook

HOUR_S = 3600.0
EVENTS = [event(n) for n in (1, 2, 3)]


class Clock:
    """Wall-clock seconds that move only when the test says so."""

    def __init__(self) -> None:
        self.now = time.time()
        self.start = self.now

    def __call__(self) -> float:
        return self.now


class Rig:
    def __init__(self, store: Store, receiver: WebhookReceiver) -> None:
        self.store = store
        self.receiver = receiver
        self.clock = Clock()
        self.metrics = Metrics()
        self.notifier: WebhookNotifier = webhook(receiver.url)
        self.dispatcher = Dispatcher(
            store, {"sink": self.notifier}, DeliveryConfig(), self.metrics, clock=self.clock
        )

    async def idle(self) -> bool:
        """Nothing due at the injected now and nothing in flight. Read in that order: a row
        claimed between the two reads was due at the first."""
        pending = await self.store.list_outbox(OutboxState.PENDING, "sink")
        if any(r.next_attempt_at <= self.clock.now for r in pending):
            return False
        return not await self.store.list_outbox(OutboxState.CLAIMED, "sink")

    async def settle(self) -> None:
        await wait_until(self.idle, 10, "the dispatcher to finish what is due", interval_s=0.005)

    async def run_until(self, until: float) -> None:
        """Move the clock from retry to retry (every row due at once) up to `until`."""
        while True:
            await self.settle()
            pending = await self.store.list_outbox(OutboxState.PENDING, "sink")
            due = max((r.next_attempt_at for r in pending), default=None)
            if due is None or due > until:
                self.clock.now = max(self.clock.now, until)
                return
            self.clock.now = max(self.clock.now, due)
            self.dispatcher.wake()

    def sample(self, name: str, **labels: str) -> float | None:
        return self.metrics.registry.get_sample_value(name, {"account": "default", **labels})


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    receiver = await WebhookReceiver().start()
    async with open_store(f"sqlite:///{tmp_path / 'state.db'}") as store:
        rig = Rig(store, receiver)
        await _commit(store, *EVENTS)
        rig.clock.now = rig.clock.start = time.time()  # the events are due from the start
        receiver.fail_status = 500  # the receiver is down from the first try
        rig.dispatcher.start()
        try:
            yield rig
        finally:
            await rig.dispatcher.stop(2)
            await rig.notifier.close()
            await receiver.close()


async def test_a_three_hour_outage_delays_delivery_and_loses_nothing(rig: Rig) -> None:
    await rig.run_until(rig.clock.start + 3 * HOUR_S)
    attempts = rig.receiver.refused
    assert attempts > 3 * 30  # far past the 12 tries that used to make them dead
    rows = await rig.store.list_outbox(OutboxState.PENDING, "sink")
    assert len(rows) == 3 and {r.first_failed_at for r in rows} == {rig.clock.start}
    # The backoff grew to max_backoff and stayed there (jitter only below it).
    gaps = {r.next_attempt_at - rig.clock.now for r in rows}
    assert all(0 < gap <= DeliveryConfig().max_backoff for gap in gaps)
    rig.receiver.fail_status = None
    await rig.run_until(rig.clock.now + DeliveryConfig().max_backoff)
    await rig.settle()
    assert rig.receiver.ids() == {e.id for e in EVENTS}
    assert await rig.store.outbox_counts() == {
        "sink": {**dict.fromkeys(OutboxState, 0), OutboxState.DELIVERED: 3}}
    assert rig.sample("box_docgen_notifications_total", notifier="sink", outcome="dead") is None


async def test_a_25_hour_outage_is_dead_visible_and_retryable(rig: Rig, tmp_path: Path) -> None:
    await rig.run_until(rig.clock.start + 25 * HOUR_S)
    dead = await rig.store.list_outbox(OutboxState.DEAD, "sink")
    assert sorted(r.event.id for r in dead) == sorted(e.id for e in EVENTS)
    assert {r.first_failed_at for r in dead} == {rig.clock.start}
    await rig.dispatcher.refresh_gauges()
    assert rig.sample("box_docgen_outbox_dead", notifier="sink") == 3
    assert rig.sample("box_docgen_outbox_pending", notifier="sink") == 0
    assert rig.sample("box_docgen_notifications_total", notifier="sink", outcome="dead") == 3
    assert all(r.last_error is not None and r.last_error.startswith("HTTP 500") for r in dead)

    # The operator sees them with `dead-letters list` and queues them again once it is fixed.
    config = write_config(tmp_path / "c.yaml", box_url="http://127.0.0.1:9",
                          hook_url=rig.receiver.url, http_port=free_port())
    code, out, err = await run_cli("dead-letters", "list", "--config", str(config),
                                   "--output", "json")
    assert code == 0, err
    listed = [json.loads(line) for line in out.splitlines()]
    assert sorted(r["event_id"] for r in listed) == sorted(e.id for e in EVENTS)
    assert {r["failing_since"] for r in listed} == {iso(rig.clock.start)}
    rig.receiver.fail_status = None
    code, out, err = await run_cli("dead-letters", "retry", "--config", str(config))
    assert (code, out.strip()) == (0, "3 dead letter(s) queued again"), err
    rig.dispatcher.wake()
    await rig.settle()
    assert rig.receiver.ids() == {e.id for e in EVENTS}
    await rig.dispatcher.refresh_gauges()
    assert rig.sample("box_docgen_outbox_dead", notifier="sink") == 0


async def test_throttle_answers_never_bring_an_event_closer_to_dead(rig: Rig) -> None:
    """A 429 or a Retry-After (even on a 503) is a wait, not a failure: a day of them after a
    failure makes nothing dead, ends the run of failures, and a too-long one is clamped."""
    await rig.settle()  # the first try failed with a 500: a run of failures began
    [first, *_] = await rig.store.list_outbox(OutboxState.PENDING, "sink")
    assert (first.attempts, first.first_failed_at) == (1, rig.clock.start)
    rig.receiver.fail_status, rig.receiver.retry_after = 429, "7200"
    await rig.run_until(rig.clock.start + 13 * HOUR_S)
    rig.receiver.fail_status, rig.receiver.retry_after = 503, "1800"
    await rig.run_until(rig.clock.start + 26 * HOUR_S)
    rows = await rig.store.list_outbox(OutboxState.PENDING, "sink")
    assert len(rows) == 3
    assert {(r.attempts, r.first_failed_at) for r in rows} == {(1, None)}
    assert rig.receiver.refused >= 3 * 30  # throttled hourly, then half-hourly
    rig.receiver.fail_status, rig.receiver.retry_after = 429, "1e9"
    rig.clock.now = max(r.next_attempt_at for r in rows)
    rig.dispatcher.wake()
    await rig.settle()
    rows = await rig.store.list_outbox(OutboxState.PENDING, "sink")
    assert {r.next_attempt_at - rig.clock.now for r in rows} == {MAX_RETRY_AFTER_S}
    assert rig.sample("box_docgen_notifications_total", notifier="sink", outcome="dead") is None
