"""The lab's attention function, registered with transformers under the name `lab_sdpa`.

It is transformers' sdpa with two changes on the CPU: when a chunk of queries follows a cached prefix
under a plain causal mask (a prompt continuing a shared prefix), it attends to the prefix without a
mask and to itself with the fused causal kernel, and merges the two by their log-sum-exp (a masked
kernel would compute every query x key pair; this skips the masked half of the chunk's own block);
and a sliding-window layer's prefill (Mistral, Gemma's local layers) runs block by block over each
block's window of keys instead of the whole prompt under a dense mask.

Window masks run block by block, merged by log-sum-exp, on any device: with torch's fused CPU kernel
on the CPU, and with plain torch ops elsewhere (`attention_path`); nothing falls back to plain causal.
A mask kind that scores for itself (PINE) gives the scores, and the softmax runs over them a block of
query rows at a time (`kind_scores`, `scored_attention`).
"""
from __future__ import annotations

import os

import torch
from transformers import AttentionInterface, AttentionMaskInterface
from transformers.integrations.sdpa_attention import repeat_kv, sdpa_attention_forward
from transformers.masking_utils import sdpa_mask

from engines.attention.state import current
from engines.context.masks import SUFFIX, segment_at

LAB_ATTENTION = "lab_sdpa"
_cpu_flash_with_lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
PORTABLE_ROWS = 1024  # query rows per block on the portable path: fp32 scores of rows x keys at a time


def attention_path(device: str) -> str:
    """'cpu-fused' (torch's fused CPU kernel, with its log-sum-exp) or 'portable' (plain torch ops, any
    device; CONTEXT_LAB_PORTABLE_ATTENTION=1 forces it on the CPU)."""
    forced = os.environ.get("CONTEXT_LAB_PORTABLE_ATTENTION", "0") not in ("", "0")
    return "cpu-fused" if str(device).startswith("cpu") and not forced else "portable"


def _flash_with_lse(query, key, value, attn_mask=None, is_causal=False, scale=None):
    """Attention output [b, h, q, d] and log-sum-exp per row [b, h, q], on the path for this device.

    The portable path computes the same in fp32 blocks of query rows (a causal mask is aligned so the
    last query sees the last key); a row that sees no key gets lse -inf."""
    if attention_path(query.device.type) == "cpu-fused":
        return _cpu_flash_with_lse(query, key, value, attn_mask=attn_mask, is_causal=is_causal, scale=scale)
    scale = scale if scale is not None else query.shape[-1] ** -0.5
    q_len, kv_len = query.shape[2], key.shape[2]
    outs, lses = [], []
    for start in range(0, q_len, PORTABLE_ROWS):
        rows = slice(start, min(start + PORTABLE_ROWS, q_len))
        scores = query[:, :, rows].float() @ key.float().transpose(-1, -2) * scale
        if attn_mask is not None:
            scores = scores + attn_mask[..., rows, :].float()
        if is_causal:
            q_pos = torch.arange(rows.start, rows.stop, device=query.device)[:, None] + (kv_len - q_len)
            scores = scores.masked_fill(torch.arange(kv_len, device=query.device)[None, :] > q_pos, float("-inf"))
        lse = torch.logsumexp(scores, dim=-1)
        weights = torch.exp(scores - lse[..., None]).nan_to_num()
        outs.append((weights @ value.float()).to(query.dtype))
        lses.append(lse)
    return torch.cat(outs, dim=2), torch.cat(lses, dim=2)


def is_causal_after_prefix(mask: torch.Tensor | None, q_len: int, kv_len: int) -> bool:
    """True when `mask` [batch, 1, q, kv] lets query i see exactly keys 0..(kv - q + i). Every layer
    of a forward pass gets the same mask, so the answer is kept on the mask after the first layer."""
    if mask is None or mask.dtype != torch.bool or mask.shape[-2:] != (q_len, kv_len) or mask.shape[0] != 1:
        return False
    known = getattr(mask, "_lab_causal_after_prefix", None)
    if known is not None:
        return known
    rows = torch.arange(q_len, device=mask.device)[:, None] + (kv_len - q_len)
    mask._lab_causal_after_prefix = bool(torch.equal(mask[0, 0], torch.arange(kv_len, device=mask.device)[None, :]
                                                     <= rows))
    return mask._lab_causal_after_prefix


