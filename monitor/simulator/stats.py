"""Request counts per Box route and status code, so tests can assert how a client behaved
(how often it polled, how many retries a fault cost) without reading its logs."""

from __future__ import annotations

from collections import defaultdict


class RequestStats:
    def __init__(self) -> None:
        self._counts: defaultdict[str, defaultdict[int, int]] = defaultdict(
            lambda: defaultdict(int)
        )

    def reset(self) -> None:
        self._counts.clear()

    def record(self, route: str, status: int) -> None:
        self._counts[route][status] += 1

    def count(self, route: str, status: int | None = None) -> int:
        by_status: dict[int, int] = self._counts.get(route, {})
        return sum(by_status.values()) if status is None else by_status.get(status, 0)

    def snapshot(self) -> dict[str, dict[str, int]]:
        """Counts keyed by route, then by status code as a string (JSON object keys)."""
        return {
            route: {str(status): n for status, n in sorted(by_status.items())}
            for route, by_status in sorted(self._counts.items())
        }
