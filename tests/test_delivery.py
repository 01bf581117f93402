"""Webhook wire format and the dispatcher's retry/dead-letter behaviour, over real sockets with
a real receiver and the real SQLite store."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
import structlog
from pydantic import ValidationError
from structlog.testing import capture_logs

from monitor.clock import SteadyWallClock
from monitor.config import DeliveryConfig, NotifierSpec, validation_problems
from monitor.looplag import LoopLagSampler
from monitor.metrics import Metrics
from monitor.model import Event, EventJob, EventType, SnapshotChanges
from monitor.notify.base import NotifierRegistry
from monitor.notify.dispatcher import Dispatcher, backoff_s
from monitor.notify.webhook import WebhookConfig, WebhookNotifier, parse_retry_after_s, sign
from monitor.store import open_store
from monitor.store.base import OutboxState, RoutedEvent, Store
from tests.receiver import WebhookReceiver

# The test about the optional max_attempts cap sets it; its short backoff only keeps the three
# tries within a fraction of a second.
CAPPED = DeliveryConfig(max_attempts=3, initial_backoff=0.05, max_backoff=0.2)


def event(n: int = 1, to_status: str = "failed") -> Event:
    return Event(
        id=f"j{n}:2:submitted:{to_status}", type=EventType.JOB_STATUS_CHANGED,
        detected_at=datetime(2026, 11, 28, 12, 0, tzinfo=UTC),
        from_status="submitted", to_status=to_status,
        job=EventJob(id=f"j{n}", batch_id="b1", status=to_status, template_file_id="t1",
                     output_file_id=None, output_type="pdf"),
    )


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    async with open_store(f"sqlite:///{tmp_path / 'state.db'}") as s:
        yield s


def webhook(url: str, secret: str | None = "s3cret", **extra: object) -> WebhookNotifier:
    spec = NotifierSpec.model_validate({"name": "sink", "type": "webhook", "url": url,
                                        **({"secret": secret} if secret else {}), **extra})
    notifier = NotifierRegistry.from_entry_points().create(spec, timeout_s=2.0)
    assert isinstance(notifier, WebhookNotifier)
    return notifier


async def test_webhook_posts_the_documented_wire_format(receiver: WebhookReceiver) -> None:
    notifier = webhook(receiver.url)
    try:
        result = await notifier.send([event()])
    finally:
        await notifier.close()
    assert result.ok, result.detail
    (delivery,) = receiver.deliveries
    assert receiver.bad_signatures == 0
    h = delivery.headers
    assert h["Content-Type"] == "application/json"
    assert h["Idempotency-Key"] == "j1:2:submitted:failed"
    assert h["X-Docgen-Monitor-Event"] == "job.status_changed"
    assert abs(int(h["X-Docgen-Monitor-Timestamp"]) - time.time()) < 60
    assert delivery.body == {
        "id": "j1:2:submitted:failed", "type": "job.status_changed",
        "detected_at": "2026-11-28T12:00:00Z", "from_status": "submitted", "to_status": "failed",
        "account": "default",  # the Box account it happened in (configuration name)
        "job": {"id": "j1", "batch_id": "b1", "status": "failed", "template_file_id": "t1",
                "output_file_id": None, "output_type": "pdf",
                # added keys (documented in the README; receivers ignore unknown keys)
                "created_by_id": None, "failures": None},
    }


def test_signature_is_hmac_sha256_of_timestamp_dot_body() -> None:
    body = b'{"a":1}'
    expected = hmac.new(b"k", b"1700000000." + body, hashlib.sha256).hexdigest()
    assert sign("k", 1_700_000_000, body) == f"v1={expected}"


STANDARD_SECRET = "whsec_" + base64.b64encode(b"a standard webhooks test key").decode()


async def test_signature_standard_follows_standard_webhooks(tmp_path: Path) -> None:
    """Checked by the Standard Webhooks reference library (`standardwebhooks`), receiving: the
    event id is the `webhook-id`; a receiver with another secret refuses the delivery."""
    receiver = await WebhookReceiver(secret=None, standard_secret=STANDARD_SECRET).start()
    wrong = await WebhookReceiver(
        secret=None, standard_secret="whsec_" + base64.b64encode(b"another key").decode()
    ).start()
    notifiers = [webhook(r.url, secret=STANDARD_SECRET, signature="standard")
                 for r in (receiver, wrong)]
    try:
        ok, refused = [await n.send([event()]) for n in notifiers]
    finally:
        for n in notifiers:
            await n.close()
        await receiver.close()
        await wrong.close()
    assert ok.ok, ok.detail
    assert not refused.ok and "401" in refused.detail
    assert (receiver.bad_signatures, wrong.bad_signatures) == (0, 1)
    (delivery,) = receiver.deliveries
    assert delivery.headers["webhook-id"] == event().id == delivery.headers["Idempotency-Key"]
    assert delivery.headers["webhook-signature"].startswith("v1,")
    assert "X-Docgen-Monitor-Signature" not in delivery.headers


@pytest.mark.parametrize("secret", [None, "not base64 at all!", "whsec_"])
def test_signature_standard_needs_a_base64_secret_and_never_echoes_it(
    secret: str | None,
) -> None:
    spec = {"name": "sink", "type": "webhook", "url": "http://127.0.0.1:9/h",
            "signature": "standard", **({"secret": secret} if secret is not None else {})}
    with pytest.raises(ValidationError) as info:
        WebhookConfig.model_validate(spec)
    text = "\n".join(validation_problems(info.value))  # what check-config prints
    assert "a standard signature needs" in text or "signature standard needs" in text
    if secret:
        assert secret not in text.replace("whsec_ and base64", "")


@pytest.mark.parametrize(("status", "retry_after"), [(500, None), (429, "7"), (503, "2")])
async def test_a_non_2xx_answer_is_a_failure_carrying_retry_after(
    receiver: WebhookReceiver, status: int, retry_after: str | None
) -> None:
    receiver.fail_status, receiver.retry_after = status, retry_after
    notifier = webhook(receiver.url)
    try:
        result = await notifier.send([event()])
    finally:
        await notifier.close()
    assert not result.ok
    assert result.detail.startswith(f"HTTP {status}")
    assert result.retry_after_s == (float(retry_after) if retry_after else None)
    assert result.rate_limited is (status == 429)


async def test_a_refused_connection_and_a_timeout_are_failures_without_the_url() -> None:
    notifier = webhook("http://127.0.0.1:9/secret-path-token")
    try:
        result = await notifier.send([event()])
    finally:
        await notifier.close()
    assert not result.ok
    assert "secret-path-token" not in result.detail
    slow = await WebhookReceiver(stall_s=3).start()
    notifier = webhook(slow.url, timeout="200ms")
    try:
        result = await notifier.send([event()])
    finally:
        await notifier.close()
        await slow.close()
    assert not result.ok and "no answer within 0.2s" in result.detail


def test_retry_after_accepts_seconds_and_http_dates() -> None:
    assert parse_retry_after_s("120") == 120.0
    assert parse_retry_after_s("1.5") == 1.5
    assert parse_retry_after_s("1e9") == 1e9  # the dispatcher clamps it
    assert parse_retry_after_s("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412470.0) == 10.0
    for garbled in ("soon", "-5", "inf", "nan"):
        assert parse_retry_after_s(garbled) is None


def test_backoff_grows_exponentially_to_max_backoff_and_stays_there() -> None:
    """Jitter never takes a delay above `max_backoff`, and no count of attempts overflows.
    (A receiver's Retry-After is a throttle, not a backoff: see the dispatcher tests.)"""
    cfg = DeliveryConfig(initial_backoff=1, max_backoff=30)
    assert [backoff_s(n, cfg, rng=lambda: 0.5) for n in (1, 2, 3, 6, 9, 5000)] == [
        1.0, 2.0, 4.0, 30.0, 30.0, 30.0]
    assert backoff_s(1, cfg, rng=lambda: 0.0) == pytest.approx(0.8)
    assert backoff_s(1, cfg, rng=lambda: 1.0) == pytest.approx(1.2)
    assert backoff_s(5000, cfg, rng=lambda: 1.0) == 30.0
    assert backoff_s(5, cfg, rng=lambda: 0.0) == pytest.approx(12.8)


def test_the_default_delivery_settings_give_up_by_age_not_by_count() -> None:
    defaults = DeliveryConfig()
    assert (defaults.give_up_after, defaults.max_attempts) == (86400.0, None)
    assert (defaults.initial_backoff, defaults.max_backoff) == (1.0, 300.0)


async def _commit(store: Store, *events: Event) -> None:
    await store.commit(SnapshotChanges(), [RoutedEvent(e, ("sink",)) for e in events])


async def _wait_state(store: Store, state: OutboxState, n: int, timeout_s: float = 10) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        counts = (await store.outbox_counts()).get("sink", {})
        if counts.get(state, 0) == n:
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"outbox never reached {n} {state}: {await store.outbox_counts()}")


