"""Stored things as operators read them, the same in the CLI's JSON and the HTTP API: silences
and the event history, with times as ISO 8601 UTC. Also the `since` filter both accept."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from monitor.config import parse_duration_s
from monitor.store.base import EventRecord, Silence


def iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def silence_state(silence: Silence, now: float) -> str:
    if silence.active_at(now):
        return "active"
    return "pending" if now < silence.starts_at else "expired"


def silence_json(silence: Silence, now: float) -> dict[str, Any]:
    return {
        "id": silence.id,
        "state": silence_state(silence, now),
        "match": {key: list(values) for key, values in silence.match.items()},
        "starts_at": iso(silence.starts_at),
        "ends_at": iso(silence.ends_at),
        "comment": silence.comment,
        "created_by": silence.created_by,
        "created_at": iso(silence.created_at),
    }


def match_text(match: dict[str, list[str]] | Any) -> str:
    """`template_id=123 to_status=failed,completed_with_error`."""
    return " ".join(f"{key}={','.join(values)}" for key, values in match.items())


def event_json(record: EventRecord) -> dict[str, Any]:
    event = record.event
    return {
        "seq": record.seq,
        "id": event.id,
        "type": event.type.value,
        "recorded_at": iso(record.recorded_at),
        "detected_at": iso(event.detected_at.timestamp()),
        "batch_id": event.batch_id,
        "job_id": event.job.id if event.job else None,
        "template_id": event.template_file_id,
        "from_status": event.from_status,
        "to_status": event.to_status,
        "deliveries": [
            {
                "notifier": d.notifier,
                "outcome": d.outcome,
                "attempts": d.attempts,
                "at": iso(d.updated_at),
                "last_error": d.last_error,
                "silence_id": d.silence_id,
            }
            for d in record.deliveries
        ],
    }


def parse_since(text: str, now: float) -> float:
    """`1h` (that long ago) or an ISO 8601 time (`2026-12-07T03:00:00Z`) -> unix seconds.
    Raises ValueError saying what is expected."""
    try:
        return now - parse_duration_s(text)
    except ValueError:
        pass
    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(
            "since: expected a duration (1h, 1h30m) or an ISO 8601 time (2026-12-07T03:00:00Z)"
        ) from None
    return (when if when.tzinfo else when.replace(tzinfo=UTC)).timestamp()
