"""The lab's attention function against transformers' eager attention, on a small random Llama."""
import pytest
import torch
from transformers import DynamicCache, LlamaConfig, LlamaForCausalLM

from engines.attention.function import LAB_ATTENTION, is_causal_after_prefix, merge_by_lse, use_lab_attention


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512)
    return LlamaForCausalLM(config).eval()


def test_prefix_then_chunk_equals_one_eager_pass(tiny):
    ids = torch.randint(0, 128, (1, 300))
    tiny.set_attn_implementation("eager")
    with torch.inference_mode():
        reference = tiny(input_ids=ids).logits[0, 180:]
        use_lab_attention(tiny)
        assert tiny.config._attn_implementation == LAB_ATTENTION
        cache = DynamicCache()
        tiny(input_ids=ids[:, :180], cache=cache)
        chunk = tiny(input_ids=ids[:, 180:], cache=cache).logits[0]
    assert torch.allclose(chunk, reference, atol=1e-4)


def test_causal_after_prefix_detection():
    q, kv = 3, 5
    causal = (torch.arange(kv)[None, :] <= torch.arange(q)[:, None] + 2)[None, None]
    assert is_causal_after_prefix(causal, q, kv)
    window = causal.clone()
    window[0, 0, 2, 0] = False  # a sliding window hides an old key: not plain causal
    assert not is_causal_after_prefix(window, q, kv)
    assert not is_causal_after_prefix(None, q, kv) and not is_causal_after_prefix(causal.float(), q, kv)


def test_merge_by_lse_equals_softmax_over_all_keys():
    torch.manual_seed(1)
    scores = torch.randn(1, 2, 4, 10)
    values = torch.randn(1, 2, 10, 8)
    full = torch.softmax(scores, -1) @ values
    parts = [(torch.softmax(scores[..., s], -1) @ values[:, :, s], torch.logsumexp(scores[..., s], -1))
             for s in (slice(0, 6), slice(6, 10))]
    assert torch.allclose(merge_by_lse(parts), full, atol=1e-5)


def test_pooled_head_map_equals_pooled_eager_attention(tiny):
    from engines.attention.function import HeadMapCapture
    from engines.config.specs import MaskSpec, RopeSpec
    from engines.context.run import run_state

    ids = torch.randint(0, 128, (1, 300))
    tiny.set_attn_implementation("eager")
    with torch.inference_mode():
        eager = tiny(input_ids=ids, output_attentions=True).attentions[1][0, 3]  # layer 1, head 3: [300, 300]
        use_lab_attention(tiny)
        token_level, pooled = HeadMapCapture(1, 3, side=512, chunk=64), HeadMapCapture(1, 3, side=100, chunk=64)
        for capture in (token_level, pooled):
            with run_state(tiny, RopeSpec(), MaskSpec(), capture=capture):
                tiny(input_ids=ids)
    assert torch.allclose(token_level.result(), eager, atol=1e-5)  # 300 tokens fit: one cell per token pair
    bins = torch.arange(300) * 100 // 300
    expected = torch.zeros(100, 300).index_add_(0, bins, eager) / 3  # three query rows per bin
    expected = torch.zeros(100, 100).index_add_(1, bins, expected)
    assert torch.allclose(pooled.result(), expected, atol=1e-5)
    assert torch.allclose(pooled.result().sum(dim=1), torch.ones(100), atol=1e-4)  # each row still sums to 1
