"""Where the lab keeps its files: CONTEXT_LAB_HOME, default ~/.cache/context-lab (no heavy imports)."""
from __future__ import annotations

import os
from pathlib import Path


def lab_home() -> Path:
    return Path(os.environ.get("CONTEXT_LAB_HOME", Path.home() / ".cache" / "context-lab")).expanduser()