def merge_by_lse(parts: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
    """Combine attention outputs over disjoint key sets, given each part's log-sum-exp [b, h, q]."""
    lse = torch.stack([p[1] for p in parts])
    weights = torch.softmax(lse, dim=0)  # each part's share of the total softmax mass
    return sum(out.float() * w[..., None] for (out, _), w in zip(parts, weights)).to(parts[0][0].dtype)


def prefix_chunk_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                           scaling: float | None) -> torch.Tensor:
    """Causal attention of the last q positions over all keys, in two fused calls. Shapes
    query [b, h, q, d], key/value [b, kv_heads, kv, d]; returns [b, h, q, d].

    Every query sees the whole prefix, so the query heads that share a key head are stacked as rows
    of one call against the prefix's keys as they are (no copy of the prefix per query head); only
    the chunk's own keys are repeated for its causal part."""
    b, heads, q_len, d = query.shape
    groups, prefix = heads // key.shape[1], key.shape[2] - q_len
    stacked = query.reshape(b, key.shape[1], groups * q_len, d)
    out, lse = _flash_with_lse(stacked, key[:, :, :prefix], value[:, :, :prefix], scale=scaling)[:2]
    before = out.reshape(b, heads, q_len, d), lse.reshape(b, heads, q_len)
    own = _flash_with_lse(query, repeat_kv(key[:, :, prefix:], groups), repeat_kv(value[:, :, prefix:], groups),
                          is_causal=True, scale=scaling)
    return merge_by_lse([before, own[:2]])


def rotate(x: torch.Tensor, delta: torch.Tensor, inv_freq: torch.Tensor) -> torch.Tensor:
    """Rotate already-rotated rows x [b, h, q, d] by `delta` more positions each ([q], or any shape that
    broadcasts against x's leading dimensions, such as [b, h, q] for a turn per head; the result takes the
    broadcast shape). Only the first 2 x len(inv_freq) dimensions turn (models with partial rotary, such as
    Phi-3, leave the rest)."""
    angles = delta.to(torch.float32)[..., None] * inv_freq.to(torch.float32)
    emb = torch.cat([angles, angles], dim=-1)
    cos, sin = emb.cos(), emb.sin()
    turning, kept = x[..., :emb.shape[-1]], x[..., emb.shape[-1]:]
    half = turning.shape[-1] // 2
    turned = torch.cat([-turning[..., half:], turning[..., :half]], dim=-1)
    rotated = (turning.float() * cos + turned.float() * sin).to(x.dtype)
    return torch.cat([rotated, kept.expand(*rotated.shape[:-1], kept.shape[-1])], dim=-1)


def _attend(query, key, value, mask, scaling):
    """Attention output and log-sum-exp per row under a bool mask [q, k] (small: one block);
    rows that see nothing get weight zero."""
    additive = torch.zeros(mask.shape, dtype=query.dtype, device=query.device).masked_fill(~mask, float("-inf"))
    out, lse = _flash_with_lse(query, key, value, attn_mask=additive[None, None], scale=scaling)[:2]
    blind = ~mask.any(dim=-1)  # the kernel reports 0, not -inf, for a row that sees no key
    return out.nan_to_num().masked_fill(blind[:, None], 0.0), lse.masked_fill(blind, float("-inf"))


def _window_attention(query, key, value, q_pos, window, scaling, block=512):
    """Causal attention limited to the last `window` keys, one block of queries at a time, so no
    mask is larger than block x (block + window)."""
    outs, lses = [], []
    for start in range(0, query.shape[2], block):
        rows = q_pos[start:start + block]
        low, high = max(0, int(rows[0]) - window + 1), int(rows[-1]) + 1
        keys = torch.arange(low, high, device=query.device)
        seen = (keys[None, :] <= rows[:, None]) & (rows[:, None] - keys[None, :] < window)
        out, lse = _attend(query[:, :, start:start + block], key[:, :, low:high], value[:, :, low:high], seen,
                           scaling)
        outs.append(out)
        lses.append(lse)
    return torch.cat(outs, dim=2), torch.cat(lses, dim=2)


