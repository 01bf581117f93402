"""Which notifiers an event goes to: the first matching route wins, unless it says `continue`."""

from __future__ import annotations

from collections.abc import Sequence

from monitor.config import Route, RouteMatch
from monitor.model import Event


def matches(match: RouteMatch, event: Event) -> bool:
    checks: list[tuple[Sequence[object] | None, object]] = [
        (match.type, event.type),
        (match.from_status, event.from_status),
        (match.to_status, event.to_status),
        (match.batch_id, event.batch_id),
        (match.template_id, event.template_file_id),
        (match.output_type, event.job.output_type if event.job else None),
        (match.creator, event.job.created_by_id if event.job else None),
        (match.account, event.account),
    ]
    return all(wanted is None or actual in wanted for wanted, actual in checks)


class Router:
    def __init__(self, routes: Sequence[Route]) -> None:
        self.routes = tuple(routes)

    def route(self, event: Event) -> tuple[str, ...]:
        """Notifier names for `event`, each once, in route order."""
        names: list[str] = []
        for _, route in self.matching(event):
            names += [n for n in route.notify if n not in names]
        return tuple(names)

    def matching(self, event: Event) -> list[tuple[int, Route]]:
        """The routes `event` takes, with their indexes: every match up to the first one
        without `continue` (what `routes test` shows)."""
        taken = []
        for i, route in enumerate(self.routes):
            if matches(route.match, event):
                taken.append((i, route))
                if not route.continue_:
                    break
        return taken
