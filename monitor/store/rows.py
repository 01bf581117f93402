"""Rows as every backend stores them: a snapshot row is JobState's fields in order (its tuples of
texts as JSON arrays), an outbox entry is read from the same seven columns, and an error text is
kept to a bounded prefix. Only SQL differs between backends; these do not."""

from __future__ import annotations

from dataclasses import fields
from typing import Any

import orjson

from monitor.model import Event, JobState
from monitor.store.base import MAX_ERROR_CHARS, OutboxEntry, OutboxState

# Column order is JobState's field order, so a row is `job_from_row(row)`. A field added to
# JobState without a migration fails loudly at the first commit (no such column).
JOB_COLUMNS = tuple(f.name for f in fields(JobState))
JSON_LIST_COLUMNS = frozenset({"errors", "warnings"})  # tuples of texts, stored as JSON arrays


def job_from_row(row: Any) -> JobState:
    values: list[Any] = [
        tuple(orjson.loads(v)) if c in JSON_LIST_COLUMNS else v
        for c, v in zip(JOB_COLUMNS, row, strict=True)
    ]
    return JobState(*values)


def job_to_row(job: JobState) -> tuple[Any, ...]:
    return tuple(
        orjson.dumps(list(v)).decode() if c in JSON_LIST_COLUMNS else v
        for c in JOB_COLUMNS
        for v in (getattr(job, c),)
    )


def entry_from_row(row: Any, state: OutboxState | None = None) -> OutboxEntry:
    """An entry from (payload, notifier, state, attempts, next_attempt_at, last_error,
    first_failed_at); `state` overrides the row's (a claim returns rows it just claimed)."""
    payload, notifier, row_state, attempts, next_attempt_at, last_error, first_failed_at = row
    return OutboxEntry(
        event=Event.model_validate_json(payload),
        notifier=notifier,
        state=state if state is not None else OutboxState(row_state),
        attempts=attempts,
        next_attempt_at=next_attempt_at,
        last_error=last_error,
        first_failed_at=first_failed_at,
    )


def truncate_error(error: str) -> str:
    return error if len(error) <= MAX_ERROR_CHARS else error[: MAX_ERROR_CHARS - 1] + "…"
