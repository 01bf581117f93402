"""Box webhook signatures: our verifier agrees with the official SDK's own check
(`box_sdk_gen` `WebhooksManager.validate_message`) on every case where the SDK has an opinion,
and refuses bad, old, replayed and foreign-key deliveries; a rotation through the secondary key
is accepted. Payloads are read leniently and only Box ids come out of them."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone

import pytest
from box_sdk_gen.managers.webhooks import WebhooksManager
from pydantic import SecretStr

from monitor.box.webhooks import (
    MAX_AGE_S,
    Notification,
    SignatureKeys,
    Verdict,
    Verifier,
    check_signature,
    parse_notification,
    signature,
)

PRIMARY = "SamplePrimaryKey0123456789abcdef"
SECONDARY = "SampleSecondaryKeyfedcba98765432"
FOREIGN = "AnotherAppsKey000000000000000000"
NOW = datetime(2026, 12, 7, 4, 0, 0, tzinfo=UTC)
BODY = json.dumps({
    "type": "webhook_event", "id": "e-1", "trigger": "DOCGEN_DOCUMENT_GENERATION_SUCCEEDED",
    "source": {"type": "file", "id": "1300000000001", "name": "Offer letter ✓.docx"},
}, ensure_ascii=False).encode()
KEYS = SignatureKeys(SecretStr(PRIMARY), SecretStr(SECONDARY))


def headers(
    body: bytes = BODY,
    *,
    at: datetime = NOW,
    primary: str | None = PRIMARY,
    secondary: str | None = SECONDARY,
    delivery_id: str = "d-1",
) -> dict[str, str]:
    """What Box sends: each signature header signed with the key given (None: header absent)."""
    timestamp = at.isoformat()
    h = {
        "box-delivery-id": delivery_id,
        "box-delivery-timestamp": timestamp,
        "box-signature-version": "1",
        "box-signature-algorithm": "HmacSHA256",
    }
    if primary is not None:
        h["box-signature-primary"] = signature(primary, body, timestamp)
    if secondary is not None:
        h["box-signature-secondary"] = signature(secondary, body, timestamp)
    return h


def sdk_accepts(body: bytes, h: dict[str, str], primary: str, secondary: str | None) -> bool:
    return WebhooksManager.validate_message(body.decode(), h, primary, secondary_key=secondary)


def escaped_signature_headers() -> dict[str, str]:
    """Signed over the body with non-ASCII written as JSON escapes (the SDK accepts that form)."""
    h = headers()
    escaped = BODY.decode().encode("ascii", "backslashreplace").decode()
    h["box-signature-primary"] = signature(PRIMARY, escaped.encode(), h["box-delivery-timestamp"])
    return h


CASES: dict[str, tuple[dict[str, str], str, str | None]] = {
    "both keys good": (headers(), PRIMARY, SECONDARY),
    "primary only configured": (headers(), PRIMARY, None),
    "primary header absent, secondary good": (headers(primary=None), PRIMARY, SECONDARY),
    "rotation: primary header signed with the old key": (
        headers(primary=FOREIGN), PRIMARY, SECONDARY),
    "foreign keys": (headers(primary=FOREIGN, secondary=FOREIGN), PRIMARY, SECONDARY),
    "no signature headers": (headers(primary=None, secondary=None), PRIMARY, SECONDARY),
    "secondary good but not configured": (headers(primary=FOREIGN), PRIMARY, None),
    "11 minutes old": (headers(at=NOW - timedelta(minutes=11)), PRIMARY, SECONDARY),
    "9 minutes old": (headers(at=NOW - timedelta(minutes=9)), PRIMARY, SECONDARY),
    "an hour ahead": (headers(at=NOW + timedelta(hours=1)), PRIMARY, SECONDARY),
    "signature version 2": ({**headers(), "box-signature-version": "2"}, PRIMARY, SECONDARY),
    "other algorithm": ({**headers(), "box-signature-algorithm": "HmacSHA1"}, PRIMARY, None),
    "escaped body signed": (escaped_signature_headers(), PRIMARY, None),
    "offset timestamp": (
        headers(at=NOW.astimezone(timezone(timedelta(hours=-8)))), PRIMARY, None),
}


@pytest.fixture
def frozen_sdk_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    """The SDK reads the wall clock; it is set to the cases' `NOW` for it as for ours."""
    import box_sdk_gen.managers.webhooks as sdk_webhooks

    monkeypatch.setattr(sdk_webhooks, "get_epoch_time_in_seconds", lambda: int(NOW.timestamp()))


@pytest.mark.parametrize("case", sorted(CASES))
def test_the_verifier_agrees_with_the_official_sdk(frozen_sdk_clock: None, case: str) -> None:
    h, primary, secondary = CASES[case]
    keys = SignatureKeys(SecretStr(primary), SecretStr(secondary) if secondary else None)
    ours = check_signature(BODY, h, keys, NOW.timestamp()) is Verdict.ACCEPTED
    assert ours == sdk_accepts(BODY, h, primary, secondary), case


