"""Whether a listing proves newest-first, read by read.

Discovery reads the head of `GET /2.0/docgen_jobs` every discover interval and pages further
only while the listing keeps proving it is newest-first: every entry's `created_at` no later
than the one before it, within a page and across pages, on every read. One entry without a
readable `created_at`, or one that is newer than the entry before it, and the proof is gone for
that read: discovery stops at the page it has (recording what it shows) and leaves the rest to
the sweep. Nothing relies on the order for correctness, only for how soon a job is found."""

from __future__ import annotations

from collections.abc import Iterable
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
