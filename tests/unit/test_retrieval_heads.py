"""Retrieval-head scoring on a crafted attention pattern, and head masking on a small random Llama."""
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from engines.attention.views import retrieval_scores
from engines.config.specs import MaskSpec, RopeSpec
from engines.context.run import run_state


def test_copy_paste_scoring_on_a_crafted_pattern():
    prompt = [5, 6, 7, 8, 9, 10, 11, 12]
    span = (3, 6)  # the needle's answer tokens 8, 9, 10
    generated = [8, 9, 10, 99]
    layers, heads, keys = 2, 3, len(prompt)
    steps = []
    for t, _token in enumerate(generated):
        attention = torch.full((layers, heads, keys), 0.01)
        attention[0, 1, 3 + min(t, 2)] = 0.9  # layer 0 head 1 copies 8, 9, 10 in turn
        attention[1, 2, 3] = 0.9              # layer 1 head 2 always looks at 8: right only at step 0
        attention[1, 0, 0] = 0.9              # layer 1 head 0 looks outside the span
        steps.append(attention)
    scores = retrieval_scores(steps, generated, prompt, span)
    assert scores[0, 1] == 1.0                      # three copies of a three-token span
    assert torch.isclose(scores[1, 2], torch.tensor(1 / 3))
    assert scores[1, 0] == 0 and scores[0, 0] == 0
    assert int((scores > 0.1).sum()) == 2


def test_masking_heads_changes_only_what_it_should():
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=64, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    model = LlamaForCausalLM(config).eval()
    model.set_attn_implementation("lab_sdpa")
    ids = torch.randint(0, 64, (1, 20))
    with torch.inference_mode():
        before = model(input_ids=ids).logits
        with run_state(model, RopeSpec(), MaskSpec(), heads=[(0, 1), (1, 3)]):
            masked = model(input_ids=ids).logits
        after = model(input_ids=ids).logits
    assert torch.equal(before, after) and model.config.lab_run is None
    assert torch.allclose(masked[:, 0], before[:, 0], atol=1e-5)  # the first token sees only itself either way
    assert not torch.allclose(masked[:, 1:], before[:, 1:], atol=1e-3)


def test_layer_position_and_segment_masses_add_up():
    from engines.attention.views import layer_position, segment_mass

    torch.manual_seed(2)
    matrix = torch.softmax(torch.randn(3, 2, 100), dim=-1)  # [layers, heads, keys]
    rows = layer_position(matrix, bins=10)
    assert len(rows) == 3 and all(abs(sum(r) - 1) < 1e-5 for r in rows)
    spans = [{"kind": "haystack", "label": "noise", "token_start": 10, "token_end": 90},
             {"kind": "needle", "label": "needle", "token_start": 40, "token_end": 45}]
    masses = segment_mass(matrix, spans)
    assert abs(sum(masses.values()) - 1) < 1e-5  # every key counted once
    assert masses["needle: needle"] == float(matrix.mean(dim=(0, 1))[40:45].sum())
    assert len([k for k in masses if k.startswith("haystack")]) == 10
