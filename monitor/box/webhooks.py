"""Box V2 webhook notifications: is this one from Box, and what does it hint at.

Box signs each notification with the app's two signature keys: `BOX-SIGNATURE-PRIMARY` and
`BOX-SIGNATURE-SECONDARY` are base64(HMAC-SHA256(key, body bytes + BOX-DELIVERY-TIMESTAMP)),
`BOX-SIGNATURE-VERSION: 1`, `BOX-SIGNATURE-ALGORITHM: HmacSHA256`. A notification is accepted when
either header matches its key, its timestamp is at most 10 minutes old, and its
`BOX-DELIVERY-ID` was not accepted before (a replay). The same check as the official SDK's
`WebhooksManager.validate_message` (box_sdk_gen), which a test compares this with; written here
because the SDK is a large synchronous dependency whose check answers only yes or no (no
replay memory, no reason to count).

A notification is a hint, never an event: `Notification` keeps only the ids it may point at
(the template file, a job or batch if the payload carries one), each checked as a Box id."""

from __future__ import annotations

import base64
import enum
import hashlib
import hmac
import re
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson
from pydantic import SecretStr

#: Box refuses nothing older; the SDK's `max_age` default.
MAX_AGE_S = 600.0
#: A delivery timestamp this far ahead of our clock is still accepted (the SDK accepts none:
#: a host whose clock runs a few seconds behind Box's would refuse every notification).
MAX_SKEW_S = 60.0
#: Delivery ids remembered against replays: enough for the whole `MAX_AGE_S` window at 100
#: notifications a second; past it, the oldest go (a replay of them is refused by age anyway
#: once they are older than the window, and any replay is only a hint to poll).
MAX_REMEMBERED_DELIVERIES = 60_000
#: The longest body read (a Doc Gen notification is about a kilobyte).
MAX_NOTIFICATION_BYTES = 256 * 1024
_BOX_ID = re.compile(r"[0-9]{1,20}")
_MAX_TIMESTAMP_CHARS = 64

DOCGEN_TRIGGERS = (
    "DOCGEN_DOCUMENT_GENERATION_STARTED",
    "DOCGEN_DOCUMENT_GENERATION_SUCCEEDED",
    "DOCGEN_DOCUMENT_GENERATION_FAILED",
)


class Verdict(enum.Enum):
    """Why a notification was accepted or refused (the `outcome` label of its counter)."""

    ACCEPTED = "accepted"
    BAD_SIGNATURE = "bad_signature"  # no header matches a key, or headers missing or unknown
    STALE = "stale"  # timestamp older than MAX_AGE_S, too far ahead, or unreadable
    REPLAYED = "replayed"  # this delivery id was accepted before


@dataclass(frozen=True, slots=True)
class SignatureKeys:
    primary: SecretStr
    secondary: SecretStr | None = None


def signature(key: str, body: bytes, timestamp: str) -> str:
    """Box's signature of one delivery under one key."""
    mac = hmac.new(key.encode(), body + timestamp.encode(), hashlib.sha256)
    return base64.b64encode(mac.digest()).decode()


def _escaped(body: bytes) -> bytes | None:
    """The body with non-ASCII and control characters as JSON `\\u` escapes: Box may sign that
    form of a body it sends raw (the SDK tries both). None when it is the same bytes."""
    try:
        text = body.decode()
    except UnicodeDecodeError:
        return None
    text = re.sub(r"\\(?!/)", r"\\\\", text)
    escaped = re.sub(r"[^\x20-\x7e]", _escape_char, text)
    return None if escaped == text and escaped.encode() == body else escaped.encode()


def _escape_char(match: re.Match[str]) -> str:
    char = match.group(0)
    short = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}.get(char)
    if short is not None:
        return short
    code = ord(char)
    if code <= 0xFFFF:
        return f"\\u{code:04x}"
    code -= 0x10000
    return f"\\u{0xD800 + (code >> 10):04x}\\u{0xDC00 + (code & 0x3FF):04x}"


def _matches(key: SecretStr | None, given: str | None, bodies: list[bytes], ts: str) -> bool:
    if key is None or not given or not key.get_secret_value():
        return False
    secret = key.get_secret_value()
    return any(
        hmac.compare_digest(signature(secret, body, ts).encode(), given.encode())
        for body in bodies
    )