def test_the_table_holds_both_answers() -> None:
    """The agreement test means something only if the SDK accepts some cases and refuses some."""
    answers = {case: check_signature(BODY, h, SignatureKeys(SecretStr(p),
               SecretStr(s) if s else None), NOW.timestamp())
               for case, (h, p, s) in CASES.items()}
    assert answers["both keys good"] is Verdict.ACCEPTED
    assert answers["rotation: primary header signed with the old key"] is Verdict.ACCEPTED
    assert answers["escaped body signed"] is Verdict.ACCEPTED
    assert answers["foreign keys"] is Verdict.BAD_SIGNATURE
    assert answers["11 minutes old"] is Verdict.STALE
    assert answers["an hour ahead"] is Verdict.STALE


def verifier() -> Verifier:
    return Verifier(KEYS, clock=NOW.timestamp)


def test_a_tampered_body_is_refused() -> None:
    h = headers()
    assert verifier().verify(BODY.replace(b"SUCCEEDED", b"FAILED"), h) is Verdict.BAD_SIGNATURE


def test_a_foreign_key_is_refused() -> None:
    assert verifier().verify(BODY, headers(primary=FOREIGN, secondary=FOREIGN)) \
        is Verdict.BAD_SIGNATURE


def test_an_old_delivery_is_refused_even_when_well_signed() -> None:
    old = NOW - timedelta(seconds=MAX_AGE_S + 1)
    assert verifier().verify(BODY, headers(at=old)) is Verdict.STALE


def test_a_replayed_delivery_id_is_refused() -> None:
    v = verifier()
    assert v.verify(BODY, headers(delivery_id="d-7")) is Verdict.ACCEPTED
    assert v.verify(BODY, headers(delivery_id="d-7")) is Verdict.REPLAYED
    assert v.verify(BODY, headers(delivery_id="d-8")) is Verdict.ACCEPTED  # Box's retry: new id


def test_rotation_through_the_secondary_key_is_accepted() -> None:
    """Box signs with both keys; while one is rotated only the other one matches ours."""
    rotated = Verifier(SignatureKeys(SecretStr("brand-new-primary"), SecretStr(SECONDARY)),
                       clock=NOW.timestamp)
    assert rotated.verify(BODY, headers()) is Verdict.ACCEPTED
    only_primary = Verifier(SignatureKeys(SecretStr("brand-new-primary")), clock=NOW.timestamp)
    assert only_primary.verify(BODY, headers(delivery_id="d-2")) is Verdict.BAD_SIGNATURE


def test_the_replay_memory_is_bounded() -> None:
    v = Verifier(KEYS, clock=NOW.timestamp, max_remembered=3)
    for i in range(10):
        assert v.verify(BODY, headers(delivery_id=f"d-{i}")) is Verdict.ACCEPTED
    assert len(v._seen) == 3
    assert v.verify(BODY, headers(delivery_id="d-9")) is Verdict.REPLAYED


def test_the_replay_memory_forgets_what_age_refuses_anyway() -> None:
    now = [NOW.timestamp()]
    v = Verifier(KEYS, clock=lambda: now[0])
    assert v.verify(BODY, headers(delivery_id="old")) is Verdict.ACCEPTED
    now[0] += 2 * MAX_AGE_S
    fresh = datetime.fromtimestamp(now[0], UTC)
    assert v.verify(BODY, headers(at=fresh, delivery_id="new")) is Verdict.ACCEPTED
    assert list(v._seen) == ["new"]


@pytest.mark.parametrize(("body", "expected"), [
    (BODY, Notification("DOCGEN_DOCUMENT_GENERATION_SUCCEEDED", "1300000000001")),
    (b'{"trigger": "FILE.UPLOADED", "source": {"type": "file", "id": "55"}}',
     Notification("other", "55")),
    (b'{"trigger": "DOCGEN_DOCUMENT_GENERATION_FAILED", "source": {"id": "1 OR 1=1"}}',
     Notification("DOCGEN_DOCUMENT_GENERATION_FAILED", None)),
    (b'{"trigger": "DOCGEN_DOCUMENT_GENERATION_STARTED", "source": {"type": "file", "id": "7"},'
     b' "additional_info": {"docgen_job": {"id": "11"}, "docgen_batch": {"id": "22"}}}',
     Notification("DOCGEN_DOCUMENT_GENERATION_STARTED", "7", ("11",), ("22",))),
    (b'{"source": {"type": "docgen_batch", "id": "33"}}',
     Notification("other", None, (), ("33",))),
    (b"[1, 2]", Notification("other", None)),
    (b"not json", Notification("other", None)),
    (b'{"source": {"id": 12345}}', Notification("other", None)),
])
def test_a_payload_yields_only_box_ids(body: bytes, expected: Notification) -> None:
    assert parse_notification(body) == expected


def test_box_time_is_read_from_the_payload() -> None:
    n = parse_notification(b'{"created_at": "2026-12-07T04:00:00-08:00"}')
    assert n.created_at_s == datetime(2026, 12, 7, 12, 0, tzinfo=UTC).timestamp()
