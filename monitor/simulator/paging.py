"""Marker paging as Box documents it: `limit` (default 100, clamped to 1000) and opaque markers.

A marker is the urlsafe base64 of a position plus the listing it belongs to (so that it cannot
be replayed against another listing), and a client learns nothing by looking at it. The position
is a keyset (the last job id served): inserts never shift a keyset, so no job is skipped or
served twice. It also counts the entries and pages served so far, so that a shift control can
turn the rest of a pass into offset paging, the way a listing that moves under its marker does.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass

import orjson

DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
_VERSION = 1


class BadPageRequest(ValueError):
    """The marker or the limit cannot be used; the route answers 400 bad_request."""

    def __init__(self, name: str, value: str) -> None:
        self.name = name
        super().__init__(f"Invalid value '{value}' for query parameter '{name}'.")


@dataclass(frozen=True, slots=True)
class Position:
    """Where the next page starts: after job `after_id` (None: at the head), or, `by_offset`,
    after the first `served` entries of the listing as it is now. `pages` pages came before."""

    after_id: int | None = None
    served: int = 0
    pages: int = 0
    by_offset: bool = False


FIRST_PAGE = Position()


@dataclass(frozen=True, slots=True)
class PageRequest:
    position: Position
    limit: int

    @property
    def after_id(self) -> int | None:
        return self.position.after_id


def parse_limit(raw: str | None) -> int:
    if raw is None or raw == "":
        return DEFAULT_LIMIT
    try:
        limit = int(raw, 10)
    except ValueError:
        raise BadPageRequest("limit", raw) from None
    if limit < 1:
        raise BadPageRequest("limit", raw)
    return min(limit, MAX_LIMIT)


def encode_marker(scope: str, position: Position) -> str:
    raw = orjson.dumps(
        {
            "v": _VERSION,
            "s": scope,
            "k": position.after_id,
            "n": position.served,
            "p": position.pages,
            "x": position.by_offset,
        }
    )
    return base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")


def _int_or_none(value: object) -> bool:
    return value is None or type(value) is int


def decode_marker(scope: str, marker: str | None) -> Position:
    """The position in `marker`; the head for the first page (absent, empty or "0", which
    Box's paging guide also allows)."""
    if marker is None or marker in ("", "0"):
        return FIRST_PAGE
    try:
        raw = base64.urlsafe_b64decode(marker + "=" * (-len(marker) % 4))
        data = orjson.loads(raw)
    except (binascii.Error, ValueError):
        raise BadPageRequest("marker", marker) from None
    if (
        not isinstance(data, dict)
        or data.get("v") != _VERSION
        or data.get("s") != scope
        or not _int_or_none(data.get("k"))
        or type(data.get("n")) is not int
        or type(data.get("p")) is not int
        or type(data.get("x")) is not bool
    ):
        raise BadPageRequest("marker", marker)
    return Position(after_id=data["k"], served=data["n"], pages=data["p"], by_offset=data["x"])


def parse_page(scope: str, *, marker: str | None, limit: str | None) -> PageRequest:
    return PageRequest(position=decode_marker(scope, marker), limit=parse_limit(limit))
