"""Per-run state: RoPE, mask, attention capture and head masking applied to a loaded model for exactly
one run, and the model restored when the run ends (also on error or cancel).

Every entry point that runs the model under a RunConfig does so inside `run_state(...)`; the lab's
attention function (engines/attention/function.py) reads the state through `engines.attention.state`.
"""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

from engines.attention.state import MaskRule, RunState
from engines.config.errors import HaystackError
from engines.config.kinds import lookup
from engines.config.specs import MaskSpec, RopeSpec
from engines.context.masks import segment_ids, shared_positions, visible
from engines.context.rope import rotary_for
from engines.decoding.generation import encode
from engines.probes.haystack import prose_sentences


def mask_rule(mask: MaskSpec, rotary: torch.nn.Module, spans: list[dict] | None,
              prompt_tokens: int) -> tuple[MaskRule | None, torch.Tensor | None]:
    """The attention function's rule for `mask` and the prompt's position ids when documents share
    positions (else None)."""
    if mask.kind == "causal":
        return None, None
    kind = lookup("mask", mask.kind)
    mask = kind.resolved(mask, rotary.original_max_seq_len)
    segments = None
    if kind.needs_documents:
        segments = segment_ids(prompt_tokens, spans or [])
        if not bool((segments >= 0).any()):
            raise HaystackError(f"The '{mask.kind}' mask needs a prompt made of documents: use a multi-document "
                                "task such as litm_qa in the Haystack or Sweep tab.")
    visibility = None if kind.blockwise else (
        lambda q, k: visible(mask, q, k, None if segments is None else segments.to(q.device)))
    positions = shared_positions(segments) if mask.shares_positions else None
    return MaskRule(mask, kind, visibility, rotary, segments), positions


@contextmanager
def run_state(model, rope: RopeSpec, mask: MaskSpec, spans: list[dict] | None = None, prompt_tokens: int = 0,
              capture=None, heads: list[tuple[int, int]] | None = None,
              steer: tuple[int, torch.Tensor, int] | None = None) -> Iterator[torch.Tensor | None]:
    """Run the block with `rope`, `mask`, `capture`, `heads` (layer, head pairs given uniform
    attention) and `steer` (layer, vector, first position: the vector added to that layer's output at
    every position from the first on, as the knob does) on `model`; yields the prompt's position ids
    when documents share positions (else None).

    Nested blocks start from the original rotary module and inherit the enclosing capture and head
    mask unless they give their own. On exit the model is as it was before the block."""
    inner = model.model
    outer = getattr(model.config, "lab_run", None)
    entry_rotary = inner.rotary_emb
    original = outer.original_rotary if outer is not None else entry_rotary
    hooks = []
    try:
        inner.rotary_emb = rotary_for(original, rope)
        hooks = [inner.layers[i].register_forward_pre_hook(_unrotated, with_kwargs=True)
                 for i in sorted(getattr(inner.rotary_emb, "unrotated_layers", ()))]
        if steer is not None:
            hooks += _steering_hooks(inner.layers[steer[0]], *steer)
        rule, positions = mask_rule(mask, inner.rotary_emb, spans, prompt_tokens)
        head_mask: dict[int, list[int]] = {}
        for layer, head in heads or ():
            head_mask.setdefault(layer, []).append(head)
        model.config.lab_run = RunState(
            rule, capture if capture is not None else getattr(outer, "capture", None),
            head_mask if heads is not None else getattr(outer, "head_mask", {}), original)
        yield positions
    finally:
        for hook in hooks:
            hook.remove()
        inner.rotary_emb = entry_rotary
        model.config.lab_run = outer


def _unrotated(layer, args, kwargs):
    """A NoPE layer's pre-hook: RoPE with cos 1 and sin 0, so its queries and keys stay as they are."""
    cos, sin = kwargs["position_embeddings"]
    return args, kwargs | {"position_embeddings": (torch.ones_like(cos), torch.zeros_like(sin))}


