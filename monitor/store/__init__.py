"""State stores. `open_store(url)` picks the backend from the URL scheme."""

from __future__ import annotations

from monitor.errors import UnsupportedStoreURL
from monitor.model import SnapshotChanges
from monitor.store.base import OutboxEntry, OutboxState, RoutedEvent, Store

__all__ = ["OutboxEntry", "OutboxState", "RoutedEvent", "SnapshotChanges", "Store", "open_store"]


def open_store(url: str) -> Store:
    """A store for `url` (not yet opened): `sqlite:///relative` or `sqlite:////absolute`."""
    if url.startswith("sqlite:///"):
        from monitor.store.sqlite import SQLiteStore

        return SQLiteStore(url.removeprefix("sqlite:///"))
    raise UnsupportedStoreURL(url)
