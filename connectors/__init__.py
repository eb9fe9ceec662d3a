"""CRM connectors: each turns a CRM (or a file export) into `SyncBatch`es of domain models.

A connector knows HTTP, CRM JSON and files. It knows nothing of SQLite, scikit-learn or Textual,
and raises only `ConnectorError`.
"""

from __future__ import annotations

import importlib
from collections.abc import AsyncIterator, Callable
from typing import Any, Protocol, runtime_checkable

from cockpit.models import SyncBatch, SyncProgress

ProgressCallback = Callable[[SyncProgress], None]
"""Called by a connector as it works (records, pages, message)."""


class ConnectorError(Exception):
    """A failure the user can act on: `title` is short, `message` says what happened and what to do."""

    def __init__(self, title: str, message: str) -> None:
        super().__init__(f"{title}: {message}")
        self.title = title
        self.message = message


@runtime_checkable
class Connector(Protocol):
    """What the sync service needs from a CRM."""

    name: str
    """Registry name ("demo", "csv", "salesforce", ...)."""

    def batches(
        self, cursor: str | None, progress: ProgressCallback | None = None
    ) -> AsyncIterator[SyncBatch]:
        """Yield batches from `cursor` (None: a full sync). Each batch carries its resume cursor."""
        ...


_REGISTRY: dict[str, str] = {
    "demo": "connectors.demo:DemoConnector",
    "csv": "connectors.csv:CsvConnector",
}


def available() -> list[str]:
    """Connector names that can be asked for."""
    return sorted(_REGISTRY)


def register(name: str, target: str) -> None:
    """Add a connector as 'module:Class' (imported only when used)."""
    _REGISTRY[name] = target


def create(name: str, **options: Any) -> Connector:
    """Build a connector by name. Unknown names raise ConnectorError listing the known ones."""
    try:
        target = _REGISTRY[name]
    except KeyError:
        raise ConnectorError(
            "Unknown connector", f"there is no connector called {name!r}; choose one of: {', '.join(available())}"
        ) from None
    module_name, _, class_name = target.partition(":")
    cls = getattr(importlib.import_module(module_name), class_name)
    return cls(**options)
