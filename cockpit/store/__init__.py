"""SQLite store: the only SQL in the project."""

from cockpit.store.store import Store, StoreError, SyncRun

__all__ = ["Store", "StoreError", "SyncRun"]