def _age_ok(timestamp: str, now_s: float) -> bool:
    try:
        at_s = datetime.fromisoformat(timestamp.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return False
    return now_s - MAX_AGE_S <= at_s <= now_s + MAX_SKEW_S


def check_signature(
    body: bytes, headers: Mapping[str, str], keys: SignatureKeys, now_s: float
) -> Verdict:
    """Signature and age, without the replay memory (see `Verifier`). `headers` is looked up
    case-insensitively by the caller's mapping (aiohttp's is)."""
    timestamp = headers.get("box-delivery-timestamp")
    if (
        timestamp is None
        or headers.get("box-signature-version") != "1"
        or headers.get("box-signature-algorithm") != "HmacSHA256"
    ):
        return Verdict.BAD_SIGNATURE
    bodies = [body]
    escaped = _escaped(body)
    if escaped is not None:
        bodies.append(escaped)
    primary = headers.get("box-signature-primary")
    secondary = headers.get("box-signature-secondary")
    if not (
        _matches(keys.primary, primary, bodies, timestamp)
        or _matches(keys.secondary, secondary, bodies, timestamp)
    ):
        return Verdict.BAD_SIGNATURE
    return Verdict.ACCEPTED if _age_ok(timestamp, now_s) else Verdict.STALE


class Verifier:
    """`check_signature` plus a bounded memory of accepted delivery ids (replays refused)."""

    def __init__(
        self,
        keys: SignatureKeys,
        *,
        clock: Callable[[], float] = time.time,
        max_remembered: int = MAX_REMEMBERED_DELIVERIES,
    ) -> None:
        """`clock` is wall time: it is compared with Box's delivery timestamps."""
        self.keys = keys
        self.clock = clock
        self.max_remembered = max_remembered
        self._seen: OrderedDict[str, float] = OrderedDict()  # delivery id -> accepted at

    def verify(self, body: bytes, headers: Mapping[str, str]) -> Verdict:
        now_s = self.clock()
        verdict = check_signature(body, headers, self.keys, now_s)
        if verdict is not Verdict.ACCEPTED:
            return verdict
        delivery_id = headers.get("box-delivery-id", "")[:128]
        self._forget_older_than(now_s - MAX_AGE_S - MAX_SKEW_S)
        if delivery_id:  # without an id a replay cannot be told apart; it is only a hint
            if delivery_id in self._seen:
                return Verdict.REPLAYED
            self._seen[delivery_id] = now_s
            while len(self._seen) > self.max_remembered:
                self._seen.popitem(last=False)
        return Verdict.ACCEPTED

    def _forget_older_than(self, cutoff_s: float) -> None:
        while self._seen:
            oldest = next(iter(self._seen.values()))
            if oldest >= cutoff_s:
                return
            self._seen.popitem(last=False)


@dataclass(frozen=True, slots=True)
class Notification:
    """What a verified notification may point at. Every id is a Box id (digits) or absent;
    `trigger` is one of `DOCGEN_TRIGGERS` or `other`, `created_at_s` Box's wall-clock time."""

    trigger: str
    template_file_id: str | None
    job_ids: tuple[str, ...] = ()
    batch_ids: tuple[str, ...] = ()
    created_at_s: float | None = None


def parse_notification(body: bytes) -> Notification:
    """Read a verified body leniently: Box documents no Doc Gen payload, so a field that is
    missing or not a Box id is left out, never an error. The notification's `source` is the
    template file; a `docgen_job` or `docgen_batch` object (as `source`, or under
    `additional_info`) names a job or batch."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        data = None
    if not isinstance(data, dict):
        return Notification("other", None)
    trigger = data.get("trigger")
    trigger = trigger if isinstance(trigger, str) and trigger in DOCGEN_TRIGGERS else "other"
    source = _object(data.get("source"))
    info = _object(data.get("additional_info"))
    template = _box_id(source) if source.get("type", "file") == "file" else None
    jobs = [_box_id(source)] if source.get("type") == "docgen_job" else []
    jobs.append(_box_id(info.get("docgen_job")))
    batches = [_box_id(source)] if source.get("type") == "docgen_batch" else []
    batches.append(_box_id(info.get("docgen_batch")))
    return Notification(
        trigger,
        template,
        tuple(i for i in jobs if i is not None),
        tuple(i for i in batches if i is not None),
        _timestamp_s(data.get("created_at")),
    )


def _object(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _box_id(value: Any) -> str | None:
    """`value["id"]` when it is a Box id, else None (Box's text is not trusted)."""
    if not isinstance(value, dict):
        return None
    raw = value.get("id")
    return raw if isinstance(raw, str) and _BOX_ID.fullmatch(raw) else None


def _timestamp_s(value: Any) -> float | None:
    if not isinstance(value, str) or len(value) > _MAX_TIMESTAMP_CHARS:
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None
