"""When a job missing from a listing may be called gone. Pure: no I/O, no clock.

A listing is a weak witness: Box does not document its order, a listing can shift while it is
paged, and a cut or empty listing looks like a mass deletion. So a complete listing that misses
a job only makes it a *suspect*; the job is gone when Box answers 404 to
`GET /2.0/docgen_jobs/{id}`. Reads are bounded per sweep (`confirm_max`): the rest wait as
suspects, oldest first at the next sweep. A sweep that misses more than `MASS_FRACTION` of the
snapshot is refused whole: nobody deletes a fifth of an account between two sweeps, but a
listing that went wrong does it every time."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

#: A sweep that misses more than this share of the snapshot is refused, not confirmed.
MASS_FRACTION = 0.2
#: ... when it misses at least this many jobs (three of a ten-job account is no flood).
MASS_MIN_JOBS = 10


@dataclass(frozen=True, slots=True)
class VanishPlan:
    """What to do with the jobs a complete listing missed."""

    confirm: tuple[str, ...] = ()  # read each by id now
    hold: Mapping[str, float] = field(default_factory=dict)  # suspects left for a later sweep
    refused: bool = False  # a mass change: nothing is confirmed, the suspects stay as they were


def is_mass_vanish(missing: int, snapshot_size: int) -> bool:
    return missing >= MASS_MIN_JOBS and missing > MASS_FRACTION * snapshot_size


def plan_vanish(
    missing: Mapping[str, float],
    suspects: Mapping[str, float],
    snapshot_size: int,
    confirm_max: int,
    now: float,
    *,
    guard: bool = True,
) -> VanishPlan:
    """`missing` are the snapshot's jobs (id -> first seen at) this complete listing did not
    show; `suspects` the ones held from earlier sweeps (id -> first missed at). Suspects missed
    again go first, oldest first; a suspect this listing showed is no suspect any more.
    `guard=False` (the operator said the deletion is real) confirms even a mass change."""
    if guard and is_mass_vanish(len(missing), snapshot_size):
        return VanishPlan(hold=dict(suspects), refused=True)
    held = sorted((since, job_id) for job_id, since in suspects.items() if job_id in missing)
    new = sorted(job_id for job_id in missing if job_id not in suspects)
    order = [job_id for _, job_id in held] + new
    confirm = tuple(order[:confirm_max])
    hold = {job_id: suspects.get(job_id, now) for job_id in order[confirm_max:]}
    return VanishPlan(confirm=confirm, hold=hold)
