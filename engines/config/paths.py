"""Where the lab keeps its files: the shipped assets, and CONTEXT_LAB_HOME (default
~/.cache/context-lab) for downloads and converted models. No heavy imports."""
from __future__ import annotations

import os
from pathlib import Path

ASSETS = Path(__file__).resolve().parents[2] / "assets"


def lab_home() -> Path:
    return Path(os.environ.get("CONTEXT_LAB_HOME", Path.home() / ".cache" / "context-lab")).expanduser()
