"""Prefill time of each attention mask at 4K tokens relative to plain causal attention, in one process.

Writes the ratios to assets/mask_costs.json, which the Context tab shows.
Run: python -m bench.context [--tokens 4096] [--repeats 2]
"""
from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from engines.config.specs import MaskSpec, ModelSpec, RopeSpec
from engines.context.run import run_state
from engines.decoding.generation import encode
from engines.model.loading import MANAGER
from engines.probes.tasks import ProbeSpec, build_probe

ROOT = Path(__file__).resolve().parent.parent

MASKS = ["causal", "sliding_window:window=1024", "sinks:n_sink=4,window=1024",
         "sinks:n_sink=4,window=1024,reindex=1", "lambda:n_global=10,n_local=2048", "segments",
         "segments:shared_positions=1", "pine", "pine_full", "clip:distance=1024"]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tokens", type=int, default=4096)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    loaded = MANAGER.get(ModelSpec())
    instance = build_probe(loaded.tokenizer, ProbeSpec("litm_qa", args.tokens, 50, 1))  # a prompt of documents
    ids = encode(loaded.tokenizer, instance.prompt)
    print(f"model {loaded.spec.model}, dtype {loaded.dtype_name}, prompt {ids.shape[1]} tokens (litm_qa documents)")
    seconds = {}
    for text in MASKS:
        mask = MaskSpec.parse(text)
        with (torch.inference_mode(),
              run_state(loaded.model, RopeSpec(), mask, list(instance.spans), instance.prompt_tokens) as positions):
            position_ids = None if positions is None else positions[None]
            loaded.model(input_ids=ids[:, :256], logits_to_keep=1)  # warm up
            runs = []
            for _ in range(args.repeats):
                started = time.perf_counter()
                loaded.model(input_ids=ids, logits_to_keep=1, position_ids=position_ids)
                runs.append(time.perf_counter() - started)
        seconds[text] = min(runs)
        print(f"{text:40s} {seconds[text]:6.2f} s  {seconds[text] / seconds['causal']:.2f}x causal", flush=True)
    ratios = {text: round(s / seconds["causal"], 2) for text, s in seconds.items()}
    (ROOT / "assets" / "mask_costs.json").write_text(json.dumps(
        {"tokens": int(ids.shape[1]), "machine": f"{platform.machine()} CPU, {loaded.dtype_name}",
         "ratios": ratios}, indent=1) + "\n")
    print("ratios: " + ", ".join(f"{k} {v:.2f}" for k, v in ratios.items()))


if __name__ == "__main__":
    main()
