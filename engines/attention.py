"""The lab's attention function, registered with transformers under the name `lab_sdpa`.

It is transformers' sdpa with one change: when a chunk of queries follows a cached prefix under a
plain causal mask (a prompt continuing a shared prefix), it attends to the prefix without a mask and
to itself with the fused causal kernel, and merges the two by their log-sum-exp. A masked kernel
would compute every query x key pair; this skips the masked half of the chunk's own block.
"""
from __future__ import annotations

import torch
from transformers import AttentionInterface, AttentionMaskInterface
from transformers.integrations.sdpa_attention import repeat_kv, sdpa_attention_forward
from transformers.masking_utils import sdpa_mask

LAB_ATTENTION = "lab_sdpa"
_flash_with_lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu


def is_causal_after_prefix(mask: torch.Tensor | None, q_len: int, kv_len: int) -> bool:
    """True when `mask` [batch, 1, q, kv] lets query i see exactly keys 0..(kv - q + i)."""
    if mask is None or mask.dtype != torch.bool or mask.shape[-2:] != (q_len, kv_len) or mask.shape[0] != 1:
        return False
    rows = torch.arange(q_len, device=mask.device)[:, None] + (kv_len - q_len)
    return bool(torch.equal(mask[0, 0], torch.arange(kv_len, device=mask.device)[None, :] <= rows))


def merge_by_lse(parts: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
    """Combine attention outputs over disjoint key sets, given each part's log-sum-exp [b, h, q]."""
    lse = torch.stack([p[1] for p in parts])
    weights = torch.softmax(lse, dim=0)  # each part's share of the total softmax mass
    return sum(out.float() * w[..., None] for (out, _), w in zip(parts, weights)).to(parts[0][0].dtype)


def prefix_chunk_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                           scaling: float | None) -> torch.Tensor:
    """Causal attention of the last q positions over all keys, in two fused calls. Shapes
    query [b, h, q, d], key/value [b, h, kv, d] (heads already repeated); returns [b, h, q, d]."""
    prefix = key.shape[2] - query.shape[2]
    before = _flash_with_lse(query, key[:, :, :prefix], value[:, :, :prefix], scale=scaling)
    own = _flash_with_lse(query, key[:, :, prefix:], value[:, :, prefix:], is_causal=True, scale=scaling)
    return merge_by_lse([before[:2], own[:2]])


def lab_sdpa_forward(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):
    q_len, kv_len = query.shape[2], key.shape[2]
    if (query.device.type == "cpu" and dropout == 0.0 and 1 < q_len < kv_len
            and is_causal_after_prefix(attention_mask, q_len, kv_len)):
        groups = getattr(module, "num_key_value_groups", 1)
        out = prefix_chunk_attention(query, repeat_kv(key, groups), repeat_kv(value, groups), scaling)
        return out.transpose(1, 2).contiguous(), None
    return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout,
                                  scaling=scaling, **kwargs)


AttentionInterface.register(LAB_ATTENTION, lab_sdpa_forward)
AttentionMaskInterface.register(LAB_ATTENTION, sdpa_mask)


def use_lab_attention(model) -> None:
    """Switch a loaded model to the lab's attention function (same results as sdpa)."""
    model.set_attn_implementation(LAB_ATTENTION)
