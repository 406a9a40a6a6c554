"""Prefill speed against the machine's own matrix peak: the FLOP rate of an 8K-token prefill of the
embedded model (the lab's attention function, the loaded dtype) over the rate of a 4096^3 matmul in
the same dtype, both measured in this process. Also the attention kernel's share of the prefill, and
the bound that exact softmax sets: every causal score needs one exponential, so the prefill takes at
least (its time outside attention) + (scores / torch's exp rate, measured here).

Run: python -m bench.prefill [--tokens 8003]
Last line: prefill_peak_fraction: X
"""
from __future__ import annotations

import argparse
import time

import torch

from bench.decode import FILLER
from bench.sweep import flops
from engines.config.specs import ModelSpec
from engines.decoding.generation import encode
from engines.model.loading import MANAGER


def best_seconds(run, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tokens", type=int, default=8003)
    args = parser.parse_args()
    loaded = MANAGER.get(ModelSpec())
    dtype = loaded.model.dtype
    a, b = torch.randn(4096, 4096, dtype=dtype), torch.randn(4096, 4096, dtype=dtype)
    a @ b
    gemm = 2 * 4096**3 / best_seconds(lambda: a @ b, 5) / 1e9
    ids = encode(loaded.tokenizer, FILLER * (args.tokens // 20 + 1))[:, :args.tokens]

    def prefill():
        with torch.inference_mode():
            loaded.model(input_ids=ids, use_cache=False, logits_to_keep=1)

    seconds = best_seconds(prefill, 2)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profile:
        prefill()
    attention = sum(e.self_cpu_time_total for e in profile.key_averages() if "attention" in e.key) / 1e6
    total = sum(e.self_cpu_time_total for e in profile.key_averages()) / 1e6
    rate = flops(loaded.model.config, 0, ids.shape[1], 0) / seconds / 1e9
    x = torch.randn(1 << 26)
    out = torch.empty_like(x)
    exp_rate = x.numel() / best_seconds(lambda: torch.exp(x, out=out), 3) / 1e9
    config, n = loaded.model.config, ids.shape[1]
    exps = config.num_hidden_layers * config.num_attention_heads * n * (n + 1) / 2 / 1e9
    floor = seconds * (1 - attention / total) + exps / exp_rate
    print(f"dtype {dtype}, {ids.shape[1]} prompt tokens")
    print(f"matmul 4096^3: {gemm:.0f} GFLOP/s")
    print(f"prefill: {seconds:.2f} s, {rate:.0f} GFLOP/s; attention kernel {attention / total:.0%} of its time")
    print(f"exp: {exp_rate:.2f} G/s fp32; the {exps:.2f} G causal scores' exponentials alone take {exps / exp_rate:.2f} s, "
          f"so the prefill takes at least {floor:.2f} s: a fraction of at most {rate * seconds / floor / gemm:.2f}")
    print(f"prefill_peak_fraction: {rate / gemm:.2f}")


if __name__ == "__main__":
    main()
