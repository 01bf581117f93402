"""Box notifications as hints, against the simulator: a hint polls only the active batches of
its template, and "healthy" (the stretch of the active interval) means a verified notification
within `healthy_within_s` and no status change that a periodic poll found unannounced."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime

from pydantic import SecretStr

from monitor.box.webhooks import Notification, SignatureKeys, Verdict, Verifier, signature
from monitor.hints import MISS_GRACE_S, BoxHints, ingest
from monitor.poller import Poller
from tests.harness import wait_until
from tests.test_poller import Rig, rig  # noqa: F401 - the fixture

KEY = "hint-key"
HEALTHY_WITHIN_S = 300.0


def make_hints(r: Rig) -> tuple[BoxHints, Poller]:
    poller = r.make_poller()
    hints = BoxHints(poller, Verifier(SignatureKeys(SecretStr(KEY))), r.metrics,
                     healthy_within_s=HEALTHY_WITHIN_S, monotonic=r.clock)
    return hints, poller


def delivery(template: str, delivery_id: str) -> tuple[bytes, dict[str, str]]:
    body = json.dumps({"trigger": "DOCGEN_DOCUMENT_GENERATION_STARTED",
                       "source": {"type": "file", "id": template}}).encode()
    timestamp = datetime.now(UTC).isoformat()
    return body, {"box-delivery-id": delivery_id, "box-delivery-timestamp": timestamp,
                  "box-signature-primary": signature(KEY, body, timestamp),
                  "box-signature-version": "1", "box-signature-algorithm": "HmacSHA256"}


async def test_a_hint_polls_only_the_batches_of_its_template(rig: Rig) -> None:  # noqa: F811
    hints, poller = make_hints(rig)
    await poller.start()
    await poller.sweep()
    mine = await rig.control.start_batch(2, template_file_id="111")
    other = await rig.control.start_batch(2, template_file_id="222")
    for batch in (mine, other):
        poller.watch(batch["batch_id"])
        await poller.poll_batch(batch["batch_id"])
    polls = rig.sim.state.stats.count("batch_jobs")
    assert hints.hint(Notification("DOCGEN_DOCUMENT_GENERATION_STARTED", "111")) == 1
    assert hints.hint(Notification("other", "333")) == 0  # no active batch of that template

    async def polled() -> bool:
        return rig.metrics.box_webhook_polls.labels("polled")._value.get() == 1

    await wait_until(polled, 5, "the hinted poll")
    assert rig.sim.state.stats.count("batch_jobs") == polls + 1
    assert rig.metrics.box_webhook_polls.labels("unrelated")._value.get() == 1
    await hints.close()


async def test_healthy_needs_a_recent_verified_notification(rig: Rig) -> None:  # noqa: F811
    hints, _ = make_hints(rig)
    assert not hints.healthy()
    body, headers = delivery("999", "d-1")
    assert hints.ingest(body, {**headers, "box-signature-primary": "forged"}) \
        is Verdict.BAD_SIGNATURE
    assert not hints.healthy()  # a refused notification proves nothing
    assert hints.ingest(body, headers) is Verdict.ACCEPTED
    assert hints.healthy()
    rig.clock.now += HEALTHY_WITHIN_S + 1
    assert not hints.healthy()
    assert rig.metrics.box_webhooks_healthy._value.get() == 0
    await hints.close()


async def test_a_change_polling_found_unannounced_suspends_health(rig: Rig) -> None:  # noqa: F811
    hints, poller = make_hints(rig)
    await poller.start()
    await poller.sweep()
    batch = await rig.control.start_batch(2, template_file_id="111")
    poller.watch(batch["batch_id"])
    await poller.poll_batch(batch["batch_id"])  # discovered
    body, headers = delivery("999", "d-1")
    assert hints.ingest(body, headers) is Verdict.ACCEPTED
    assert hints.healthy()  # new jobs are no status change: discovering them is no miss

    # Announced just before: a periodic poll that gets there first is no miss.
    hints._hinted_at[batch["batch_id"]] = rig.clock.now
    await rig.control.call("PUT", f"/_sim/jobs/{batch['job_ids'][0]}", {"status": "submitted"})
    await poller.poll_batch(batch["batch_id"])
    assert hints.healthy()

    rig.clock.now += MISS_GRACE_S + 1
    await rig.control.call("PUT", f"/_sim/jobs/{batch['job_ids'][1]}", {"status": "submitted"})
    await poller.poll_batch(batch["batch_id"])
    assert not hints.healthy()
    body, headers = delivery("999", "d-2")
    assert hints.ingest(body, headers) is Verdict.ACCEPTED
    assert not hints.healthy()  # for the whole window after the miss
    rig.clock.now += HEALTHY_WITHIN_S + 1
    body, headers = delivery("999", "d-3")
    assert hints.ingest(body, headers) is Verdict.ACCEPTED
    assert hints.healthy()
    await asyncio.sleep(0)
    await hints.close()


async def test_a_notification_reaches_only_the_accounts_whose_keys_verify_it(
    rig: Rig,  # noqa: F811
) -> None:
    """Several accounts share the route: each gets only what its own keys verify, and a
    delivery is counted once however many accounts look at it."""
    mine, _ = make_hints(rig)
    theirs = BoxHints(rig.make_poller(), Verifier(SignatureKeys(SecretStr("other-app-key"))),
                      rig.metrics, healthy_within_s=HEALTHY_WITHIN_S, monotonic=rig.clock)
    body, headers = delivery("999", "d-1")
    assert ingest([theirs, mine], body, headers, rig.metrics) is Verdict.ACCEPTED
    assert mine.healthy() and not theirs.healthy()
    accepted = rig.metrics.box_webhooks.labels("docgen_document_generation_started", "accepted")
    assert accepted._value.get() == 1
    forged = {**headers, "box-delivery-id": "d-2", "box-signature-primary": "forged"}
    assert ingest([theirs, mine], body, forged, rig.metrics) is Verdict.BAD_SIGNATURE
    assert rig.metrics.box_webhooks.labels("unknown", "bad_signature")._value.get() == 1
    await mine.close()
    await theirs.close()