async def test_dispatcher_retries_until_the_receiver_recovers(
    store: Store, receiver: WebhookReceiver
) -> None:
    receiver.fail_remaining = 2
    metrics = Metrics()
    notifier = webhook(receiver.url)
    dispatcher = Dispatcher(store, {"sink": notifier}, DeliveryConfig(), metrics)
    await _commit(store, event(1), event(2))
    dispatcher.start()
    try:
        await receiver.wait_for(lambda r: r.ids() == {event(1).id, event(2).id}, 10)
        await _wait_state(store, OutboxState.DELIVERED, 2)
    finally:
        await dispatcher.stop(2)
        await notifier.close()
    assert metrics.notifications.labels("sink", "retry")._value.get() == 2
    assert metrics.notifications.labels("sink", "delivered")._value.get() == 2


async def test_dispatcher_dead_letters_after_max_attempts_and_logs_it(
    store: Store, receiver: WebhookReceiver
) -> None:
    receiver.fail_status = 500
    metrics = Metrics()
    notifier = webhook(receiver.url)
    dispatcher = Dispatcher(store, {"sink": notifier}, CAPPED, metrics)
    await _commit(store, event(1))
    with capture_logs(processors=[structlog.contextvars.merge_contextvars]) as logs:
        dispatcher.start()
        try:
            await _wait_state(store, OutboxState.DEAD, 1)
        finally:
            await dispatcher.stop(2)
            await notifier.close()
    (dead,) = await store.list_outbox(OutboxState.DEAD)
    assert dead.attempts == 3 and dead.last_error is not None
    assert dead.last_error.startswith("HTTP 500")
    assert metrics.notifications.labels("sink", "dead")._value.get() == 1
    dead_logs = [e for e in logs if e["event"] == "event_dead"]
    assert dead_logs and dead_logs[0]["notifier"] == "sink"
    assert dead_logs[0]["event_id"] == event(1).id
    assert all("s3cret" not in str(e) and receiver.url not in str(e) for e in logs)