def window_and_far(rule, own_window: int | None, q_pos: torch.Tensor, k_pos: torch.Tensor, kv_len: int):
    """A window mask composed with the layer's own sliding window (Mistral, Qwen2, Gemma's local
    layers): the local window, how many first keys may be seen beyond it, and which (query, key)
    pairs among those are seen: beyond the local window and, under an own window, inside it."""
    window = rule.kind.window(rule.spec)
    if own_window:
        window = min(window, own_window)
    count = min(rule.kind.far_keys(rule.spec), kv_len)
    distance = q_pos[:, None] - k_pos[None, :count]
    far = (distance >= window) & ((distance < own_window) if own_window else True)
    return window, count, far


def two_branch_attention(module, query, key, value, scaling, own_window: int | None = None):
    """Window masks without a dense mask: a local window with normal RoPE, computed block by block,
    plus the first keys (sinks, Lambda's global keys) where they fall outside the window, merged by
    log-sum-exp. Sinks with re-indexing and Lambda change the distance to those first keys by
    rotating the query (and, for Lambda, un-rotating the keys). `own_window` is the layer's own
    sliding window, which both branches keep to. Shapes query [b, h, q, d], key/value [b, h, kv, d]
    (heads repeated); absolute positions are the cache indices (the lab's cache keeps every key, also
    on sliding layers, engines/decoding/cache.py)."""
    rule = current(module.config).rule
    q_len, kv_len = query.shape[2], key.shape[2]
    q_pos = torch.arange(kv_len - q_len, kv_len, device=query.device)
    k_pos = torch.arange(kv_len, device=query.device)
    window, count, _ = window_and_far(rule, own_window, q_pos[:0], k_pos, kv_len)
    parts = [_window_attention(query, key, value, q_pos, window, scaling)]
    if count:
        scale = scaling if scaling is not None else query.shape[-1] ** -0.5
        inv_freq, outs, lses = rule.inv_freq(module), [], []
        for start in range(0, q_len, PORTABLE_ROWS):  # rows x far keys at a time (ReRoPE's far keys: all)
            rows = slice(start, start + PORTABLE_ROWS)
            far = window_and_far(rule, own_window, q_pos[rows], k_pos, kv_len)[2]
            if not bool(far.any()):  # these rows see no far key: no weight from this branch
                outs.append(torch.zeros_like(query[:, :, rows]))
                lses.append(torch.full(query.shape[:2] + (far.shape[0],), float("-inf"), device=query.device))
                continue
            queries, keys, pairs = far_operands(rule, inv_freq, query[:, :, rows], key, q_pos[rows], k_pos, count,
                                                window)
            if pairs is None:  # a turn per query and per key (sinks, Lambda, ReRoPE): the fused kernel, bool mask
                out, lse = _attend(queries, keys, value[:, :, :count], far, scale)
                outs.append(out)
                lses.append(lse)
                continue
            scores = pair_scores(query[:, :, rows], keys, pairs, inv_freq, scale).masked_fill(~far, float("-inf"))
            lse = torch.logsumexp(scores, dim=-1)  # -inf for a row that sees no far key
            weights = torch.exp(scores - lse[..., None]).nan_to_num()
            outs.append((weights @ value[:, :, :count].float()).to(query.dtype))
            lses.append(lse)
        parts.append((torch.cat(outs, dim=2), torch.cat(lses, dim=2)))
    return merge_by_lse(parts)


def far_operands(rule, inv_freq, query, key, q_pos, k_pos, count, window):
    """The queries and the first `count` keys turned to the distance the mask kind gives them beyond the
    window, with the layer's frequencies `inv_freq`. When the turn is per (query, key) pair (Lambda's
    clamp) the queries come back as they are and the turns [q, count] third; otherwise that is None."""
    q_delta, k_delta = rule.kind.far_rotation(rule.spec, q_pos, k_pos, count, window)
    keys = key[:, :, :count] if k_delta is None else rotate(key[:, :, :count], k_delta, inv_freq)
    if q_delta is not None and q_delta.dim() == 2:
        return query, keys, q_delta
    return (query if q_delta is None else rotate(query, q_delta, inv_freq)), keys, None


