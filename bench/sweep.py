"""Prefix sharing in sweeps: a passkey grid run once as plain generate() per cell and once with the
lab's sweep engine, in one process and one dtype. Checks that the answers agree cell by cell, prints
the ideal speedup the grid allows (from token and attention FLOP counts) and, last, the measured one.

Run: python -m bench.sweep [--lengths 1000,2000,3000,4000] [--depths 5]
"""
from __future__ import annotations

import argparse
import sys
import time

import torch

from engines.config.specs import ModelSpec
from engines.decoding.generation import encode
from engines.model.loading import MANAGER
from engines.studies.sweeps import SweepSpec, build_cells, computed_spans, depth_grid, run_sweep


def flops(config, start: int, end: int, new_tokens: int) -> float:
    """Forward FLOPs for tokens [start, end) with `start` cached, then `new_tokens` decode steps."""
    hidden, layers = config.hidden_size, config.num_hidden_layers
    heads, kv_heads, head_dim = config.num_attention_heads, config.num_key_value_heads, config.head_dim
    per_token = 2 * layers * (hidden * head_dim * (heads + 2 * kv_heads) + heads * head_dim * hidden
                              + 3 * hidden * config.intermediate_size)
    attention = lambda a, b: 2 * 2 * layers * heads * head_dim * (b * b - a * a) / 2  # QK^T and AV
    total_new = end + new_tokens
    return (per_token * (end - start) + attention(start, end)
            + per_token * new_tokens + attention(end, total_new))


def compare(loaded, spec: SweepSpec) -> dict:
    """The grid run as plain generate() per cell and with the sweep engine: seconds, answers, FLOP ratio."""
    cells = build_cells(loaded.tokenizer, spec, chat_template=True)
    new_tokens = cells[0][1].max_new_tokens
    started = time.perf_counter()
    plain = {}
    for cell, instance in cells:
        ids = encode(loaded.tokenizer, instance.prompt).to(loaded.device)
        with torch.inference_mode():
            out = loaded.model.generate(ids, max_new_tokens=new_tokens, do_sample=False)
        plain[cell.key] = loaded.tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True).strip()
    plain_seconds = time.perf_counter() - started

    started = time.perf_counter()
    results = list(run_sweep(loaded, spec, cells))
    shared_seconds = time.perf_counter() - started
    shared = {result.cell.key: result.outcome.answer for result in results}
    spans = computed_spans(loaded.tokenizer, [instance for _, instance in cells], spec.mode)
    config = loaded.model.config
    return {"cells": len(cells), "new_tokens": new_tokens, "plain_seconds": plain_seconds,
            "shared_seconds": shared_seconds, "disagree": [key for key in plain if plain[key] != shared[key]],
            "decoding_seconds": sum(r.outcome.generation.seconds - r.outcome.generation.ttft for r in results),
            "plain_tokens": sum(e for _, e in spans), "shared_tokens": sum(e - s for s, e in spans),
            "ideal": (sum(flops(config, 0, end, new_tokens) for _, end in spans)
                      / sum(flops(config, start, end, new_tokens) for start, end in spans))}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--lengths", default="1000,2000,3000,4000")
    parser.add_argument("--depths", type=int, default=5)
    args = parser.parse_args()
    loaded = MANAGER.get(ModelSpec())
    spec = SweepSpec("passkey", tuple(int(n) for n in args.lengths.split(",")), depth_grid(args.depths))
    print(f"model {loaded.spec.model}, dtype {loaded.dtype_name}, lengths {spec.lengths}, depths {spec.depths}")
    found = compare(loaded, spec)
    disagree, plain_seconds, shared_seconds = found["disagree"], found["plain_seconds"], found["shared_seconds"]
    speedup = plain_seconds / shared_seconds
    print(f"{found['cells']} cells, {found['new_tokens']} new tokens")
    print(f"answers agree in {found['cells'] - len(disagree)}/{found['cells']} cells" +
          (f"; differ in {disagree}" if disagree else ""))
    print(f"plain generate(): {plain_seconds:.1f} s; sweep engine: {shared_seconds:.1f} s")
    print(f"prompt tokens computed: {found['plain_tokens']} plain, {found['shared_tokens']} shared")
    print(f"sweep engine: {found['decoding_seconds']:.1f} s of its {shared_seconds:.1f} s in decode steps after the "
          "first token (bound by reading the weights, not by FLOPs; the same in both runs)")
    print(f"ideal speedup (FLOPs): {found['ideal']:.2f}; measured is {speedup / found['ideal']:.0%} of ideal")
    print(f"speedup: {speedup:.2f}")
    if disagree:
        sys.exit(1)


if __name__ == "__main__":
    main()
