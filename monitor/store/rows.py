"""Rows as every backend stores them: a snapshot row is JobState's fields in order (its tuples of
texts as JSON arrays), an outbox entry is read from the same seven columns, and an error text is
kept to a bounded prefix. Only SQL differs between backends; these do not."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import fields
from hashlib import blake2b
from operator import attrgetter
from typing import Any

import orjson

from monitor.errors import StoreError
from monitor.model import Event, JobState, Observed
from monitor.store.base import (
    COPIED_TABLES,
    MAX_ERROR_CHARS,
    BatchSummary,
    Delivery,
    EventQuery,
    NotifierActivity,
    OutboxEntry,
    OutboxState,
    Silence,
    TableChunk,
)

# Column order is JobState's field order, so a row is `job_from_row(row)`. A field added to
# JobState without a migration fails loudly at the first commit (no such column).
JOB_COLUMNS = tuple(f.name for f in fields(JobState))
# What a write gives each row: JobState's fields, then the fingerprint of what it observed
# (schema v12), which a sweep compares listing entries with (`fingerprint`).
ROW_COLUMNS = (*JOB_COLUMNS, "fingerprint")
JSON_LIST_COLUMNS = frozenset({"errors", "warnings"})  # tuples of texts, stored as JSON arrays
# The columns of an `Observed`, in its order.
OBSERVED_COLUMNS = (
    "status", "batch_id", "template_file_id", "output_type", "output_file_id", "errors", "warnings"
)
NO_TEXTS = "[]"  # an empty tuple of texts, as stored


def texts_json(texts: Sequence[str]) -> str:
    """Texts (errors, warnings) as their column holds them."""
    return orjson.dumps(list(texts)).decode() if texts else NO_TEXTS


def job_from_row(row: Any) -> JobState:
    values: list[Any] = [
        tuple(orjson.loads(v)) if c in JSON_LIST_COLUMNS else v
        for c, v in zip(JOB_COLUMNS, row, strict=True)
    ]
    return JobState(*values)


_JOB_FIELDS = attrgetter(*JOB_COLUMNS)
_TEXT_FIELDS = tuple(i for i, c in enumerate(JOB_COLUMNS) if c in JSON_LIST_COLUMNS)


def job_to_row(job: JobState) -> tuple[Any, ...]:
    """The row `ROW_COLUMNS` name: the job's fields, texts as JSON, and its fingerprint."""
    row = list(_JOB_FIELDS(job))
    for i in _TEXT_FIELDS:
        row[i] = texts_json(row[i])
    row.append(fingerprint(job.id, observed_of(job)))
    return tuple(row)


def observed_of(job: JobState) -> Observed:
    """What `job`'s row holds of its last observation (`SnapshotReader.load_observed`)."""
    return (
        job.status, job.batch_id, job.template_file_id, job.output_type, job.output_file_id,
        texts_json(job.errors), texts_json(job.warnings),
    )


