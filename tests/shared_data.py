"""Where the shared public CRM data lives (it is not part of the repository: its licence allows
testing, not redistribution).

Looked up in order: $COCKPIT_SHARED_DATA, `../shared/data` beside the checkout, /work/shared/data.
"""

from __future__ import annotations

import os
from pathlib import Path


def shared_data_dir() -> Path:
    candidates = [
        os.environ.get("COCKPIT_SHARED_DATA"),
        Path(__file__).resolve().parents[2] / "shared" / "data",
        "/work/shared/data",
    ]
    for candidate in candidates:
        if candidate and Path(candidate).is_dir():
            return Path(candidate)
    return Path(__file__).resolve().parents[2] / "shared" / "data"


MAVEN = shared_data_dir() / "maven-crm"
