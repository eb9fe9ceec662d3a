"""App-wide messages (facts that happened), posted by workers to the screens."""

from __future__ import annotations

from dataclasses import dataclass

from textual.message import Message


@dataclass
class SyncProgressed(Message):
    """A sync made progress (posted from a thread worker)."""

    records: int
    total: int | None
    message: str = ""
