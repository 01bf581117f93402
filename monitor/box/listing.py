"""One page of `GET /2.0/docgen_jobs` as a sweep reads it, with a bad entry quarantined instead
of failing the page.

A page is first validated whole, in pydantic-core, straight from bytes (the fast path every
clean page takes). Only when that fails is it read again leniently: the envelope must still hold
(`entries` a list, `next_marker` a string or null), else the page is malformed and the request
fails as before; each entry is then validated on its own, and one that breaks the projection (a
missing `status`, `batch: null`, an integer id) or carries text that is not valid Unicode (a
lone `\\ud800` escape, which no UTF-8 store can hold) is set aside as an `InvalidEntry`. The
caller records the valid entries and treats the listing as incomplete."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, NotRequired

import orjson
from pydantic import TypeAdapter, ValidationError
from typing_extensions import TypedDict

from monitor.box.models import JobListingPage, ListedJob

#: An entry's id is kept for the log line only when it looks like a Box id of sane length.
MAX_ID_CHARS = 40


@dataclass(frozen=True, slots=True)
class InvalidEntry:
    """A listing entry that was not recorded: its id when one could be read, and why."""

    job_id: str | None
    reason: str


@dataclass(frozen=True, slots=True)
class ListingPage:
    entries: list[ListedJob]
    next_marker: str | None
    invalid: tuple[InvalidEntry, ...] = ()


class _Envelope(TypedDict):
    entries: list[Any]
    next_marker: NotRequired[str | None]


_PAGE: TypeAdapter[JobListingPage] = TypeAdapter(JobListingPage)
_ENVELOPE: TypeAdapter[_Envelope] = TypeAdapter(_Envelope)
_ENTRY: TypeAdapter[ListedJob] = TypeAdapter(ListedJob)


def parse_listing(body: bytes) -> ListingPage:
    """The page in `body`; raises `ValidationError` only when the page itself is unreadable."""
    try:
        page = _PAGE.validate_json(body)
    except ValidationError as first:
        return _lenient(body, first)
    return ListingPage(page["entries"], page.get("next_marker"))


def _lenient(body: bytes, first: ValidationError) -> ListingPage:
    try:
        # The stdlib parser, unlike pydantic-core's, reads a lone surrogate escape: the entry
        # that holds one is refused below instead of the whole page here.
        data = json.loads(body)
    except ValueError:
        raise first from None
    envelope = _ENVELOPE.validate_python(data)
    entries: list[ListedJob] = []
    invalid: list[InvalidEntry] = []
    for raw in envelope["entries"]:
        problem, entry = _check(raw)
        if entry is not None:
            entries.append(entry)
        else:
            invalid.append(InvalidEntry(_readable_id(raw), problem))
    return ListingPage(entries, envelope.get("next_marker"), tuple(invalid))


def _check(raw: Any) -> tuple[str, ListedJob | None]:
    try:
        entry = _ENTRY.validate_python(raw)
    except ValidationError as exc:
        return _describe(exc), None
    try:
        orjson.dumps(entry)  # refuses text with a lone surrogate
    except TypeError:
        return "text is not valid Unicode (a lone surrogate escape)", None
    return "", entry


def _describe(exc: ValidationError) -> str:
    """Where and what, never the offending value (it is Box's text, untrusted)."""
    errors = exc.errors(include_url=False, include_context=False, include_input=False)
    first = errors[0]
    where = ".".join(str(p) for p in first["loc"]) or "entry"
    more = f" (+{len(errors) - 1} more)" if len(errors) > 1 else ""
    return f"{where}: {first['msg']}{more}"


def _readable_id(raw: Any) -> str | None:
    job_id = raw.get("id") if isinstance(raw, dict) else None
    if isinstance(job_id, int) and not isinstance(job_id, bool):
        job_id = str(job_id)
    if not isinstance(job_id, str) or not job_id.isascii() or not job_id.isalnum():
        return None
    return job_id[:MAX_ID_CHARS]
