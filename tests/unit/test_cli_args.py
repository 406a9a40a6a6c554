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
    (["probe", "--context", "c"], "--question is empty"),
    (["probe", "--question", "q", "--max-new-tokens", "0"], "Max new tokens must be"),
    (["probe", "--question", "   "], "--question is empty"),
    (["nonsense"], "invalid choice: 'nonsense'"),
    (["probe", "--task", "nope"], "Unknown task 'nope'. Available: passkey"),
    (["probe", "--task", "passkey", "--depth", "150"], "Depth 150.0 is outside 0..100"),
    (["probe", "--task", "passkey", "--score", "judge"], "invalid choice: 'judge'"),
    (["probe", "--task", "passkey", "--param", "oops"], "is not key=value"),
    (["probe", "--task", "passkey", "--length", "ten"], "invalid int value: 'ten'"),
    (["decode", "--question", "q", "--method", "diverse_beam:num_beams=4,num_beam_groups=3"],
     "divisible by num_beam_groups"),
    (["decode", "--question", "q", "--method", "sampling", "--param", "top_p=1.5"], "must be in (0, 1]"),
    (["decode", "--question", "q", "--method", "cad", "--param", "alpha=-1"], "alpha=-1.0 is negative"),
    (["decode", "--question", "q", "--method", "sampling:temperature=0"], "temperature above 0"),
    (["sweep", "--task", "passkey", "--method", "warp"], "Unknown decoding method 'warp'"),
    (["probe", "--question", "q", "--method", "beam:num_beams=four"], "must be a whole number"),
])
def test_bad_arguments_give_one_line_and_exit_2(args, words):
    done = run_app(*args)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and words in lines[0]
    assert "Traceback" not in done.stderr


def test_tasks_lists_every_preset_with_its_scorer():
    import json

    done = run_app("tasks", "--json")
    assert done.returncode == 0
    listing = json.loads(done.stdout)
    names = {t["name"] for t in listing["tasks"]}
    assert {"passkey", "niah_single_1", "niah_multikey_3", "niah_multivalue", "niah_multiquery", "vt", "cwe",
            "litm_kv", "litm_qa", "nt_single", "nt_multiple", "nt_conditional", "nt_threading",
            "nt_multithreading", "counting_stars", "custom"} <= names
    assert set(listing["score_modes"]) == {"generate", "logprob"}


def test_bad_upload_exits_2_with_a_sentence(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    done = run_app("probe", "--task", "custom", "--haystack", "upload", "--upload", str(empty))
    assert done.returncode == 2 and "is empty" in done.stderr and "Traceback" not in done.stderr
