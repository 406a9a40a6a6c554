"""Ready for a GPU and a Space: `check-space` on this checkout and on a broken copy of it; `bench.gpu --smoke`
(the GPU benchmark's whole path, on the CPU: random-weight model saved and loaded through the lab's loader in
bf16, 8-bit and nf4, decoding on a static cache through a compiled forward); and a model job run the way a
ZeroGPU Space runs it, in a process forked from the lab's, its arguments and items pickled across."""
from __future__ import annotations

import json
import multiprocessing
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from engines.attention.function import AttentionCapture
from engines.attention.views import question_positions
from engines.config.specs import RunConfig
from engines.model.jobs import gpu_call, model_job
from engines.probes.runner import run_probe
from engines.probes.tasks import ProbeSpec, build_probe
from services.space_check import check_space

ROOT = Path(__file__).resolve().parents[2]


def test_this_checkout_deploys_as_a_space():
    done = subprocess.run([sys.executable, "app.py", "check-space", "--json"], cwd=ROOT, capture_output=True, text=True)
    found = json.loads(done.stdout)
    assert done.returncode == 0 and found["ok"] and found["problems"] == [], found
    assert any("/data/context-lab" in line for line in found["checked"])


def test_a_broken_copy_gets_a_sentence_for_each_problem(tmp_path):
    for name in ("README.md", "requirements.txt", "app.py", "cli.py", ".gitattributes"):
        shutil.copy(ROOT / name, tmp_path / name)
    for package in ("engines", "services", "storage", "ui"):
        shutil.copytree(ROOT / package, tmp_path / package, ignore=shutil.ignore_patterns("__pycache__"))
    readme = (tmp_path / "README.md").read_text()
    (tmp_path / "README.md").write_text(readme.replace('python_version: "3.11"\n', "").replace(
        "sdk_version: 6.31.0", "sdk_version: 6.0.0").replace("colorTo: yellow", "colorTo: teal"))
    requirements = (tmp_path / "requirements.txt").read_text()
    (tmp_path / "requirements.txt").write_text(requirements.replace("spaces==", "# spaces==").replace(
        "plotly==7.1.0", "plotly>=7"))
    (tmp_path / "ui" / "extra.py").write_text("import yaml_missing_package\n")
    (tmp_path / "assets").mkdir()
    (tmp_path / "assets" / "logo.png").write_bytes(b"\x89PNG\0\0" * 10)
    (tmp_path / "assets" / "data.bin").write_bytes(b"\0\1" * 10)
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    subprocess.run(["git", "add", "-A"], cwd=tmp_path, check=True)

    found = check_space(tmp_path)
    problems = "\n".join(found["problems"])
    assert not found["ok"]
    for words in ("python_version is not set", "sdk_version 6.0.0 differs from requirements.txt's gradio 6.31.0",
                  "colorTo is 'teal'", "lacks spaces", "'plotly>=7' is not a pin",
                  "ui/extra.py imports yaml_missing_package", "assets/data.bin is binary"):
        assert words in problems, words
    assert "logo.png" not in problems  # *.png goes through LFS in the checkout's .gitattributes


