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
    "salesforce": "connectors.salesforce:SalesforceConnector",
    "hubspot": "connectors.hubspot:HubSpotConnector",
    "pipedrive": "connectors.pipedrive:PipedriveConnector",
    "tryton": "connectors.tryton:TrytonConnector",
}
"""Connectors that read files or a simulation take keyword options; CRM connectors are built with
`from_settings(table, secrets)` from their `[connectors.<name>]` table and the environment."""

SECRET_PREFIX = "COCKPIT_"
"""Secrets come from environment variables named COCKPIT_<CRM>_<WHAT> (see docs/connectors.md)."""


def available() -> list[str]:
    """Connector names that can be asked for."""
    return sorted(_REGISTRY)


def register(name: str, target: str) -> None:
    """Add a connector as 'module:Class' (imported only when used)."""
    _REGISTRY[name] = target


def connector_class(name: str) -> type:
    """The class registered under `name`. Unknown names raise ConnectorError listing the known ones."""
    try:
        target = _REGISTRY[name]
    except KeyError:
        raise ConnectorError(
            "Unknown connector", f"there is no connector called {name!r}; choose one of: {', '.join(available())}"
        ) from None
    module_name, _, class_name = target.partition(":")
    return getattr(importlib.import_module(module_name), class_name)


def create(name: str, **options: Any) -> Connector:
    """Build a connector by name from keyword options."""
    return connector_class(name)(**options)


def create_from_settings(name: str, settings: dict[str, Any], secrets: dict[str, str]) -> Connector:
    """Build a CRM connector from its settings table and the secrets (environment, keyring)."""
    cls = connector_class(name)
    factory = getattr(cls, "from_settings", None)
    if factory is None:
        return cls(**settings)
    return factory(settings, secrets)


def secrets_from_environment(environ: dict[str, str] | None = None, name: str | None = None) -> dict[str, str]:
    """COCKPIT_* environment variables, plus the system keyring's entry for the connector if any."""
    import os

    env = dict(os.environ if environ is None else environ)
    secrets = {k: v for k, v in env.items() if k.startswith(SECRET_PREFIX)}
    if name:
        try:
            import keyring  # optional: only where the user installed it
        except ImportError:
            return secrets
        try:
            for key in (f"{SECRET_PREFIX}{name.upper()}_TOKEN", f"{SECRET_PREFIX}{name.upper()}_PASSWORD",
                        f"{SECRET_PREFIX}{name.upper()}_CLIENT_SECRET", f"{SECRET_PREFIX}{name.upper()}_PRIVATE_KEY"):
                if key not in secrets:
                    value = keyring.get_password("deal-cockpit", key)
                    if value:
                        secrets[key] = value
        except Exception:  # noqa: BLE001 - a keyring backend that fails is the same as none
            pass
    return secrets
