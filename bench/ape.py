"""APE's prefill saving: the documents of a litm_qa prompt encoded apart after the shared prefix (one
batch, each document at the positions right after the prefix: what APE computes once and caches) against
the whole prompt encoded in sequence, in one process. The question's own pass, a few dozen tokens over
every key, is left out of both.

Run: python -m bench.ape [--tokens 8000] [--repeats 2]
Last line: ape_context_prefill_over_sequential: X
"""
from __future__ import annotations

import argparse

import torch

from bench.prefill import best_seconds
from engines.config.specs import ModelSpec
from engines.context.masks import segment_ids
from engines.decoding.cache import new_cache
from engines.decoding.generation import encode
from engines.model.loading import MANAGER
from engines.probes.tasks import ProbeSpec, build_probe


@torch.inference_mode()
def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tokens", type=int, default=8000)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    loaded = MANAGER.get(ModelSpec())
    model = loaded.model
    instance = build_probe(loaded.tokenizer, ProbeSpec("litm_qa", args.tokens, 50, 1))
    ids = encode(loaded.tokenizer, instance.prompt)
    segments = segment_ids(ids.shape[1], list(instance.spans))
    prefix = int((segments >= 0).nonzero()[0])
    documents = [ids[0, segments == doc] for doc in segments[segments >= 0].unique().tolist()]
    context_end = int((segments >= 0).nonzero()[-1]) + 1
    width = max(len(doc) for doc in documents)
    batch = torch.stack([torch.nn.functional.pad(doc, (0, width - len(doc)), value=int(doc[-1])) for doc in documents])
    positions = torch.arange(prefix, prefix + width)[None].expand(len(documents), -1)

    def sequential():
        model(input_ids=ids[:, :context_end], logits_to_keep=1)

    def parallel():
        cache = new_cache()
        model(input_ids=ids[:, :prefix], cache=cache, use_cache=True, logits_to_keep=1)
        cache.batch_repeat_interleave(len(documents))
        model(input_ids=batch, cache=cache, use_cache=True, position_ids=positions, logits_to_keep=1)

    sequential()  # warm-up
    seq, par = best_seconds(sequential, args.repeats), best_seconds(parallel, args.repeats)
    print(f"model {loaded.spec.model}, {loaded.dtype_name}: prefix {prefix} tokens, {len(documents)} documents "
          f"(longest {width}), context {context_end} tokens")
    print(f"sequential {seq:.2f} s, apart after the prefix {par:.2f} s")
    print(f"ape_context_prefill_over_sequential: {par / seq:.2f}")


if __name__ == "__main__":
    main()
