"""Silences: which events are recorded but not sent. A silence matches like a route's `match`;
the dispatcher settles a row as silenced when a silence matching its event is active now or was
active when the event was detected, so a backlog is muted too, and nothing silenced is sent
after the silence ends (as Alertmanager does)."""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence

import structlog
from pydantic import ValidationError

from monitor.config import RouteMatch, validation_problems
from monitor.errors import InvalidInput
from monitor.model import Event
from monitor.notify.router import matches
from monitor.store.base import Silence

MAX_COMMENT_CHARS = 1000
log = structlog.get_logger(__name__)


def parse_matchers(pairs: Sequence[str]) -> dict[str, tuple[str, ...]]:
    """`["template_id=123", "to_status=failed,completed_with_error"]` -> a route match as data,
    checked like a route's (unknown keys and event types are refused, every problem listed).
    A key given twice accepts the values of both."""
    values: dict[str, list[str]] = {}
    problems = []
    for i, pair in enumerate(pairs):
        key, sep, value = pair.partition("=")
        if not sep or not key.strip() or not value.strip():
            problems.append(f"match[{i}]: expected KEY=VALUE[,VALUE...], got {pair!r}")
            continue
        values.setdefault(key.strip(), []).extend(v.strip() for v in value.split(",") if v)
    if problems:
        raise InvalidInput(problems)
    return match_data(values)


def match_data(raw: Mapping[str, object]) -> dict[str, tuple[str, ...]]:
    """A route match given as data (CLI or API), validated, keys with values only."""
    try:
        match = RouteMatch.model_validate(raw)
    except ValidationError as exc:
        raise InvalidInput(validation_problems(exc, prefix="match")) from None
    data = {
        key: tuple(str(v) for v in value)
        for key, value in match.model_dump(mode="json", exclude_none=True).items()
    }
    if not data:
        # As in Alertmanager: muting everything is a change of routes, not a silence.
        raise InvalidInput(["match: at least one KEY=VALUE is needed"])
    return data


def new_silence(
    match: Mapping[str, tuple[str, ...]],
    *,
    duration_s: float,
    comment: str,
    created_by: str,
    now: float,
    starts_at: float | None = None,
) -> Silence:
    """A silence with a fresh id, from `starts_at` (default `now`) for `duration_s`."""
    problems = []
    if duration_s <= 0:
        problems.append("for: must be longer than 0s")
    if not comment.strip():
        problems.append("comment: say why (it is what the next person on call reads)")
    if len(comment) > MAX_COMMENT_CHARS:
        problems.append(f"comment: at most {MAX_COMMENT_CHARS} characters")
    if problems:
        raise InvalidInput(problems)
    start = now if starts_at is None else starts_at
    return Silence(
        id=str(uuid.uuid4()),
        match=dict(match),
        starts_at=start,
        ends_at=start + duration_s,
        comment=comment,
        created_by=created_by,
        created_at=now,
    )


class Silencer:
    """Decides, for one set of silences read from the store, which events they mute."""

    def __init__(self, silences: Sequence[Silence]) -> None:
        self._silences: list[tuple[Silence, RouteMatch]] = []
        for silence in silences:
            try:
                match = RouteMatch.model_validate(dict(silence.match))
            except ValidationError:
                # Stored by a build that accepted more: it mutes nothing rather than stopping
                # every delivery. `silence expire` removes it.
                log.warning("silence_unreadable", silence_id=silence.id)
                continue
            self._silences.append((silence, match))

    def silencing(self, event: Event, now: float) -> Silence | None:
        """The first silence that mutes `event`: it matches, and it is active now or was
        when the event was detected."""
        detected_at = event.detected_at.timestamp()
        for silence, match in self._silences:
            if (silence.active_at(now) or silence.active_at(detected_at)) and matches(
                match, event
            ):
                return silence
        return None