@pytest.mark.model
def test_the_gpu_benchmark_runs_its_whole_path_on_the_cpu():
    done = subprocess.run([sys.executable, "-m", "bench.gpu", "--smoke", "--json"], cwd=ROOT, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    found = json.loads(done.stdout.strip().splitlines()[-1])
    assert [(row["quant"], row["decode_steps"]) for row in found["models"]] == [
        ("none", "compiled"), ("8bit", "compiled"), ("nf4", "compiled")]
    assert all(row["decode_tokens_per_s"] > 0 and 0 < row["decode_fraction_of_bound"] < 1 for row in found["models"])
    assert found["masks_equal_eager"] and {"causal", "segments", "pine", "sinks:window=64"} <= set(found["mask_max_diff"])
    assert found["sweep_answers_agree"]
    assert found["capture"]["held_mb"] * 2**20 == 32 * 1024 * 8 * 4 * 4  # rows x keys x heads x layers x fp32
    assert set(found["prefill_tokens_per_s"]) == {"256", "1024"} and found["decode_bound_tokens_per_s"] > 0


def forking_gpu(duration):
    """A stand-in for spaces.GPU without a GPU: like ZeroGPU's, it runs the function in a process forked from this
    one and sends the arguments and every item across pickled (tensors by shared memory, so the worker lives
    until the last item is read); closing the call ends the worker."""
    def decorate(function):
        def call(*args):
            assert duration(*args) == args[-1]
            context = multiprocessing.get_context("fork")
            arguments, results, read = context.Queue(), context.Queue(), context.Event()

            def worker():
                torch.set_num_threads(1)  # on a CPU: OpenMP's threads do not survive a fork, and would hang
                try:
                    for item in function(*arguments.get()):
                        results.put(("item", item))
                    results.put(("end", None))
                except Exception as exc:
                    results.put(("error", repr(exc)))
                read.wait(60)

            process = context.Process(target=worker, daemon=True)
            process.start()
            arguments.put(args)
            try:
                while (result := results.get(timeout=300))[0] == "item":
                    yield result[1]
                assert result[0] == "end", result[1]
            finally:
                read.set()
                process.join(10)
                process.kill()
        return call
    return decorate


def test_a_job_takes_only_functions_that_pickle():
    with pytest.raises(TypeError, match="module level"):
        model_job(lambda loaded, should_stop: iter(()))


@pytest.mark.model
def test_a_job_in_a_forked_gpu_worker_answers_and_brings_its_capture_back(embedded):
    instance = build_probe(embedded.tokenizer, ProbeSpec("passkey", 400, 50, 1))
    positions = question_positions(embedded.tokenizer, instance.prompt, instance.question)
    here, there = AttentionCapture(positions), AttentionCapture(positions)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in the worker, so that both sum in the same order
    try:
        *_, local = run_probe(embedded, instance, "generate", RunConfig(), capture=here)
    finally:
        torch.set_num_threads(threads)
    items = list(gpu_call(embedded.spec, model_job(run_probe, instance, "generate", RunConfig(), capture=there), 30,
                          gpu=forking_gpu))
    assert [e.token_id for e in items[-1].generation.tokens] == [e.token_id for e in local.generation.tokens]
    assert [e.token_id for e in items[:-1]] == [e.token_id for e in local.generation.tokens]
    assert sorted(there.prompt) == sorted(here.prompt) and len(there.steps) == len(here.steps) > 0
    assert all(torch.equal(there.prompt[layer], here.prompt[layer]) for layer in here.prompt)


@pytest.mark.parametrize("quant", ["none", "8bit", "4bit"])
def test_the_weights_size_is_known_before_loading(tmp_path, quant):
    """The estimate from the safetensors headers that decides whether a model fits the GPU, against the footprint
    the model has once loaded; a model that does not fit gets a sentence."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from bench.gpu import tokenizer_dir
    from engines.config.errors import ModelError
    from engines.config.specs import ModelSpec
    from engines.model.loading import MANAGER, check_fits, weight_bytes

    config = LlamaConfig(vocab_size=4096, hidden_size=256, intermediate_size=768, num_hidden_layers=3,
                         num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False)
    LlamaForCausalLM(config).to(torch.bfloat16).save_pretrained(tmp_path)
    tokenizer_dir(tmp_path)
    spec = ModelSpec(model=str(tmp_path), quant=quant, dtype="bf16")
    estimate = weight_bytes(tmp_path, quant, torch.bfloat16)
    loaded = MANAGER.get(spec)
    try:
        assert abs(estimate - loaded.footprint_bytes) < 0.1 * loaded.footprint_bytes, (estimate, loaded.footprint_bytes)
    finally:
        MANAGER.unload()
    with pytest.raises(ModelError, match=r"needs about .* GB for its weights .* and the GPU has 0.0 GB free: choose"):
        check_fits(spec, estimate, estimate // 2, "GPU")
