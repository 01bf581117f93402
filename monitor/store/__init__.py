"""State stores. `open_store(url)` picks the backend from the URL scheme (`registry.BACKENDS`)."""

from __future__ import annotations

from monitor.model import SnapshotChanges
from monitor.store.base import OutboxEntry, OutboxState, RoutedEvent, Store
from monitor.store.registry import open_store

__all__ = ["OutboxEntry", "OutboxState", "RoutedEvent", "SnapshotChanges", "Store", "open_store"]