def pair_scores(query, keys, pairs, inv_freq, scaling):
    """Scores [b, h, q, count] with the query turned by a different amount for each key (`pairs` [q, count])."""
    columns = [(rotate(query, pairs[:, j], inv_freq).float() * keys[:, :, j:j + 1].float()).sum(-1)
               for j in range(keys.shape[2])]
    return torch.stack(columns, dim=-1) * scaling


def far_scores(rule, inv_freq, query, key, q_pos, k_pos, count, window, scaling):
    """Scores [b, h, q, count] of the queries against the first `count` keys at the distance the mask
    kind gives them beyond the window."""
    queries, keys, pairs = far_operands(rule, inv_freq, query, key, q_pos, k_pos, count, window)
    if pairs is None:
        return queries.float() @ keys.float().transpose(-1, -2) * scaling
    return pair_scores(queries, keys, pairs, inv_freq, scaling)


class AttentionCapture:
    """Attention probabilities of chosen query rows over all keys, per layer and head, recorded while
    the model runs with sdpa (no output_attentions): O(rows x L) memory.

    `positions` are absolute prompt positions to record during prefill; with `new_tokens`, every
    generated token's row is recorded too. prompt[layer] is [heads, rows, keys]; steps[i][layer] is
    [heads, keys] for generated token i.
    """

    def __init__(self, positions: list[int], new_tokens: bool = True):
        self.positions = sorted(set(positions))
        self.new_tokens = new_tokens
        self.prompt: dict[int, torch.Tensor] = {}
        self.steps: list[dict[int, torch.Tensor]] = []

    def record(self, layer: int, q_pos: torch.Tensor, probs_for) -> None:
        """`probs_for(rows)` gives [b, heads, len(rows), keys] for row indices of this call."""
        if len(q_pos) == 1 and self.new_tokens and self.prompt:
            if layer == 0:
                self.steps.append({})
            self.steps[-1][layer] = probs_for(torch.tensor([0]))[0, :, 0].float()
            return
        wanted = [i for i, p in enumerate(q_pos.tolist()) if p in set(self.positions)]
        if wanted:
            self.prompt[layer] = probs_for(torch.tensor(wanted, device=q_pos.device))[0].float()

    @property
    def bytes(self) -> int:
        tensors = list(self.prompt.values()) + [t for step in self.steps for t in step.values()]
        return sum(t.numel() * t.element_size() for t in tensors)


