"""One page of a job listing: the caller's jobs in Box's apparent order (newest first), from the
marker's position, with the control API's distortions applied to `GET /2.0/docgen_jobs`
(see distortions.py) and rendered to the raw JSON a client receives."""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import orjson

from monitor.simulator import paging
from monitor.simulator.distortions import Malformation
from monitor.simulator.jobs import COMPLETED, SUBMITTED, WITH_OUTPUT, Batch, JobView
from monitor.simulator.state import SimulatorState

JSON = dict[str, Any]
TERMINAL = frozenset({*WITH_OUTPUT, "failed"})
# Stands for a lone surrogate until the body is serialised (orjson refuses to write one).
_LONE_SURROGATE_STANDIN = "\x00docgen-simulator-lone-surrogate\x00"


@dataclass(frozen=True, slots=True)
class Page:
    limit: int
    jobs: list[JobView]
    next_marker: str | None


@dataclass(frozen=True, slots=True)
class Listing:
    """Which listing a request reads: its marker scope, whose jobs, one batch or all, and
    whether the control API's distortions apply (only to GET /2.0/docgen_jobs)."""

    scope: str
    owner: str
    batch: Batch | None = None
    distorted: bool = False


def serve(
    state: SimulatorState, listing: Listing, *, marker: str | None, limit: str | None
) -> Page:
    """The page at `marker`; raises paging.BadPageRequest for a marker or limit it refuses."""
    request = paging.parse_page(listing.scope, marker=marker, limit=limit)
    position = request.position
    hidden = state.distortions.hidden_in_pass
    if position.pages == 0:  # a new pass: what an earlier pass hid is back
        hidden.pop(listing.scope, None)
    rows = _rows_from(state, listing, position)
    ghosts = _ghosts(state, listing) if position.pages == 0 else []
    take = max(request.limit - len(ghosts), 1) if ghosts else request.limit
    served = list(itertools.islice(rows, take))
    more = next(rows, None) is not None
    by_offset = position.by_offset
    if more and listing.distorted:
        by_offset = _shift(state, listing, position.pages + 1) or by_offset
    if not more:
        hidden.pop(listing.scope, None)
    now_s = state.now()
    jobs = ghosts + [state.jobs.view(row, now_s) for row in served]
    next_marker = None
    if more and served:
        next_marker = paging.encode_marker(
            listing.scope,
            paging.Position(
                after_id=state.jobs.id_of(served[-1]),
                served=position.served + len(served),
                pages=position.pages + 1,
                by_offset=by_offset,
            ),
        )
    return Page(request.limit, jobs, next_marker)


def _visible(state: SimulatorState, listing: Listing) -> Callable[[int], bool]:
    if not listing.distorted:
        return lambda row: True
    distortions = state.distortions
    hidden = distortions.hidden_in_pass.get(listing.scope, set())
    id_of = state.jobs.id_of
    return lambda row: row not in hidden and not distortions.is_omitted(id_of(row))


def _rows_from(
    state: SimulatorState, listing: Listing, position: paging.Position
) -> Iterator[int]:
    table = state.jobs
    visible = _visible(state, listing)
    if position.by_offset:  # a naive server: the entries after the first `served` of now
        rows = table.newest_first(batch=listing.batch, owner=listing.owner)
        return itertools.islice(filter(visible, rows), position.served, None)
    after_row = None
    if position.after_id is not None:
        after_row = table.row_of(position.after_id)
        if after_row is None or (
            listing.batch is not None
            and not listing.batch.first <= after_row < listing.batch.first + listing.batch.count
        ):
            raise paging.BadPageRequest("marker", str(position.after_id))
    rows = table.newest_first(after_row=after_row, batch=listing.batch, owner=listing.owner)
    return filter(visible, rows)


def _ghosts(state: SimulatorState, listing: Listing) -> list[JobView]:
    """Second copies, with another status, of the jobs the duplicate control names."""
    if not listing.distorted:
        return []
    ghosts = []
    for job_id, status in state.distortions.duplicates.items():
        job = state.find_job(str(job_id))
        if job is None or job.batch.created_by_id != listing.owner:
            continue
        other = status or (SUBMITTED if job.status in TERMINAL else COMPLETED)
        ghosts.append(dataclasses.replace(job, status=other, failures=None))
    return ghosts


def _shift(state: SimulatorState, listing: Listing, page: int) -> bool:
    """Apply the shift due after `page`, if any; True when the pass now pages by offset."""
    shift = state.distortions.shift_for(page)
    if shift is None:
        return False
    if shift.spec.insert:
        state.start_batch(shift.spec.insert, created_by_id=listing.owner)
    if shift.spec.hide:
        head = _rows_from(state, listing, paging.FIRST_PAGE)
        hidden = state.distortions.hidden_in_pass.setdefault(listing.scope, set())
        hidden.update(itertools.islice(head, shift.spec.hide))
    return True


def malform(entries: list[JSON], kinds: dict[int, Malformation]) -> bool:
    """Break the entries of jobs the malformed control names; True if a lone surrogate needs
    writing into the serialised body."""
    surrogate = False
    for entry in entries:
        kind = kinds.get(int(entry["id"]))
        if kind is Malformation.MISSING_STATUS:
            entry.pop("status", None)
        elif kind is Malformation.NULL_BATCH:
            entry["batch"] = None
        elif kind is Malformation.INTEGER_ID:
            entry["id"] = int(entry["id"])
        elif kind is Malformation.LONE_SURROGATE:
            entry["failures"] = {"errors": [_LONE_SURROGATE_STANDIN], "warnings": []}
            surrogate = True
    return surrogate


def dumps(body: JSON, *, lone_surrogate: bool = False) -> bytes:
    raw = orjson.dumps(body)
    if lone_surrogate:
        standin = orjson.dumps(_LONE_SURROGATE_STANDIN)
        raw = raw.replace(standin, b'"\\ud800"')
    return raw
