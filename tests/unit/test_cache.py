"""The growing KV cache holds exactly what transformers' dynamic cache holds, through appends,
crops, batch reorders and resets, while appending writes in place."""
import torch
from transformers import DynamicCache

from engines.decoding.cache import new_cache


def test_growing_cache_matches_the_dynamic_cache_step_by_step():
    torch.manual_seed(0)
    ours, theirs = new_cache(), DynamicCache()
    steps = [("add", 37), ("add", 1), ("add", 1), ("crop", -5), ("add", 3), ("reorder", None), ("add", 1),
             ("add", 300), ("crop", -100), ("add", 1), ("repeat", None), ("add", 2)]
    batch = 2
    for action, size in steps:
        if action == "add":
            for layer in range(2):
                k, v = torch.randn(batch, 3, size, 8), torch.randn(batch, 3, size, 8)
                got = ours.update(k, v, layer)
                want = theirs.update(k, v, layer)
                assert all(torch.equal(a, b) for a, b in zip(got, want, strict=True))
        elif action == "crop":
            ours.crop(size)
            theirs.crop(size)
        elif action == "reorder":
            order = torch.tensor([1, 0])
            ours.reorder_cache(order)
            theirs.reorder_cache(order)
        else:
            ours.batch_repeat_interleave(2)
            theirs.batch_repeat_interleave(2)
            batch *= 2
        assert ours.get_seq_length() == theirs.get_seq_length()
    assert type(ours.layers[0]).__name__ == "GrowingLayer"


def test_appending_a_token_writes_in_place():
    cache = new_cache()
    cache.update(torch.randn(1, 3, 1000, 8), torch.randn(1, 3, 1000, 8), 0)
    start = cache.layers[0].keys.data_ptr()
    for _ in range(200):  # within the room left (a quarter more): no copy of the cache
        cache.update(torch.randn(1, 3, 1, 8), torch.randn(1, 3, 1, 8), 0)
    assert cache.layers[0].keys.data_ptr() == start and cache.get_seq_length() == 1200
