"""Is this checkout deployable as a Hugging Face Space? `python app.py check-space [--json]` checks what a
Space build reads and what makes it fail: the README's front matter, requirements.txt (pinned, gradio equal
to the front matter's sdk_version, `spaces` for ZeroGPU, a torch a GPU Space can install, every package the
lab imports), the app file, the persistent storage, and the files a push to the Hub accepts (binary files
and files over 10 MB only through LFS/Xet)."""
from __future__ import annotations

import ast
import importlib.metadata
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COLORS = {"red", "yellow", "green", "blue", "indigo", "purple", "pink", "gray"}
HARDWARE = {"cpu-basic", "cpu-upgrade", "zero-a10g", "t4-small", "t4-medium", "l4x1", "l4x4", "l40sx1", "l40sx4",
            "l40sx8", "a10g-small", "a10g-large", "a10g-largex2", "a10g-largex4", "a100-large", "h100", "h100x8"}
LARGE_FILE = 10 * 2**20  # the Hub takes larger files only through LFS/Xet
PACKAGES = ("engines", "services", "storage", "ui")
ENTRY_POINTS = ("app.py", "cli.py")


def front_matter(readme: Path) -> dict:
    """The YAML block that opens the README (empty when there is none)."""
    import yaml

    text = readme.read_text(encoding="utf-8") if readme.exists() else ""
    match = re.match(r"---\n(.*?)\n---\n", text, re.S)
    loaded = yaml.safe_load(match.group(1)) if match else None
    return loaded if isinstance(loaded, dict) else {}


def requirement_pins(path: Path) -> tuple[dict[str, str], list[str]]:
    """Pinned requirements {normalized name: version}, and the lines that are not a plain `name==version` pin."""
    pins, loose = {}, []
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        match = re.fullmatch(r"([A-Za-z0-9._-]+)(\[[^\]]*\])?==([A-Za-z0-9.+!-]+)", line)
        if match:
            pins[normalized(match.group(1))] = match.group(3)
        else:
            loose.append(line)
    return pins, loose


