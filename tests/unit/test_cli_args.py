"""CLI argument errors: one line on stderr, exit code 2, no traceback, no model loaded."""
import subprocess
import sys

import pytest

from conftest import ROOT


def run_app(*args):
    return subprocess.run([sys.executable, str(ROOT / "app.py"), *args], capture_output=True, text=True,
                          timeout=120)


def test_help_lists_the_subcommands():
    done = run_app("--help")
    assert done.returncode == 0 and "probe" in done.stdout


@pytest.mark.parametrize("args, words", [
    (["probe", "--question", "q", "--quant", "3bit"], "invalid choice: '3bit'"),
    (["probe", "--context", "c"], "required: --question"),
    (["probe", "--question", "q", "--max-new-tokens", "0"], "Max new tokens must be"),
    (["probe", "--question", "   "], "--question is empty"),
    (["nonsense"], "invalid choice: 'nonsense'"),
])
def test_bad_arguments_give_one_line_and_exit_2(args, words):
    done = run_app(*args)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and words in lines[0]
    assert "Traceback" not in done.stderr
