"""A listing entry as the snapshot knows it, and which entries of a sweep need no reading.

A sweep reads every job of the account, and almost all of them are as stored. Each entry is
reduced to its fingerprint (`rows.fingerprint` of its id and what it observed, the same that
every write stores with a row), and `ListingMatch` holds the stored fingerprints, read once at the
sweep's start: an entry whose fingerprint is among them is an unchanged job, marked seen there
and never turned into a JobState or compared with its row. The rest (new jobs, changed jobs,
rows without a fingerprint, a repeat of an id with another status) go the slow way: their rows
are read and the pure diff decides. At the end the marks say which stored jobs the listing did
not show as they were, the only ones that may be unseen."""

from __future__ import annotations

from collections.abc import Sequence
from hashlib import blake2b

import orjson

from monitor.box.models import ListedJob
from monitor.model import JobState, Observed
from monitor.store.base import JobRow, StoredFingerprints
from monitor.store.rows import NO_TEXTS, fingerprint, texts_json


def listed_job_state(job: ListedJob) -> JobState:
    output_file = job.get("output_file")
    failures = job.get("failures")
    return JobState(  # positional: a baseline builds one per job of the account
        job["id"],
        job["batch_id"],
        job["status"],
        job["template_file_id"],
        job["output_type"],
        output_file["id"] if output_file is not None else None,
        job.get("created_at"),
        job["created_by_id"],
        errors=tuple(failures["errors"]) if failures else (),
        warnings=tuple(failures["warnings"]) if failures else (),
        template_file_version_id=job.get("template_file_version_id"),
    )


def listed_observed(job: ListedJob) -> Observed:
    """`observed_of(listed_job_state(job))`, read on the raw entry (no JobState built)."""
    output_file = job.get("output_file")
    failures = job.get("failures")
    return (
        job["status"],
        job["batch_id"],
        job["template_file_id"],
        job["output_type"],
        output_file["id"] if output_file is not None else None,
        texts_json(failures["errors"]) if failures else NO_TEXTS,
        texts_json(failures["warnings"]) if failures else NO_TEXTS,
    )


def listed_fingerprint(job: ListedJob) -> int:
    """The fingerprint the row of `job` holds when it stores what this entry shows."""
    return listed_fingerprints([job])[0]


def listed_fingerprints(jobs: Sequence[ListedJob]) -> list[int]:
    """`fingerprint(job["id"], listed_observed(job))` of each job, with the hash's names bound
    once (a sweep computes one for every job of the account)."""
    dumps, hashed, as_int = orjson.dumps, blake2b, int.from_bytes
    return [
        as_int(hashed(dumps((j["id"], listed_observed(j))), digest_size=8).digest(), "big",
               signed=True)
        for j in jobs
    ]


def listed_row(job: ListedJob, seq: int, seen_at: float) -> JobRow:
    """`job_to_row(listed_job_state(job).booked(seq, seen_at, seen_at))`, without the two
    JobStates: the row a first baseline writes for each job of the account."""
    observed = listed_observed(job)
    status, batch_id, template_file_id, output_type, output_file_id, errors, warnings = observed
    return (
        job["id"], batch_id, status, template_file_id, output_type, output_file_id,
        job.get("created_at"), job["created_by_id"], seq, seen_at, seen_at, errors, warnings,
        job.get("template_file_version_id"), fingerprint(job["id"], observed),
    )


class ListingMatch:
    """The stored fingerprints of one sweep, each marked once the listing shows its job as
    stored. Memory: about 75 bytes a stored job (a million: ~75 MB), no job id kept."""

    def __init__(self, stored: StoredFingerprints) -> None:
        self._marks: dict[int, bool] = dict.fromkeys(stored.fingerprints, False)
        self.without = stored.without  # stored jobs without a fingerprint: never matched
        self.empty = stored.empty  # nothing stored: every entry is a new job at seq 1
        # Jobs listed with another status than their row's: id -> their row's fingerprint.
        self._contested: dict[str, int] = {}

    def unmatched(self, entries: Sequence[ListedJob]) -> list[ListedJob]:
        """The entries that are not stored jobs shown as stored; the others are marked seen
        (a repeat of one already marked needs nothing more)."""
        fingerprints = listed_fingerprints(entries)
        # Set operations, not a loop over the page: a steady sweep's every entry is as stored.
        stored = set(fingerprints) & self._marks.keys()
        self._marks.update(dict.fromkeys(stored, True))
        if len(stored) == len(entries):
            return []
        return [e for e, fp in zip(entries, fingerprints, strict=True) if fp not in stored]

    def contest(self, job_id: str, stored: Observed) -> None:
        """`job_id` was listed with another status than its row (`stored`) holds: if the
        listing also shows it as stored, before or after, it listed two statuses."""
        self._contested[job_id] = fingerprint(job_id, stored)

    def conflicts(self) -> set[str]:
        """Ids listed both as stored and with another status."""
        return {job_id for job_id, fp in self._contested.items() if self._marks.get(fp)}

    def unseen_among(self) -> list[int] | None:
        """The stored fingerprints the listing never showed: the unseen jobs are among their
        rows and those without one. None when there is no such row: nothing is unseen."""
        left = [fp for fp, seen in self._marks.items() if not seen]
        return left if left or self.without else None