class HeadMapCapture:
    """The full query x key attention of one layer and head, pooled to at most `side` x `side` while
    the prompt runs: rows are computed `chunk` at a time, so memory stays O(chunk x L + side^2).
    Cell (i, j) is the mean over the query rows in bin i of the attention mass on the keys in bin j."""

    def __init__(self, layer: int, head: int, side: int = 512, chunk: int = 256):
        self.layer, self.head, self.side, self.chunk = layer, head, side, chunk
        self.sums: torch.Tensor | None = None
        self.counts: torch.Tensor | None = None

    def record(self, layer: int, q_pos: torch.Tensor, probs_for) -> None:
        if layer != self.layer:
            return
        for start in range(0, len(q_pos), self.chunk):
            rows = torch.arange(start, min(start + self.chunk, len(q_pos)), device=q_pos.device)
            probs = probs_for(rows)[0, self.head].float().cpu()  # [rows, keys]
            keys = probs.shape[-1]
            side = min(self.side, keys)
            if self.sums is None:
                self.sums, self.counts = torch.zeros(side, side), torch.zeros(side)
            pooled = torch.zeros(len(rows), side).index_add_(1, torch.arange(keys) * side // keys, probs)
            row_bins = q_pos[rows].cpu() * side // keys
            self.sums.index_add_(0, row_bins, pooled)
            self.counts.index_add_(0, row_bins, torch.ones(len(rows)))

    def result(self) -> torch.Tensor:
        """[side, side]: the pooled map (rows with no query, if any, stay 0)."""
        return self.sums / self.counts.clamp(min=1)[:, None]


def attention_rows(module, query, key, rows, q_pos, k_pos, scaling, attention_mask,
                   own_window: int | None = None) -> torch.Tensor:
    """Softmax attention of the query rows `rows` over all keys, exactly as the forward computed it:
    the mask in use (or causal, within the layer's own sliding window), and for window masks the far
    keys at their changed distance. Shapes: query [b, h, q, d], key [b, h, kv, d] (heads repeated);
    returns [b, h, len(rows), kv]."""
    scaling = scaling if scaling is not None else query.shape[-1] ** -0.5
    q = query[:, :, rows].float()
    scores = q @ key.float().transpose(-1, -2) * scaling
    positions = q_pos[rows]
    rule = current(module.config).rule
    if rule is not None and rule.kind.blockwise:
        window, count, far = window_and_far(rule, own_window, positions, k_pos, key.shape[2])
        seen = (k_pos[None, :] <= positions[:, None]) & (positions[:, None] - k_pos[None, :] < window)
        if count:
            beyond = far_scores(rule, rule.inv_freq(module), query[:, :, rows], key, positions, k_pos, count, window,
                                scaling)
            scores[..., :count] = torch.where(far, beyond, scores[..., :count])
            seen = seen.clone()
            seen[:, :count] |= far
    elif attention_mask is not None and attention_mask.dtype == torch.bool:
        seen = attention_mask[0, 0, rows]
    else:
        seen = (k_pos[None, :] <= positions[:, None]) & (
            (positions[:, None] - k_pos[None, :] < own_window) if own_window else True)
    weighting = rule.kind.document_weighting(rule.spec) if rule is not None else None
    if weighting is not None:  # APE: the question's rows read the documents re-weighted, as the forward did
        return _document_weighted_rows(scores, seen, rule.segments.to(query.device), positions, k_pos, *weighting)
    return torch.softmax(scores.masked_fill(~seen, float("-inf")), dim=-1)


def _document_weighted_rows(scores, seen, segments, positions, k_pos, temperature, scale):
    """Attention probabilities of rows under APE (see document_weighted_attention): scores [b, h, q, kv]."""
    probs = torch.softmax(scores.masked_fill(~seen, float("-inf")), dim=-1)
    rows = segment_at(segments, positions) == SUFFIX
    documents = (segment_at(segments, k_pos) >= 0)[None, :] & seen
    read = (scores / temperature).masked_fill(~documents, float("-inf"))
    own = scores.masked_fill(~(seen & ~documents), float("-inf"))
    read_lse, own_lse = torch.logsumexp(read, -1), torch.logsumexp(own, -1)
    shares = torch.softmax(torch.stack([scale * temperature * read_lse, own_lse]), dim=0).nan_to_num()
    weighted = (torch.softmax(read, -1).nan_to_num() * shares[0][..., None]
                + torch.softmax(own, -1).nan_to_num() * shares[1][..., None])
    return torch.where(rows[None, None, :, None], weighted, probs)


def kind_scores(module, rule, query, key, scaling, own_window: int | None):
    """For a mask kind that scores for itself (PINE): a function of query row indices (into this call)
    giving scores [b, h, rows, kv] over all keys, -inf where unseen, kept within the layer's own
    sliding window. Shapes query [b, h, q, d], key [b, kv_heads, kv, d]."""
    q_len, kv_len = query.shape[2], key.shape[2]
    q_pos = torch.arange(kv_len - q_len, kv_len, device=query.device)
    scaling = scaling if scaling is not None else query.shape[-1] ** -0.5
    score = rule.kind.scorer(rule.spec, rule.segments.to(query.device), query, key, q_pos, rule.inv_freq(module),
                             scaling, rule.kept.setdefault(module.layer_idx, {}))
    if not own_window:
        return score
    far = q_pos[:, None] - torch.arange(kv_len, device=query.device)[None, :] >= own_window
    return lambda rows: score(rows).masked_fill(far[rows], float("-inf"))


def scored_attention(score_rows, value: torch.Tensor, q_len: int) -> torch.Tensor:
    """Softmax attention from a kind's own scores, a block of query rows at a time, as eager attention
    does it (the softmax computed in fp32 and rounded to the value's dtype, which torch's softmax does
    itself on bf16 scores, without an fp32 copy); every row sees at least itself. value [b, h, kv, d]
    (heads repeated)."""
    outs = []
    for start in range(0, q_len, PORTABLE_ROWS):
        rows = torch.arange(start, min(start + PORTABLE_ROWS, q_len), device=value.device)
        outs.append(torch.softmax(score_rows(rows), dim=-1).to(value.dtype) @ value)
    return torch.cat(outs, dim=2)


def lab_sdpa_forward(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):
    q_len, kv_len = query.shape[2], key.shape[2]
    state = current(module.config)
    groups = getattr(module, "num_key_value_groups", 1)
    scored = None
    if state.rule is not None and state.rule.kind.scores_itself:
        scored = kind_scores(module, state.rule, query, key, scaling, kwargs.get("sliding_window"))
    capture = state.capture
    if capture is not None:
        q_pos = torch.arange(kv_len - q_len, kv_len, device=query.device)
        k_pos = torch.arange(kv_len, device=query.device)
        full_key = repeat_kv(key, groups)
        capture.record(module.layer_idx, q_pos, (lambda rows: torch.softmax(scored(rows), -1, dtype=torch.float32))
                       if scored is not None else (lambda rows: attention_rows(
                           module, query, full_key, rows, q_pos, k_pos, scaling, attention_mask,
                           kwargs.get("sliding_window"))))
    if scored is not None:
        out, weights = scored_attention(scored, repeat_kv(value, groups), q_len).transpose(1, 2).contiguous(), None
    else:
        out, weights = _lab_attention(module, query, key, value, attention_mask, dropout, scaling, **kwargs)
    masked_heads = state.head_mask.get(module.layer_idx)
    if masked_heads:
        return uniform_heads(out, value, masked_heads, groups, kwargs.get("sliding_window")), weights
    return out, weights


def uniform_heads(out: torch.Tensor, value: torch.Tensor, heads: list[int], groups: int,
                  own_window: int | None = None) -> torch.Tensor:
    """Replace the output of `heads` with uniform causal attention (pre-softmax scores all zero): the
    mean of the values each query sees, within the layer's own sliding window when it has one.
    out [b, q, h, d], value [b, kv_heads, kv, d]."""
    q_len, kv_len = out.shape[1], value.shape[2]
    sums = torch.nn.functional.pad(value.float().cumsum(dim=2), (0, 0, 1, 0))  # sums[:, :, t] = sum of keys < t
    ends = torch.arange(kv_len - q_len + 1, kv_len + 1, device=value.device)  # each query sees keys < end
    starts = (ends - own_window).clamp(min=0) if own_window else torch.zeros_like(ends)
    means = (sums[:, :, ends] - sums[:, :, starts]) / (ends - starts)[None, None, :, None]
    out = out.clone()
    for head in heads:
        out[:, :, head] = means[:, head // groups].to(out.dtype)
    return out


def document_weighted_attention(query, key, value, seen, segments, scaling, temperature, scale):
    """APE's reading of parallel documents (authors' code, ape_llama.py): rows of the question and answer
    (segment SUFFIX) attend to the documents' keys with scores divided by `temperature` and to the other
    keys they see as usual, the two merged with weights softmax(scale x temperature x lse_documents,
    lse_others); every other row attends as `seen` [q, kv] says. Shapes query [b, h, q, d], key/value
    [b, h, kv, d] (heads repeated)."""
    q_len, kv_len = query.shape[2], key.shape[2]
    scaling = scaling if scaling is not None else query.shape[-1] ** -0.5
    segments = segments.to(query.device)
    out, _ = _attend(query, key, value, seen, scaling)
    rows = segment_at(segments, torch.arange(kv_len - q_len, kv_len, device=query.device)) == SUFFIX
    if bool(rows.any()):
        documents = (segment_at(segments, torch.arange(kv_len, device=query.device)) >= 0)[None, :] & seen[rows]
        read, read_lse = _attend(query[:, :, rows], key, value, documents, scaling / temperature)
        own, own_lse = _attend(query[:, :, rows], key, value, seen[rows] & ~documents, scaling)
        shares = torch.softmax(torch.stack([scale * temperature * read_lse, own_lse]).float(), dim=0).nan_to_num()
        out[:, :, rows] = (read.float() * shares[0][..., None] + own.float() * shares[1][..., None]).to(out.dtype)
    return out


def _lab_attention(module, query, key, value, attention_mask, dropout, scaling, **kwargs):
    q_len, kv_len = query.shape[2], key.shape[2]
    rule = current(module.config).rule
    if rule is not None and rule.kind.blockwise:  # on any device: the CPU kernel or the portable path
        groups = getattr(module, "num_key_value_groups", 1)
        out = two_branch_attention(module, query, repeat_kv(key, groups), repeat_kv(value, groups), scaling,
                                   kwargs.get("sliding_window"))
        return out.transpose(1, 2).contiguous(), None
    weighting = rule.kind.document_weighting(rule.spec) if rule is not None else None
    if weighting is not None:  # APE: the question and answer re-weigh the documents (bool mask from lab_mask)
        groups = getattr(module, "num_key_value_groups", 1)
        out = document_weighted_attention(query, repeat_kv(key, groups), repeat_kv(value, groups),
                                          attention_mask[0, 0], rule.segments, scaling, *weighting)
        return out.transpose(1, 2).contiguous(), None
    if (attention_path(query.device.type) == "cpu-fused" and dropout == 0.0 and 1 < q_len < kv_len
            and is_causal_after_prefix(attention_mask, q_len, kv_len)):
        out = prefix_chunk_attention(query, key, value, scaling)
        return out.transpose(1, 2).contiguous(), None
    own_window = kwargs.get("sliding_window")
    if (rule is None and own_window and attention_path(query.device.type) == "cpu-fused" and dropout == 0.0
            and q_len == kv_len > 2 * own_window and query.shape[0] == 1):
        # a sliding layer's fresh prefill: only each block's window of keys, not a dense L x L mask
        groups = getattr(module, "num_key_value_groups", 1)
        out, _ = _window_attention(query, repeat_kv(key, groups), repeat_kv(value, groups),
                                   torch.arange(q_len, device=query.device), own_window, scaling)
        return out.transpose(1, 2).contiguous(), None
    return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout,
                                  scaling=scaling, **kwargs)


def lab_mask(batch_size, q_length, kv_length, q_offset=0, kv_offset=0, mask_function=None, config=None,
             allow_is_causal_skip=True, **kwargs):
    """transformers' sdpa mask, unless the model carries a lab mask rule: then a bool mask from it,
    kept within the layer's own sliding window when transformers builds the mask of sliding layers
    (it passes the window as `local_size`)."""
    rule = current(config).rule
    if rule is None or rule.kind.blockwise or rule.kind.scores_itself:
        return sdpa_mask(batch_size=batch_size, q_length=q_length, kv_length=kv_length, q_offset=q_offset,
                         kv_offset=kv_offset, mask_function=mask_function, config=config,
                         allow_is_causal_skip=allow_is_causal_skip, **kwargs)
    device = kwargs.get("device", "cpu")
    q = torch.arange(q_offset, q_offset + q_length, device=device)[:, None]
    k = torch.arange(kv_offset, kv_offset + kv_length, device=device)[None, :]
    seen = rule.visibility(q, k)
    if kwargs.get("local_size"):
        seen = seen & (q - k < kwargs["local_size"])
    return seen[None, None].expand(batch_size, 1, -1, -1)


AttentionInterface.register(LAB_ATTENTION, lab_sdpa_forward)
AttentionMaskInterface.register(LAB_ATTENTION, lab_mask)


def use_lab_attention(model) -> None:
    """Switch a loaded model to the lab's attention function (same results as sdpa)."""
    model.set_attn_implementation(LAB_ATTENTION)