def fingerprint(job_id: str, observed: Observed) -> int:
    """A job's id and what it observed, hashed to a signed 64-bit integer (a column both
    backends hold as it is). A sweep compares each listing entry's with the ones stored: an
    equal one is an unchanged job, known without reading its row. The JSON of the pair is
    unambiguous (Box's text cannot forge a separator) and BLAKE2b makes a collision between
    two observations of a job a 2**-64 chance that nobody can steer."""
    digest = blake2b(orjson.dumps((job_id, observed)), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


def fingerprints_of(rows: Iterable[Sequence[Any]]) -> list[tuple[int, str]]:
    """(fingerprint, id) of each (id, *`OBSERVED_COLUMNS`) row: what a migration that adds the
    fingerprints writes."""
    return [(fingerprint(row[0], tuple(row[1:])), row[0]) for row in rows]


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


#: The status page's batch summaries read these per (batch, status); `batch_summaries` folds
#: them (the SQL differs only in placeholders).
BATCH_SUMMARY_SELECT = (
    "SELECT batch_id, status, COUNT(*), MIN(template_file_id), MIN(output_type), "
    "MIN(first_seen_at), MAX(changed_at), MIN(created_at) FROM jobs"
)
BATCH_SUMMARY_GROUP = "GROUP BY batch_id, status"
FAILED_STATUSES = ("failed", "completed_with_error")


def batch_summaries(rows: Any) -> dict[str, BatchSummary]:
    """Fold (batch_id, status, count, template, output type, first seen, changed, created)
    rows into one summary per batch."""
    parts: dict[str, list[Any]] = {}
    for row in rows:
        parts.setdefault(row[0], []).append(row)
    summaries: dict[str, BatchSummary] = {}
    for batch_id, group in parts.items():
        created = [r[7] for r in group if r[7] is not None]
        summaries[batch_id] = BatchSummary(
            batch_id=batch_id,
            counts={r[1]: r[2] for r in group},
            template_file_id=min(r[3] for r in group),
            output_type=min(r[4] for r in group),
            first_seen_at=min(r[5] for r in group),
            changed_at=max(r[6] for r in group),
            created_at=min(created) if created else None,
        )
    return summaries


def notifier_activity(
    delivered: Any, errors: Any
) -> dict[str, NotifierActivity]:
    """From (notifier, last delivered at) and (notifier, last error, at) rows."""
    last_delivered = {name: at for name, at in delivered}
    last_error = {name: (error, at) for name, error, at in errors}
    return {
        name: NotifierActivity(
            name,
            last_delivered_at=last_delivered.get(name),
            last_error=last_error.get(name, (None, None))[0],
            last_error_at=last_error.get(name, (None, None))[1],
        )
        for name in sorted(last_delivered.keys() | last_error.keys())
    }


def copy_target(chunk: TableChunk) -> tuple[str, str]:
    """The table and the column list a chunk of `load_tables` goes into, both checked: a table
    `COPIED_TABLES` names, columns that are plain names (they come from the source's schema
    and are spliced into SQL)."""
    if chunk.table not in COPIED_TABLES:
        raise StoreError(f"load_tables: {chunk.table!r} is not a table a store copies")
    bad = [c for c in chunk.columns if not (c.isidentifier() and c.isascii())]
    if bad or not chunk.columns:
        raise StoreError(f"load_tables: {chunk.table} has no plain column names: {bad!r}")
    return chunk.table, ", ".join(chunk.columns)


def job_order_sql(event_job_id: str, notifier_param: str) -> tuple[str, str]:
    """The SQL of a claim in job order, given the backend's spelling of an event's job id (an
    expression over `payload`, the one its index `events_job_seq` is built on) and of the
    notifier parameter: the condition that holds a row while an earlier event of its job is
    still owed to the same notifier (pending, in retry or in flight; a dead one holds
    nothing), and `next_due_at` over the rows that condition lets through."""
    # Both built from the backend's constants only: no value from outside reaches the text.
    job_head = (
        " AND NOT EXISTS (SELECT 1 FROM events p JOIN outbox q ON q.event_id = p.id "  # noqa: S608
        f"AND q.notifier = o.notifier WHERE {event_job_id.replace('payload', 'p.payload')} = "
        f"{event_job_id.replace('payload', 'e.payload')} AND p.seq < e.seq "
        "AND q.state IN ('pending', 'claimed'))"
    )
    next_due = (
        "SELECT MIN(CASE o.state WHEN 'pending' THEN o.next_attempt_at ELSE o.claimed_until END) "  # noqa: S608
        "FROM outbox o JOIN events e ON e.id = o.event_id "
        f"WHERE o.notifier = {notifier_param} AND o.state IN ('pending', 'claimed'){job_head}"
    )
    return job_head, next_due


SILENCE_COLUMNS = ("id", "match", "starts_at", "ends_at", "comment", "created_by", "created_at")


def silence_to_row(silence: Silence) -> tuple[Any, ...]:
    match = {key: list(values) for key, values in silence.match.items()}
    return (
        silence.id,
        orjson.dumps(match, option=orjson.OPT_SORT_KEYS).decode(),
        silence.starts_at,
        silence.ends_at,
        silence.comment,
        silence.created_by,
        silence.created_at,
    )


def silence_from_row(row: Any) -> Silence:
    silence_id, match, starts_at, ends_at, comment, created_by, created_at = row
    return Silence(
        id=silence_id,
        match={key: tuple(values) for key, values in orjson.loads(match).items()},
        starts_at=starts_at,
        ends_at=ends_at,
        comment=comment,
        created_by=created_by,
        created_at=created_at,
    )


#: A delivery row: (event id, notifier, state, attempts, updated_at, last_error, silence_id).
DELIVERY_COLUMNS = "event_id, notifier, state, attempts, updated_at, last_error, silence_id"


def deliveries_by_event(rows: Any) -> dict[str, list[Delivery]]:
    """Delivery rows grouped by event id, each event's in notifier order."""
    found: dict[str, list[Delivery]] = {}
    for event_id, notifier, state, attempts, updated_at, last_error, silence_id in rows:
        outcome = "silenced" if silence_id is not None else state
        found.setdefault(event_id, []).append(
            Delivery(notifier, outcome, attempts, updated_at, last_error, silence_id)
        )
    for deliveries in found.values():
        deliveries.sort(key=lambda d: d.notifier)
    return found


def event_filters(
    query: EventQuery, param: Callable[[int], str], json_text: Callable[[str], str]
) -> tuple[str, list[Any]]:
    """The WHERE clause of `list_events` over the events table, and its arguments. `param(n)`
    is the dialect's n-th placeholder; `json_text(path)` reads a dotted path of the payload as
    text (job ids and statuses live only there)."""
    terms: list[str] = []
    args: list[Any] = []
    for term, value in (
        ("created_at >=", query.since),
        ("batch_id =", query.batch_id),
        ("type =", query.type),
        (json_text("job.id") + " =", query.job_id),
        (json_text("to_status") + " =", query.status),
        ("seq <", query.before_seq),
    ):
        if value is not None:
            args.append(value)
            terms.append(f"{term} {param(len(args))}")
    return " AND ".join(terms) or "1 = 1", args
