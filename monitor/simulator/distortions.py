"""What the control API does to `GET /2.0/docgen_jobs` beyond Box's plain behaviour: the ways a
real listing lets a client down while every answer is still a 200.

- omit: given jobs (or a seeded fraction of all jobs) are absent from the listing, yet readable
  by `GET /2.0/docgen_jobs/{id}` and in their batch's listing;
- shift: during one pass, after a given page, jobs are inserted at the head or the head is
  hidden, and the rest of the pass pages by offset, so a page boundary repeats or skips entries;
- duplicate: a job is listed a second time, with another status, at the head of the first page;
- malformed: a job's entry is served broken (no `status`, `batch: null`, an integer `id`, or a
  lone `\\ud800` escape that no strict JSON parser accepts).

Batch listings and reads by id are never distorted.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

# Knuth's multiplicative hash: a job's place in [0, 1) for fractional omission, from its id and
# the simulator's seed, so the same jobs stay omitted on every listing.
_SPREAD = 2654435761
_SCALE = float(1 << 32)


def _box_ids(ids: list[str]) -> list[str]:
    for job_id in ids:
        if not (job_id.isdecimal() and job_id.isascii()):
            raise ValueError(f"not a Box job id: {job_id!r}")
    return ids


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid")


class OmitSpec(_Spec):
    """The body of POST /_sim/listing/omit. Adds to what is already omitted."""

    job_ids: list[str] = Field(default_factory=list)
    # Omit this fraction of every job (a stable, seeded choice); replaces an earlier fraction.
    fraction: float | None = Field(default=None, ge=0, le=1)

    _ids = field_validator("job_ids")(_box_ids)


class ShiftSpec(_Spec):
    """The body of POST /_sim/listing/shift."""

    after_page: int = Field(default=1, ge=1)
    # New jobs (one new batch of the caller's) created at the head: the next page repeats them.
    insert: int = Field(default=0, ge=0, le=100_000)
    # The newest entries hidden for the rest of the pass: the next page skips as many.
    hide: int = Field(default=0, ge=0, le=100_000)
    # How many passes the shift hits (a pass: first page to last page); null: every pass.
    passes: int | None = Field(default=1, ge=1)


class DuplicateSpec(_Spec):
    """The body of POST /_sim/listing/duplicate."""

    job_id: str
    # The copy's status; default: `submitted` if the job is terminal, else `completed`.
    status: str | None = Field(default=None, min_length=1)

    _id = field_validator("job_id")(lambda v: _box_ids([v])[0])


class Malformation(StrEnum):
    MISSING_STATUS = "missing_status"
    NULL_BATCH = "null_batch"
    INTEGER_ID = "integer_id"
    LONE_SURROGATE = "lone_surrogate"


class MalformedSpec(_Spec):
    """The body of POST /_sim/listing/malformed."""

    job_ids: list[str] = Field(min_length=1)
    kind: Malformation

    _ids = field_validator("job_ids")(_box_ids)


@dataclass(slots=True)
class Shift:
    id: str
    spec: ShiftSpec
    remaining: int | None
    fired: int = 0

    def public(self) -> dict[str, Any]:
        return {
            "shift_id": self.id,
            **self.spec.model_dump(),
            "remaining": self.remaining,
            "fired": self.fired,
        }


@dataclass(slots=True)
class Distortions:
    seed: int
    omitted: set[int] = field(default_factory=set)
    omit_fraction: float | None = None
    shifts: list[Shift] = field(default_factory=list)
    duplicates: dict[int, str | None] = field(default_factory=dict)
    malformed: dict[int, Malformation] = field(default_factory=dict)
    # Per listing scope: rows hidden by a shift until that pass ends.
    hidden_in_pass: dict[str, set[int]] = field(default_factory=dict)
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    def omit(self, spec: OmitSpec) -> None:
        self.omitted.update(int(i) for i in spec.job_ids)
        if spec.fraction is not None:
            self.omit_fraction = spec.fraction or None

    def is_omitted(self, job_id: int) -> bool:
        if job_id in self.omitted:
            return True
        fraction = self.omit_fraction
        if fraction is None:
            return False
        return ((job_id * _SPREAD + self.seed) % (1 << 32)) / _SCALE < fraction

    def add_shift(self, spec: ShiftSpec) -> Shift:
        shift = Shift(str(next(self._ids)), spec, spec.passes)
        self.shifts.append(shift)
        return shift

    def shift_for(self, page: int) -> Shift | None:
        """The shift that fires after serving page number `page` (1-based) of a pass, spent
        by one pass."""
        for shift in self.shifts:
            if shift.spec.after_page == page:
                shift.fired += 1
                if shift.remaining is not None:
                    shift.remaining -= 1
                    if shift.remaining == 0:
                        self.shifts.remove(shift)
                return shift
        return None

    def clear(self) -> None:
        self.omitted.clear()
        self.omit_fraction = None
        self.shifts.clear()
        self.duplicates.clear()
        self.malformed.clear()
        self.hidden_in_pass.clear()

    def public(self) -> dict[str, Any]:
        return {
            "omitted": sorted(str(i) for i in self.omitted),
            "omit_fraction": self.omit_fraction,
            "shifts": [s.public() for s in self.shifts],
            "duplicates": [
                {"job_id": str(i), "status": status} for i, status in self.duplicates.items()
            ],
            "malformed": [
                {"job_id": str(i), "kind": str(kind)} for i, kind in self.malformed.items()
            ],
        }
