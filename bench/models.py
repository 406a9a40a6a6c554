"""The two embedded models side by side, in one process: prefill time of a long prompt, and decode time
per new token after a short and a long prompt (the lab's own token loop). SmolLM2-135M-Instruct is a
Llama with 30 full-attention layers; Gemma 3 270M has 18 layers, 15 of them attending to a window of
512 tokens, 4 query heads of dimension 256 and a vocabulary of 262K.

Run: python -m bench.models [--long 4000] [--short 300] [--prefill 8000] [--tokens 32]
Last line: gemma_over_smollm2_prefill: X
"""
from __future__ import annotations

import argparse

import torch

from bench.decode import FILLER, per_token_ms
from bench.prefill import best_seconds
from engines.config.specs import EMBEDDED_MODELS, ModelSpec
from engines.decoding.generation import encode
from engines.model.loading import MANAGER


def measured(name: str, args: argparse.Namespace) -> dict[str, float]:
    loaded = MANAGER.get(ModelSpec(model=name))
    ids = encode(loaded.tokenizer, FILLER * (args.prefill // 20 + 1))[:, :args.prefill]

    def prefill():
        with torch.inference_mode():
            loaded.model(input_ids=ids, use_cache=False, logits_to_keep=1)

    per_token_ms(loaded, args.short, 4)  # warm up
    figures = {"prefill_s": best_seconds(prefill, 2),
               "short_ms": min(per_token_ms(loaded, args.short, args.tokens)[0] for _ in range(2)),
               "long_ms": min(per_token_ms(loaded, args.long, args.tokens)[0] for _ in range(2))}
    print(f"{name} ({loaded.dtype_name}): prefill of {ids.shape[1]} tokens {figures['prefill_s']:.2f} s; "
          f"{figures['short_ms']:.1f} ms per new token after {args.short} tokens, {figures['long_ms']:.1f} ms "
          f"after {args.long} ({figures['long_ms'] / figures['short_ms']:.2f}x)", flush=True)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--long", type=int, default=4000)
    parser.add_argument("--short", type=int, default=300)
    parser.add_argument("--prefill", type=int, default=8000)
    parser.add_argument("--tokens", type=int, default=32)
    args = parser.parse_args()
    first, second = (measured(name, args) for name in EMBEDDED_MODELS)
    print(f"gemma_over_smollm2_decode_short: {second['short_ms'] / first['short_ms']:.2f}")
    print(f"gemma_over_smollm2_decode_long: {second['long_ms'] / first['long_ms']:.2f}")
    print(f"gemma_over_smollm2_prefill: {second['prefill_s'] / first['prefill_s']:.2f}")


if __name__ == "__main__":
    main()