async def test_a_stalled_receiver_does_not_block_another_notifier(
    store: Store, receiver: WebhookReceiver
) -> None:
    slow = await WebhookReceiver(stall_s=5).start()
    fast_spec = NotifierSpec.model_validate({"name": "fast", "type": "webhook",
                                             "url": receiver.url, "secret": "s3cret"})
    registry = NotifierRegistry.from_entry_points()
    notifiers = {"sink": webhook(slow.url), "fast": registry.create(fast_spec, timeout_s=10)}
    dispatcher = Dispatcher(store, notifiers, DeliveryConfig(), Metrics())
    await store.commit(SnapshotChanges(), [RoutedEvent(event(1), ("sink", "fast"))])
    dispatcher.start()
    try:
        await receiver.wait_for(lambda r: len(r.ids()) == 1, 3)
    finally:
        await dispatcher.stop(0.1)
        for n in notifiers.values():
            await n.close()
        await slow.close()
    counts = await store.outbox_counts()
    assert counts["fast"].get(OutboxState.DELIVERED) == 1
    assert counts["sink"].get(OutboxState.DELIVERED, 0) == 0


async def test_a_2000_event_group_that_partly_fails_does_not_stall_the_event_loop(
    store: Store, receiver: WebhookReceiver
) -> None:
    """The receiver takes 1,000 events of one 2,000-event group, then fails: the 1,000 are
    delivered for good, the rest retried, and recording it (sets of ids, one write per outcome)
    never blocks the event loop for long. The longest stall is printed (`-s`)."""
    receiver.fail_after = 1000
    metrics = Metrics()
    notifier = webhook(receiver.url, group_by=[], group_wait=0)
    dispatcher = Dispatcher(store, {"sink": notifier}, DeliveryConfig(), metrics)
    await _commit(store, *(event(n) for n in range(2000)))
    sampler = LoopLagSampler(metrics.event_loop_lag, interval_s=0.01)
    sampler.start()
    dispatcher.start()
    try:
        await _wait_state(store, OutboxState.DELIVERED, 1000, timeout_s=60)
        await _wait_state(store, OutboxState.PENDING, 1000)
    finally:
        await dispatcher.stop(2)
        await notifier.close()
        await sampler.stop()
    assert len(receiver.ids()) == 1000 and receiver.refused == 1
    assert metrics.notifications.labels("sink", "retry")._value.get() == 1000
    print(f"\n2,000-event group, 1,000 failed: longest event-loop stall {sampler.worst_s:.3f}s")
    assert sampler.worst_s < 0.5


class SteppedWall:
    """The real wall clock plus an offset a test changes (a clock step)."""

    def __init__(self) -> None:
        self.offset_s = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset_s


async def test_a_retry_is_not_held_back_when_the_wall_clock_steps_back_an_hour(
    store: Store, receiver: WebhookReceiver
) -> None:
    """Due times are stored as wall-clock seconds; the dispatcher's clock never runs back, so
    a retry due in a second comes after a second, not after the hour the clock went back."""
    receiver.fail_remaining = 1
    metrics = Metrics()
    wall = SteppedWall()
    notifier = webhook(receiver.url)
    dispatcher = Dispatcher(store, {"sink": notifier}, DeliveryConfig(), metrics,
                            clock=SteadyWallClock(wall))
    await _commit(store, event(1))
    dispatcher.start()
    try:
        retries = metrics.notifications.labels("sink", "retry")._value
        deadline = time.monotonic() + 10
        while retries.get() < 1:
            assert time.monotonic() < deadline, "the first attempt never failed"
            await asyncio.sleep(0.02)
        wall.offset_s = -3600.0
        await receiver.wait_for(lambda r: r.ids() == {event(1).id}, 10)
        await _wait_state(store, OutboxState.DELIVERED, 1)
    finally:
        await dispatcher.stop(2)
        await notifier.close()
