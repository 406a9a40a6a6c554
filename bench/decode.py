"""Decode cost against prompt length: the time per new token (greedy, the lab's own token loop) after
a long prompt over that after a short one, in one process. Weights are read once per token whatever
the prompt; only the KV cache grows, so the ratio shows what else grows with the prompt.

Run: python -m bench.decode [--long 4000] [--short 300] [--tokens 48]
Last line: decode_4k_over_short: X
"""
from __future__ import annotations

import argparse
import time

from engines.config.specs import ModelSpec
from engines.decoding.generation import encode, stream_tokens
from engines.model.loading import MANAGER

FILLER = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again. "


def per_token_ms(loaded, prompt_tokens: int, new_tokens: int) -> tuple[float, int]:
    """Milliseconds per new token after the first (the first includes the prefill), and the prompt length."""
    ids = encode(loaded.tokenizer, FILLER * (prompt_tokens // 20 + 1))[:, :prompt_tokens]
    ids[0, -1] = loaded.tokenizer.encode(" Repeat the text above:")[-1]
    times = []
    for _ in stream_tokens(loaded, ids, new_tokens, choose=_never_stop):
        times.append(time.perf_counter())
    return 1000 * (times[-1] - times[0]) / (len(times) - 1), ids.shape[1]


def _never_stop(logits, outputs, ids):
    """Greedy over every token but EOS, so each run decodes exactly its budget."""
    from engines.decoding.generation import pick_greedy

    logits = logits.clone()
    logits[0:3] = float("-inf")  # the special tokens of SmolLM2 and Gemma 3, EOS among them
    return pick_greedy(logits, outputs, ids)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--long", type=int, default=4000)
    parser.add_argument("--short", type=int, default=300)
    parser.add_argument("--tokens", type=int, default=48)
    args = parser.parse_args()
    loaded = MANAGER.get(ModelSpec())
    per_token_ms(loaded, args.short, 8)  # warm up
    short, short_len = min(per_token_ms(loaded, args.short, args.tokens) for _ in range(2))
    long, long_len = min(per_token_ms(loaded, args.long, args.tokens) for _ in range(2))
    print(f"dtype {loaded.describe()['dtype_reason']}, {args.tokens} new tokens, best of 2")
    print(f"after {short_len} prompt tokens: {short:.1f} ms per new token")
    print(f"after {long_len} prompt tokens: {long:.1f} ms per new token")
    print(f"decode_4k_over_short: {long / short:.2f}")


if __name__ == "__main__":
    main()