def mask_grid(mask: MaskSpec, length: int, spans: list[dict] | None = None, points: int = 128,
              trained: int = 8192) -> tuple[list, list]:
    """The mask sampled on a points x points grid of positions (a downsampled picture), for a model
    trained on `trained` positions."""
    mask = lookup("mask", mask.kind).resolved(mask, trained)
    positions = torch.linspace(0, length - 1, min(points, length)).round().long()
    segments = segment_ids(length, spans) if lookup("mask", mask.kind).needs_documents and spans else None
    rows = visible(mask, positions[:, None], positions[None, :], segments)
    return rows.tolist(), positions.tolist()


def rope_curves(rope: RopeSpec, base: float, dim: int, trained: int) -> dict[str, list[float]]:
    """Per-pair ratio and wavelength, and RoFormer's long-term decay bound
    (1/(d/2)) sum_j |sum_{k<j} exp(i m theta_k)| against distance m, for one RoPE setting."""
    from engines.context.rope import default_inv_freq, frequencies

    theta = default_inv_freq(base, dim)
    scaled, _ = frequencies(rope, base, dim, trained, seq_len=int(trained * max(rope.factor, 1)) + 1)
    distance = torch.unique(torch.logspace(0, torch.log10(torch.tensor(4.0 * trained)), 200).round())
    phases = distance[:, None] * scaled[None, :]
    partial = torch.cumsum(torch.complex(torch.cos(phases), torch.sin(phases)), dim=1).abs()
    decay = partial.mean(dim=1) / partial.mean(dim=1)[0]
    return {"pair": list(range(len(theta))), "ratio": (scaled / theta).clamp(min=1e-12).tolist(),
            "wavelength": (2 * torch.pi / scaled.clamp(min=1e-12)).tolist(), "distance": distance.tolist(),
            "decay": decay.tolist()}


def prose_stream(tokenizer, tokens: int) -> torch.Tensor:
    """Token ids [1, tokens] of one long run of prose: the stream the NLL pictures are measured on."""
    return encode(tokenizer, " ".join(prose_sentences()[:tokens]))[:, :tokens]


@torch.inference_mode()
def token_nll(model, ids: torch.Tensor, rope: RopeSpec, mask: MaskSpec, chunk: int = 256) -> list[float]:
    """Negative log-likelihood of every token of `ids` [1, n] given the ones before, under a setting.
    The vocabulary projection runs in chunks, so full logits are never held at once."""
    with run_state(model, rope, mask):
        hidden = model.model(input_ids=ids).last_hidden_state[0, :-1]  # position p predicts token p + 1
    targets = ids[0, 1:]
    losses = []
    for start in range(0, len(targets), chunk):
        logits = model.lm_head(hidden[start:start + chunk]).float()
        step = torch.nn.functional.cross_entropy(logits, targets[start:start + chunk], reduction="none")
        losses.extend(step.tolist())
    return losses


def nll_curves(loaded, ids: torch.Tensor, settings: list[tuple[str, RopeSpec, MaskSpec]],
               should_stop=lambda: False) -> Iterator[dict[str, list[float]]]:
    """`token_nll` of `ids` [1, n] (on the CPU) under each (label, RoPE, mask) setting in turn: the curves so far."""
    curves = {}
    for label, rope, mask in settings:
        if should_stop():
            return
        curves[label] = token_nll(loaded.model, ids.to(loaded.device), rope, mask)
        yield curves


def _steering_hooks(layer_module, layer: int, vector: torch.Tensor, first: int) -> list:
    """Hooks that add `vector` to the layer's output at every position from `first` on; a position is
    the number of tokens the cache held before this call plus its index in the call."""
    held = {}

    def before(module, args, kwargs):
        cache = kwargs.get("cache")
        held["past"] = cache.get_seq_length(layer) if cache is not None else 0

    def after(module, args, kwargs, output):
        hidden = output[0] if isinstance(output, tuple) else output
        start = max(0, first - held["past"])
        if start >= hidden.shape[1]:
            return output
        hidden = torch.cat([hidden[:, :start], hidden[:, start:] + vector], dim=1)
        return (hidden, *output[1:]) if isinstance(output, tuple) else hidden

    return [layer_module.register_forward_pre_hook(before, with_kwargs=True),
            layer_module.register_forward_hook(after, with_kwargs=True)]
