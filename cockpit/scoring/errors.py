"""Errors the scoring layer raises for things a user can act on.

Each carries a short `title` and a `message` that says what happened and what to do, so the CLI
and the TUI can show it without switching on the type (like `connectors.ConnectorError`).
"""

from __future__ import annotations


class ScoringError(Exception):
    """Base class: `title` is short, `message` is a sentence a sales-ops admin can act on."""

    def __init__(self, title: str, message: str) -> None:
        super().__init__(f"{title}: {message}")
        self.title = title
        self.message = message


class TrainingError(ScoringError):
    """Training cannot produce a model (too little history, no usable examples)."""


class ModelFileError(ScoringError):
    """A model file cannot be used: unreadable, unsafe, another format version or other data."""
