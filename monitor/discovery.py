"""Whether a listing proves newest-first, read by read.

Discovery reads the head of `GET /2.0/docgen_jobs` every discover interval and pages further
only while the listing keeps proving it is newest-first: every entry's `created_at` no later
than the one before it, within a page and across pages, on every read. One entry without a
readable `created_at`, or one that is newer than the entry before it, and the proof is gone for
that read: discovery stops at the page it has (recording what it shows) and leaves the rest to
the sweep. An active round relies on the same proof to read the head in place of batch polls
(`HeadWindow`). Nothing relies on the order for correctness, only for how soon a job is found
and how many requests that costs."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime

from monitor.box.models import ListedJob


def created_s(text: str | None) -> float | None:
    """Box's `created_at` (ISO 8601 with an offset or Z) as unix seconds; None if unreadable."""
    if not text:
        return None
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        return None
    return when.timestamp() if when.tzinfo is not None else None


class NewestFirst:
    """The running proof over one read of the listing (its pages in order)."""

    def __init__(self) -> None:
        self.holds = True
        self._last_s: float | None = None

    def check(self, entries: Iterable[ListedJob]) -> bool:
        """Extend the proof over the next page's entries; whether it still holds."""
        for entry in entries:
            if not self.holds:
                break
            at = created_s(entry.get("created_at"))
            if at is None or (self._last_s is not None and at > self._last_s):
                self.holds = False
            else:
                self._last_s = at
        return self.holds


class HeadWindow:
    """One read of the listing's head standing in for polling active batches one by one.

    Each target batch is known by `open_since`: the `created_at` (unix s) of its oldest job not
    yet terminal. A newest-first listing read from the head down to an entry older than that
    has shown every such job of the batch, so the read covers it: one page of a thousand entries
    costs what one batch poll costs. The read stops at the first page ending older than every
    target, after `max_pages`, or when the proof of order breaks (then it covers nothing)."""

    def __init__(self, open_since: dict[str, float], max_pages: int) -> None:
        self.open_since = open_since
        self.max_pages = max_pages
        self.pages = 0
        self.proof = NewestFirst()
        self._floor_s = min(open_since.values(), default=float("inf"))
        self._oldest_s: float | None = None  # the last entry read so far
        self._ended = False

    def take(self, entries: Sequence[ListedJob]) -> bool:
        """Extend the read over the next page; whether another page is worth reading."""
        self.pages += 1
        if not self.proof.check(entries):
            return False
        if entries:
            self._oldest_s = created_s(entries[-1].get("created_at"))
        reached_floor = self._oldest_s is not None and self._oldest_s < self._floor_s
        return not reached_floor and self.pages < self.max_pages

    def end(self) -> None:
        """The listing has no page after the last one taken."""
        self._ended = True

    def covered(self) -> set[str]:
        """The targets whose open jobs all fell within what was read."""
        if not self.proof.holds:
            return set()
        if self._ended:
            return set(self.open_since)
        oldest_s = self._oldest_s
        if oldest_s is None:
            return set()
        return {b for b, since_s in self.open_since.items() if oldest_s < since_s}