def normalized(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def installed_closure(names: set[str]) -> set[str]:
    """`names` and every distribution they require, as installed here (extras left out)."""
    seen, todo = set(), list(names)
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        try:
            requires = importlib.metadata.requires(name) or []
        except importlib.metadata.PackageNotFoundError:
            continue
        todo += [normalized(re.match(r"[A-Za-z0-9._-]+", r).group(0)) for r in requires if "extra ==" not in r]
    return seen


def required_imports(root: Path) -> dict[str, str]:
    """Third-party modules the lab imports where a missing one fails (not inside `try ... except ImportError`),
    each with one file that imports it."""
    files = [root / name for name in ENTRY_POINTS] + [p for package in PACKAGES for p in (root / package).rglob("*.py")]
    local = set(PACKAGES) | {Path(name).stem for name in ENTRY_POINTS}
    found: dict[str, str] = {}
    for path in files:
        tree = ast.parse(path.read_text(encoding="utf-8"))
        optional = {id(node) for guard in ast.walk(tree) if isinstance(guard, ast.Try) and any(
            "ImportError" in ast.unparse(handler.type or ast.Name("BaseException")) for handler in guard.handlers)
            for statement in guard.body for node in ast.walk(statement)}
        for node in ast.walk(tree):
            if id(node) in optional:
                continue
            if isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                modules = [node.module]
            else:
                continue
            for module in modules:
                top = module.split(".")[0]
                if top not in sys.stdlib_module_names and top not in local:
                    found.setdefault(top, str(path.relative_to(root)))
    return found


def binary(path: Path) -> bool:
    """git's rule: a NUL byte in the first 8,000 bytes."""
    with open(path, "rb") as f:
        return b"\0" in f.read(8000)


def tracked_files(root: Path) -> list[str]:
    listed = subprocess.run(["git", "ls-files", "-z"], cwd=root, capture_output=True)
    if listed.returncode == 0:
        return [name for name in listed.stdout.decode().split("\0") if name and (root / name).is_file()]
    return [str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and ".git" not in p.parts]


def through_lfs(root: Path, names: list[str]) -> set[str]:
    """The files .gitattributes sends through LFS/Xet (`filter=lfs` or `filter=xet`), as git itself reads it."""
    if not names:
        return set()
    checked = subprocess.run(["git", "check-attr", "filter", "--stdin", "-z"], cwd=root, capture_output=True,
                             input="\0".join(names).encode())
    fields = checked.stdout.decode().split("\0")
    return {fields[i] for i in range(0, len(fields) - 2, 3) if fields[i + 2] in ("lfs", "xet")}


def storage_places() -> tuple[Path, Path]:
    """Where the run log and the converted models go on a Space with persistent storage (a writable /data),
    found by the lab's own functions with a stand-in for /data."""
    from engines.config import paths
    from storage.db import data_dir

    saved = paths.PERSISTENT, {k: os.environ.pop(k) for k in ("CONTEXT_LAB_DATA", "CONTEXT_LAB_HOME") if k in os.environ}
    with tempfile.TemporaryDirectory() as stand_in:
        paths.PERSISTENT = Path(stand_in)
        try:
            return (Path("/data") / data_dir().relative_to(stand_in), Path("/data") / paths.lab_home().relative_to(stand_in))
        except ValueError:
            return data_dir(), paths.lab_home()
        finally:
            paths.PERSISTENT = saved[0]
            os.environ.update(saved[1])


def check_space(root: Path = ROOT) -> dict:
    """{"ok", "problems": [sentences saying what to change], "checked": [what was found fine]}."""
    problems, checked = [], []
    meta = front_matter(root / "README.md")
    if not meta:
        return {"ok": False, "problems": ["README.md has no YAML front matter between --- lines; a Space reads its "
                                          "settings (sdk, sdk_version, app_file) from it."], "checked": []}
    if meta.get("sdk") != "gradio":
        problems.append(f"Front matter sdk is {meta.get('sdk')!r}; set sdk: gradio.")
    for field in ("title", "emoji", "license", "short_description"):
        if not meta.get(field):
            problems.append(f"Front matter has no {field}; add one.")
    for field in ("colorFrom", "colorTo"):
        if meta.get(field) not in COLORS:
            problems.append(f"Front matter {field} is {meta.get(field)!r}; use one of {', '.join(sorted(COLORS))}.")
    if len(str(meta.get("short_description", ""))) > 60:
        problems.append("Front matter short_description is over 60 characters; the Hub refuses it. Shorten it.")
    if "suggested_hardware" in meta and meta["suggested_hardware"] not in HARDWARE:
        problems.append(f"Front matter suggested_hardware {meta['suggested_hardware']!r} is not a Space hardware; "
                        f"use one of {', '.join(sorted(HARDWARE))}.")
    app_file = root / str(meta.get("app_file", ""))
    if not meta.get("app_file") or not app_file.is_file():
        problems.append(f"Front matter app_file {meta.get('app_file')!r} is not a file here; set app_file: app.py.")
    python = str(meta.get("python_version", ""))
    if not re.fullmatch(r"3\.(1[1-9])(\.\d+)?", python):
        problems.append(f"Front matter python_version is {python or 'not set (a Space then uses 3.10)'}; the lab "
                        "needs Python 3.11 or later: set python_version: \"3.11\".")
    checked.append(f"front matter: sdk {meta.get('sdk')} {meta.get('sdk_version')}, python {python}, "
                   f"app_file {meta.get('app_file')}")

    pins, loose = requirement_pins(root / "requirements.txt")
    for line in loose:
        problems.append(f"requirements.txt line {line!r} is not a pin name==version; pin it so the Space builds "
                        "what was tested" + (" (a GPU Space needs PyPI's CUDA build of torch, not another index)"
                                             if "index-url" in line else "") + ".")
    if str(meta.get("sdk_version")) != pins.get("gradio"):
        problems.append(f"Front matter sdk_version {meta.get('sdk_version')} differs from requirements.txt's gradio "
                        f"{pins.get('gradio')}; the Space installs the sdk_version, so set both to the same.")
    if "+" in pins.get("torch", "+"):
        problems.append("requirements.txt must pin torch to a PyPI release without a local tag (such as +cpu), "
                        "which on a GPU Space installs with CUDA.")
    for needed, why in (("spaces", "ZeroGPU runs model work in spaces.GPU calls"),
                        ("bitsandbytes", "8-bit and 4-bit loading on a GPU")):
        if needed not in pins:
            problems.append(f"requirements.txt lacks {needed} ({why}); add it pinned.")
    installs = installed_closure(set(pins))
    distributions = importlib.metadata.packages_distributions()
    for module, where in sorted(required_imports(root).items()):
        names = {normalized(name) for name in distributions.get(module, [])}
        if not names & installs:
            problems.append(f"{where} imports {module}, which nothing in requirements.txt installs; add its package.")
    checked.append(f"requirements.txt: {len(pins)} pins; every package the lab imports is installed by them")

    run_log, models = storage_places()
    if not (str(run_log).startswith("/data") and str(models).startswith("/data")):
        problems.append(f"With persistent storage the run log would go to {run_log} and models to {models}, not "
                        "under /data; they would be lost at every restart.")
    checked.append(f"persistent storage: run log in {run_log}, models in {models}")

    files = tracked_files(root)
    lfs = through_lfs(root, files)
    for name in files:
        path = root / name
        if name not in lfs and (path.stat().st_size > LARGE_FILE or binary(path)):
            problems.append(f"{name} is {'binary' if binary(path) else 'over 10 MB'} and not sent through LFS/Xet; "
                            "the Hub refuses the push: add a pattern for it to .gitattributes with filter=lfs.")
    total = sum((root / name).stat().st_size for name in files)
    checked.append(f"files: {len(files)}, {total / 2**20:.1f} MB, {len(lfs)} through LFS/Xet")
    return {"ok": not problems, "problems": problems, "checked": checked}
