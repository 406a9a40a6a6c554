"""The KV cache every lab decoding loop uses: transformers' dynamic cache, except that each layer's
keys and values live in a buffer with room to grow. transformers' DynamicLayer appends a token with
torch.cat, copying the whole cache at every step (at 4K tokens on this CPU, 21 ms of a 73 ms step);
here a new token is written in place and the buffer is copied only when it fills (it grows by a
quarter, so copies are rare). Crop, reorder and the rest work on the valid part as before.

On a GPU a decoding step is mostly launch overhead, so there the steps after the prompt run on a static
cache of fixed size through a compiled forward (CUDA graphs): `StaticSteps`."""
from __future__ import annotations

import logging
import os

import torch
from transformers import DynamicCache
from transformers.cache_utils import Cache, DynamicLayer, StaticLayer

log = logging.getLogger("context_lab")


class GrowingLayer(DynamicLayer):
    """A DynamicLayer whose `keys`/`values` are views [b, h, length, d] into larger buffers."""

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        length, needed = self.get_seq_length(), self.get_seq_length() + key_states.shape[-2]
        if not self._room_for(needed, key_states):
            self._buffers = [self._grown(current, fresh, needed) for current, fresh in
                             ((self.keys, key_states), (self.values, value_states))]
        keys, values = self._buffers
        keys[:, :, length:needed] = key_states
        values[:, :, length:needed] = value_states
        self.keys, self.values = keys[:, :, :needed], values[:, :, :needed]
        return self.keys, self.values

    def _room_for(self, needed: int, fresh: torch.Tensor) -> bool:
        """True when the current keys are the start of the buffers (not replaced by a reorder or a
        batch selection) and the buffers hold `needed` positions of the same batch and heads."""
        buffers = getattr(self, "_buffers", None)
        return (buffers is not None and self.keys.numel() > 0 and self.keys.data_ptr() == buffers[0].data_ptr()
                and self.values.data_ptr() == buffers[1].data_ptr() and buffers[0].shape[2] >= needed
                and buffers[0].shape[:2] == fresh.shape[:2] and self.keys.shape[:2] == fresh.shape[:2])

    @staticmethod
    def _grown(current: torch.Tensor, fresh: torch.Tensor, needed: int) -> torch.Tensor:
        capacity = needed + max(256, needed // 4)
        buffer = fresh.new_empty((*fresh.shape[:2], capacity, fresh.shape[-1]))
        if current.numel():
            buffer[:, :, :current.shape[2]] = current
        return buffer


def new_cache() -> DynamicCache:
    """An empty cache whose layers are GrowingLayers."""
    cache = DynamicCache()
    cache.layer_class_to_replicate = GrowingLayer
    return cache


def static_decoding(device: str) -> str:
    """How one-sequence decoding steps run: 'compiled' (a static cache and a compiled forward; the default
    on CUDA), 'static' (a static cache, not compiled) or 'dynamic' (the growing cache; the default elsewhere,
    where compiling costs more than it saves). CONTEXT_LAB_STATIC_DECODE=compiled|static|dynamic chooses."""
    chosen = os.environ.get("CONTEXT_LAB_STATIC_DECODE", "auto")
    if chosen in ("compiled", "static", "dynamic"):
        return chosen
    return "compiled" if str(device).startswith("cuda") else "dynamic"


def static_capacity(needed: int) -> int:
    """Cache sizes come in powers of two (at least 1,024), so a compiled step is reused across prompts."""
    return max(1024, 1 << (needed - 1).bit_length())


def static_cache(model, capacity: int, layers: int) -> Cache:
    """The model's static cache of `capacity` positions, emptied. One is kept per model, so that its tensors keep
    their addresses from one prompt to the next and the compiled step's CUDA graph is replayed, not recorded
    again; a prompt that needs another size replaces it."""
    held = getattr(model, "_lab_static_cache", None)
    if held is None or held.layers[0].max_cache_len != capacity:
        held = model._lab_static_cache = Cache(layers=[StaticLayer(max_cache_len=capacity) for _ in range(layers)])
    else:
        held.reset()
    return held


class StaticSteps:
    """One-token steps after a prompt: the prompt's keys and values copied from `cache` into the model's static
    cache with room for `extra` tokens more, every layer full (a sliding window is kept by the model's mask, as
    with the growing cache), and the model's forward compiled once per model and cache size."""

    def __init__(self, model, cache: DynamicCache, extra: int, compiled: bool):
        self.cache = static_cache(model, static_capacity(cache.get_seq_length() + extra), len(cache.layers))
        for static, layer in zip(self.cache.layers, cache.layers):
            static.update(layer.keys, layer.values)
        self.model = model
        self.forward = compiled_forward(model) if compiled else model.forward

    def __call__(self, token: torch.Tensor):
        """The model's outputs for one token [1, 1] after everything the cache holds. A model that does not compile
        (a layer torch.compile cannot trace) decodes uncompiled from then on, with a warning in the log; compiling
        fails before the step runs, so the cache is as it was."""
        try:
            return self.forward(input_ids=token, cache=self.cache, use_cache=True, logits_to_keep=1)
        except torch._dynamo.exc.TorchDynamoException as exc:
            if self.forward is self.model.forward:
                raise
            log.warning("The decoding step of %s did not compile (%s); it runs uncompiled.",
                        type(self.model).__name__, str(exc).splitlines()[0][:200])
            self.forward = self.model._lab_compiled_forward = self.model.forward
            return self.forward(input_ids=token, cache=self.cache, use_cache=True, logits_to_keep=1)


def compiled_forward(model):
    """The model's forward compiled for fixed shapes (CUDA graphs on a GPU), kept on the model."""
    if getattr(model, "_lab_compiled_forward", None) is None:
        mode = "reduce-overhead" if model.device.type == "cuda" else "default"
        model._lab_compiled_forward = torch.compile(model.forward, mode=mode, dynamic=False)
    return model._lab_compiled_forward
