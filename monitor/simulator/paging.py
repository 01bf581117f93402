"""Marker paging as Box documents it: `limit` (default 100, clamped to 1000) and opaque markers.

A marker is the urlsafe base64 of a keyset position (the last job id served) plus the listing it
belongs to, so that it cannot be replayed against another listing, and a client learns nothing
by looking at it. Inserts never shift a keyset, so no job is skipped or served twice.
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
class PageRequest:
    after_id: int | None
    limit: int


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


def encode_marker(scope: str, after_id: int) -> str:
    raw = orjson.dumps({"v": _VERSION, "s": scope, "k": after_id})
    return base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")


def decode_marker(scope: str, marker: str | None) -> int | None:
    """The keyset position in `marker`, None for the first page (absent, empty or "0", which
    Box's paging guide also allows)."""
    if marker is None or marker in ("", "0"):
        return None
    try:
        raw = base64.urlsafe_b64decode(marker + "=" * (-len(marker) % 4))
        data = orjson.loads(raw)
    except (binascii.Error, ValueError):
        raise BadPageRequest("marker", marker) from None
    if (
        not isinstance(data, dict)
        or data.get("v") != _VERSION
        or data.get("s") != scope
        or type(data.get("k")) is not int
    ):
        raise BadPageRequest("marker", marker)
    after_id: int = data["k"]
    return after_id


def parse_page(scope: str, *, marker: str | None, limit: str | None) -> PageRequest:
    return PageRequest(after_id=decode_marker(scope, marker), limit=parse_limit(limit))
