"""App-wide messages (facts that happened), posted by workers to the screens."""

from __future__ import annotations

from dataclasses import dataclass

from textual.message import Message


@dataclass
class ScoresUpdated(Message):
    """The win model scored the open deals again (after a sync or a retrain)."""

    version: str
    """The model version that made the scores."""


class FirstFrame(Message):
    """The app's first frame has been drawn: the start screen can add what it left out of it."""
