"""Box webhook notifications as hints: a verified notification makes the daemon poll, now, the
active batches it may concern; it never makes an event itself (every event comes from the Box
read that poll makes, through the Recorder), so a forged, lost, late or repeated notification
changes nothing that polling would not.

Coalescing: a batch is polled `GATHER_S` after a hint (a burst of notifications, one poll), and
at most once per `min_gap_s`; a hint that arrives while a poll of its batch is due or running
asks for one more poll after it (the running one may have read before the change), never more.
One task per batch at most.

Health: webhooks count as healthy while a verified notification is younger than
`healthy_within_s` and no periodic poll in that window found a change that no notification
had asked about (a poll of the batch asked for by a hint within `MISS_GRACE_S` before). While
healthy, the schedule may stretch the active interval; any doubt falls back to polling."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Mapping, Sequence

import structlog

from monitor.box.webhooks import Notification, Verdict, Verifier, parse_notification
from monitor.metrics import Metrics
from monitor.poller import FOUND_BY_HINT, Poller

log = structlog.get_logger(__name__)

#: Box asks for no more than one poll per batch this often (a storm costs one poll a second).
MIN_GAP_S = 1.0
#: A poll waits this long after the hint that asked for it: Box sends a batch's notifications in
#: bursts (its jobs start together), and one poll then answers the whole burst.
GATHER_S = 0.1
#: A change a periodic poll finds within this long after a hint about its batch is no miss.
MISS_GRACE_S = 5.0
#: Times of recent polls kept per batch for the gap; past this many, older ones are dropped.
MAX_TRACKED_BATCHES = 10_000


#: How a delivery refused by every account is counted: the most telling reason.
_REFUSALS = (Verdict.REPLAYED, Verdict.STALE, Verdict.BAD_SIGNATURE)


def ingest(
    accounts: Sequence[BoxHints], body: bytes, headers: Mapping[str, str], metrics: Metrics
) -> Verdict:
    """One delivery for the accounts that take Box webhooks: every account whose keys verify it
    gets the hint (accounts of one Box app share its keys); counted once."""
    verdicts = [hints.verifier.verify(body, headers) for hints in accounts]
    if Verdict.ACCEPTED not in verdicts:
        verdict = next((v for v in _REFUSALS if v in verdicts), Verdict.BAD_SIGNATURE)
        metrics.box_webhooks.labels("unknown", verdict.value).inc()
        log.warning("box_webhook_refused", reason=verdict.value)
        return verdict
    notification = parse_notification(body)
    metrics.box_webhooks.labels(notification.trigger.lower(), Verdict.ACCEPTED.value).inc()
    for hints, verdict in zip(accounts, verdicts, strict=True):
        if verdict is Verdict.ACCEPTED:
            hints.take(notification)
    return Verdict.ACCEPTED


class BoxHints:
    def __init__(
        self,
        poller: Poller,
        verifier: Verifier,
        metrics: Metrics,
        *,
        healthy_within_s: float,
        min_gap_s: float = MIN_GAP_S,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.poller = poller
        self.verifier = verifier
        self.metrics = metrics
        self.healthy_within_s = healthy_within_s
        self.min_gap_s = min_gap_s
        self.monotonic = monotonic
        self._due: dict[str, float] = {}  # batch -> arrival of the first hint not polled yet
        self._last_start: dict[str, float] = {}  # batch -> start of its last hinted poll
        self._hinted_at: dict[str, float] = {}  # batch -> last hint about it
        self._runners: dict[str, asyncio.Task[None]] = {}
        self._last_verified: float | None = None
        self._last_miss: float | None = None
        poller.on_changes_found = self._note_poll_found

    # -- ingest -----------------------------------------------------------------------------

    def ingest(self, body: bytes, headers: Mapping[str, str]) -> Verdict:
        """Verify one delivery; a verified one asks for polls. Refused ones only count."""
        return ingest([self], body, headers, self.metrics)

    def take(self, notification: Notification) -> None:
        """A notification this account's keys verified: note it (health) and act on it."""
        self._last_verified = self.monotonic()
        self.hint(notification)

    def hint(self, notification: Notification) -> int:
        """Ask for a poll of every active batch `notification` may concern; how many."""
        batches = set(notification.batch_ids)
        for batch_id in batches - self.poller.active.keys():
            self.poller.watch(batch_id)  # a batch Box named that we do not follow yet
        if not batches or notification.template_file_id is not None:
            batches.update(self.poller.related_batches(notification.template_file_id))
        if not batches:
            self.metrics.box_webhook_polls.labels("unrelated").inc()
            return 0
        now = self.monotonic()
        for batch_id in batches:
            self._hinted_at[batch_id] = now
            if batch_id in self._due:
                self.metrics.box_webhook_polls.labels("coalesced").inc()
                continue
            self._due[batch_id] = now
            if batch_id not in self._runners:
                self._runners[batch_id] = asyncio.create_task(
                    self._run(batch_id), name=f"hint-{batch_id}"
                )
        self._trim()
        return len(batches)

    async def _run(self, batch_id: str) -> None:
        """Poll `batch_id` while hints ask for it, at most once per `min_gap_s`."""
        try:
            while batch_id in self._due:
                next_s = self._last_start.get(batch_id, float("-inf")) + self.min_gap_s
                wait_s = max(GATHER_S, next_s - self.monotonic())
                if wait_s > 0:
                    await asyncio.sleep(wait_s)
                since = self._due.pop(batch_id)
                self._last_start[batch_id] = self.monotonic()
                try:
                    await self.poller.poll_batch(batch_id, found_by=FOUND_BY_HINT, since=since)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # the periodic poll still comes: only a lost hint
                    self.metrics.box_webhook_polls.labels("failed").inc()
                    log.warning("hinted_poll_failed", batch_id=batch_id, error=str(exc))
                else:
                    self.metrics.box_webhook_polls.labels("polled").inc()
        finally:
            self._runners.pop(batch_id, None)

    def _trim(self) -> None:
        """Keep the per-batch memories bounded (entries older than the windows are useless)."""
        if len(self._last_start) + len(self._hinted_at) <= MAX_TRACKED_BATCHES:
            return
        cutoff = self.monotonic() - max(self.min_gap_s, MISS_GRACE_S)
        for memory in (self._last_start, self._hinted_at):
            for batch_id in [b for b, t in memory.items() if t < cutoff]:
                del memory[batch_id]

    async def close(self) -> None:
        """Cancel the polls not yet made (nothing half-done is committed)."""
        tasks = list(self._runners.values())
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    # -- health -----------------------------------------------------------------------------

    def _note_poll_found(self, batch_id: str, changes: int) -> None:
        """A periodic poll found `changes` job changes in `batch_id`: unless a hint asked about
        that batch just before, the notifications missed them."""
        hinted_at = self._hinted_at.get(batch_id)
        now = self.monotonic()
        if hinted_at is not None and now - hinted_at <= MISS_GRACE_S:
            return
        if self._last_verified is None:
            return  # no notification yet: polling alone, nothing was missed by webhooks
        if self.healthy():
            log.warning("box_webhooks_missed_changes", batch_id=batch_id, changes=changes)
        self._last_miss = now

    def healthy(self) -> bool:
        now = self.monotonic()
        healthy = (
            self._last_verified is not None
            and now - self._last_verified <= self.healthy_within_s
            and (self._last_miss is None or now - self._last_miss > self.healthy_within_s)
        )
        self.metrics.box_webhooks_healthy.set(1 if healthy else 0)
        return healthy
