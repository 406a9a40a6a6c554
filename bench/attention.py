"""Attention capture cost: prefill of a passkey prompt with and without capturing the question's rows
in all layers and heads, in one process. Prints time ratios at 4K and 8K tokens and the extra memory
the capture holds; last line `overhead: X.XX` (the 4K time ratio).

Run: python -m bench.attention [--repeats 2]
"""
from __future__ import annotations

import argparse
import time

import psutil
import torch

from engines.attention.function import AttentionCapture
from engines.config.specs import MaskSpec, ModelSpec, RopeSpec
from engines.context.run import run_state
from engines.decoding.generation import encode
from engines.model.loading import MANAGER
from engines.probes.tasks import ProbeSpec, build_probe


def question_rows(tokenizer, instance) -> list[int]:
    """The positions of the question's tokens (the end of the user turn)."""
    question_tokens = len(encode(tokenizer, instance.question)[0])
    end = instance.prompt_tokens - 5  # <|im_end|>, newline, <|im_start|>assistant, newline
    return list(range(end - question_tokens, end))


def timed(model, ids, capture=None, repeats=2) -> float:
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        with torch.inference_mode():
            if capture is None:
                model(input_ids=ids, logits_to_keep=1)
            else:
                with run_state(model, RopeSpec(), MaskSpec(), capture=capture):
                    model(input_ids=ids, logits_to_keep=1)
        best = min(best, time.perf_counter() - started)
    return best


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    loaded = MANAGER.get(ModelSpec())
    config = loaded.model.config
    ratios = {}
    for length in (4096, 8000):
        instance = build_probe(loaded.tokenizer, ProbeSpec("passkey", length, 50, 1))
        ids = encode(loaded.tokenizer, instance.prompt)
        rows = question_rows(loaded.tokenizer, instance)
        plain = timed(loaded.model, ids, None, args.repeats)
        rss_before = psutil.Process().memory_info().rss
        capture = AttentionCapture(rows)
        captured = timed(loaded.model, ids, capture, args.repeats)
        rss_after = psutil.Process().memory_info().rss
        ratios[length] = captured / plain
        print(f"{ids.shape[1]} tokens, {len(rows)} question rows x {config.num_hidden_layers} layers x "
              f"{config.num_attention_heads} heads: prefill {plain:.2f} s plain, {captured:.2f} s with capture "
              f"(ratio {captured / plain:.2f}); capture holds {capture.bytes / 2**20:.1f} MB, "
              f"resident memory +{max(0, rss_after - rss_before) / 2**20:.0f} MB", flush=True)
    print(f"overhead: {ratios[4096]:.2f}")


if __name__ == "__main__":
    main()
