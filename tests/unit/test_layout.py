"""The layout's promises, checked in a fresh interpreter: the configuration layer and the run log
import neither torch, transformers nor gradio; engines and services never import gradio."""
import subprocess
import sys

import pytest
from conftest import ROOT

HEAVY = ("torch", "transformers", "gradio")


@pytest.mark.parametrize("module, banned", [
    ("engines.config", HEAVY), ("engines.config.specs", HEAVY), ("engines.config.kinds", HEAVY),
    ("storage.db", HEAVY), ("storage.transfer", HEAVY),
    ("engines.probes.runner", ("gradio",)), ("services.run_flow", ("gradio",)), ("services.sweep_jobs", ("gradio",)),
    ("cli", ("gradio",)),
])
def test_import_does_not_load(module, banned):
    code = f"import sys, {module}; print(','.join(m for m in {banned!r} if m in sys.modules))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "", f"{module} loads {done.stdout.strip()}"
