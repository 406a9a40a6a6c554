"""Attention masks: the visibility rules against masks built independently here, and the model run
under each mask against direct computations on a small random Llama."""
import pytest
import torch
from conftest import one_layer_inputs, one_layer_logits
from transformers import LlamaConfig, LlamaForCausalLM

from engines.attention.function import AttentionCapture, attention_path, lab_mask
from engines.attention.state import current
from engines.config.specs import MaskSpec, RopeSpec, SpecError
from engines.context.masks import PREFIX, SUFFIX, segment_ids, shared_positions, visible
from engines.context.rope import frequencies
from engines.context.run import mask_grid, run_state

N = 24
SEGMENTS = torch.tensor([PREFIX] * 4 + [0] * 6 + [1] * 6 + [2] * 4 + [SUFFIX] * 4)


def reference(kind: str, params: dict, i: int, j: int) -> bool:
    """The rules written out for one (query, key) pair, apart from engines/context/masks/."""
    if j > i and kind != "pine":
        return False
    if kind == "causal":
        return True
    if kind == "sliding_window":
        return i - j < params["window"]
    if kind == "sinks":
        return j < params["n_sink"] or i - j < params["window"]
    if kind == "lambda":
        return j < params["n_global"] or i - j < params["n_local"]
    seg_i = int(SEGMENTS[i]) if i < len(SEGMENTS) else SUFFIX
    seg_j = int(SEGMENTS[j]) if j < len(SEGMENTS) else SUFFIX
    within = seg_i == seg_j or seg_j == PREFIX or seg_i == SUFFIX
    if kind == "segments":
        return within
    if j > i:  # pine: later tokens only from another document
        return seg_i >= 0 and seg_j >= 0 and seg_i != seg_j
    return within or (seg_i >= 0 and seg_j >= 0)


@pytest.mark.parametrize("kind, params", [
    ("causal", {}), ("sliding_window", {"window": 5}), ("sinks", {"n_sink": 2, "window": 5}),
    ("lambda", {"n_global": 3, "n_local": 6}), ("segments", {}), ("pine", {}),
])
def test_visibility_equals_the_rules_written_out(kind, params):
    spec = MaskSpec(kind, params)
    got = visible(spec, torch.arange(N + 3)[:, None], torch.arange(N + 3)[None, :], SEGMENTS)
    expected = torch.tensor([[reference(kind, params, i, j) for j in range(N + 3)] for i in range(N + 3)])
    assert torch.equal(got, expected)


def test_segments_and_shared_positions_from_spans():
    spans = [{"kind": "haystack", "token_start": 2, "token_end": 20}, {"kind": "document", "token_start": 4, "token_end": 9},
             {"kind": "gold", "token_start": 10, "token_end": 16}, {"kind": "document", "token_start": 16, "token_end": 20}]
    segments = segment_ids(24, spans)
    assert segments.tolist() == [PREFIX] * 4 + [0] * 6 + [1] * 6 + [2] * 4 + [SUFFIX] * 4
    positions = shared_positions(segments)
    assert positions[:4].tolist() == [0, 1, 2, 3]
    assert positions[4] == positions[10] == positions[16] == 4  # every document starts at 4
    assert positions[20:].tolist() == [10, 11, 12, 13]  # after the longest document (6 tokens)


@pytest.mark.parametrize("text, words", [
    ("sinks:n_sink=8,window=4", "must be larger than the sink count"),
    ("sliding_window:window=0", "window=0 is out of range; give 1 or more"),
    ("blur", "Unknown mask kind 'blur'"),
    ("sinks:size=3", "has no setting size"),
    ("sinks:window=ten", "window='ten' must be a whole number"),
])
def test_bad_mask_settings(text, words):
    with pytest.raises(SpecError, match=words):
        MaskSpec.parse(text)


@pytest.fixture()
def one_layer():
    torch.manual_seed(3)
    config = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                         rope_parameters={"rope_type": "default", "rope_theta": 1e4})
    model = LlamaForCausalLM(config).eval()
    model.set_attn_implementation("lab_sdpa")
    return model


def eager_with_mask(model, ids, mask_rows):
    """Eager attention with an explicit additive 4D mask built from a bool matrix."""
    model.set_attn_implementation("eager")
    additive = torch.zeros(mask_rows.shape).masked_fill(~mask_rows, float("-inf"))[None, None]
    try:
        return model(input_ids=ids, attention_mask=additive).logits
    finally:
        model.set_attn_implementation("lab_sdpa")


@pytest.fixture(params=["cpu-fused", "portable"])
def path(request, monkeypatch):
    """Each window-mask test runs on the CPU kernel and on the portable path (what runs off the CPU)."""
    monkeypatch.setenv("CONTEXT_LAB_PORTABLE_ATTENTION", "1" if request.param == "portable" else "0")
    assert attention_path("cpu") == request.param
    return request.param


@pytest.mark.parametrize("spec", [MaskSpec("sliding_window", {"window": 7}), MaskSpec("sinks", {"n_sink": 3, "window": 7}),
                                  MaskSpec("lambda", {"n_global": 2, "n_local": 40})])
def test_masked_model_equals_eager_attention_with_the_same_mask(one_layer, spec, path):
    ids = torch.randint(0, 64, (1, 40))
    with torch.inference_mode():
        with run_state(one_layer, RopeSpec(), spec):
            ours = one_layer(input_ids=ids).logits
            rows = visible(spec, torch.arange(40)[:, None], torch.arange(40)[None, :])
            assert torch.allclose(ours, eager_with_mask(one_layer, ids, rows), atol=1e-5)


def last_logits_at_positions(model, ids, positions):
    with torch.inference_mode():
        return model(input_ids=ids[None], position_ids=positions[None]).logits[0, -1]


def test_sinks_with_reindexing_equal_a_streaming_cache(one_layer, path):
    """With one layer, the query's output depends only on which tokens it sees and their positions: a
    cache holding sinks + window at slots 0..n_sink+window-1 is the reference."""
    n_sink, window, length = 3, 6, 30
    ids = torch.randint(0, 64, (length,))
    with torch.inference_mode():
        with run_state(one_layer, RopeSpec(), MaskSpec("sinks", {"n_sink": n_sink, "window": window, "reindex": 1})):
            ours = one_layer(input_ids=ids[None]).logits[0]
    for i in (n_sink + window + 2, 20, length - 1):
        kept = list(range(n_sink)) + list(range(i - window + 1, i + 1))
        expected = last_logits_at_positions(one_layer, ids[kept], torch.arange(len(kept)))
        assert torch.allclose(ours[i], expected, atol=1e-4), i
    with torch.inference_mode():
        plain = one_layer(input_ids=ids[None]).logits[0]
    assert torch.allclose(ours[: n_sink + window], plain[: n_sink + window], atol=1e-5)  # cache not full yet


def test_lambda_mask_caps_the_distance_to_global_keys(one_layer, path):
    n_global, n_local, length = 2, 6, 30
    ids = torch.randint(0, 64, (length,))
    with torch.inference_mode():
        with run_state(one_layer, RopeSpec(), MaskSpec("lambda", {"n_global": n_global, "n_local": n_local})):
            ours = one_layer(input_ids=ids[None]).logits[0]
    for i in (15, length - 1):
        far = [j for j in range(n_global) if i - j >= n_local]
        local = list(range(i - n_local + 1, i + 1))
        kept = far + local
        positions = torch.tensor([i - n_local] * len(far) + local)  # global keys at distance d_max = n_local
        expected = last_logits_at_positions(one_layer, ids[kept], positions)
        assert torch.allclose(ours[i], expected, atol=1e-4), i


def test_causal_keeps_the_fused_path_and_default_equals_the_unmodified_model(one_layer):
    ids = torch.randint(0, 64, (1, 30))
    with torch.inference_mode():
        before = one_layer(input_ids=ids).logits
        with run_state(one_layer, RopeSpec(), MaskSpec("sliding_window", {"window": 4})):
            assert not torch.allclose(one_layer(input_ids=ids).logits, before)
        assert torch.equal(one_layer(input_ids=ids).logits, before)
    assert lab_mask(1, 30, 30, config=one_layer.config) is None  # no mask at all: the fused causal kernel


def test_far_keys_use_the_live_frequencies_of_dynamic_rope():
    """Past the trained length dynamic RoPE swaps its frequencies during the forward; the re-rotated
    sink keys must use those, not the ones in place when the run began. Reference: the NTK kind with
    the factor dynamic RoPE reaches at that length, s' = s x L / L_trained - (s - 1), a static module."""
    torch.manual_seed(5)
    trained, length, factor = 32, 60, 2.0
    config = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=trained,
                         rope_parameters={"rope_type": "default", "rope_theta": 1e4})
    model = LlamaForCausalLM(config).eval()
    model.set_attn_implementation("lab_sdpa")
    ids = torch.randint(0, 64, (1, length))
    mask = MaskSpec("sinks", {"n_sink": 2, "window": 8, "reindex": 1})
    with torch.inference_mode():
        with run_state(model, RopeSpec("dynamic", factor), mask):
            dynamic = model(input_ids=ids).logits
        with run_state(model, RopeSpec("ntk", factor * length / trained - (factor - 1)), mask):
            static = model(input_ids=ids).logits
        with run_state(model, RopeSpec("dynamic", factor), MaskSpec("sliding_window", {"window": 8})):
            no_sinks = model(input_ids=ids).logits
    assert torch.allclose(dynamic, static, atol=1e-4)
    assert not torch.allclose(dynamic, no_sinks, atol=1e-3)  # the sinks matter here


def test_lambda_local_window_defaults_to_the_trained_length(one_layer):
    """LM-Infinite's n_local is the model's trained length unless given: 128 positions here."""
    assert MaskSpec("lambda").get("n_local") is None
    ids = torch.randint(0, 64, (1, 40))
    with torch.inference_mode():
        with run_state(one_layer, RopeSpec(), MaskSpec("lambda")):
            rule = current(one_layer.config).rule
            ours = one_layer(input_ids=ids).logits
        plain = one_layer(input_ids=ids).logits
    assert rule.spec.get("n_local") == one_layer.config.max_position_embeddings == 128
    assert torch.allclose(ours, plain, atol=1e-5)  # 40 tokens all fall inside a 128-token window
    rows, _ = mask_grid(MaskSpec("lambda", {"n_global": 1}), 64, points=64, trained=16)
    assert rows[40][:2] == [True, False] and rows[40][25] is True and rows[40][24] is False


def test_giraffe_scale_divides_the_truncated_basis_by_the_factor():
    plain, _ = frequencies(RopeSpec("giraffe", 4.0), 1e4, 64, 512)
    scaled, _ = frequencies(RopeSpec("giraffe", 4.0, {"scale": 1}), 1e4, 64, 512)
    assert torch.allclose(scaled, plain / 4) and (plain == 0).any() and (plain > 0).any()


@pytest.mark.parametrize("distance", ["fixed", "clamp"])
def test_lambda_distance_to_global_keys_fixed_or_clamped(one_layer, path, distance):
    """Reference: the kept tokens alone at explicit positions; a global key j seen by query i sits at
    distance d_max (the released code) or min(i - j, d_max) (the paper)."""
    n_global, n_local, d_max, length = 2, 6, 10, 30
    ids = torch.randint(0, 64, (length,))
    spec = MaskSpec("lambda", {"n_global": n_global, "n_local": n_local, "d_max": d_max, "distance": distance})
    with torch.inference_mode(), run_state(one_layer, RopeSpec(), spec):
        ours = one_layer(input_ids=ids[None]).logits[0]
    for i in (8, 9, 12, length - 1):
        far = [j for j in range(n_global) if i - j >= n_local]
        local = list(range(i - n_local + 1, i + 1))
        far_at = [i - (d_max if distance == "fixed" else min(i - j, d_max)) for j in far]
        expected = last_logits_at_positions(one_layer, ids[far + local], torch.tensor(far_at + local))
        assert torch.allclose(ours[i], expected, atol=1e-4), (i, distance)


def test_clip_caps_every_distance_at_its_limit(one_layer, path):
    """ReRoPE: every key seen, those further back than the cap at exactly the cap. Reference: all the
    tokens at explicit positions, the far ones moved to i - distance."""
    distance, length = 7, 30
    ids = torch.randint(0, 64, (length,))
    with torch.inference_mode():
        with run_state(one_layer, RopeSpec(), MaskSpec("clip", {"distance": distance})):
            ours = one_layer(input_ids=ids[None]).logits[0]
        plain = one_layer(input_ids=ids[None]).logits[0]
    for i in (5, 12, length - 1):
        positions = torch.tensor([i - distance if i - j >= distance else j for j in range(i + 1)])
        assert torch.allclose(ours[i], last_logits_at_positions(one_layer, ids[:i + 1], positions), atol=1e-4), i
    assert torch.allclose(ours[:distance], plain[:distance], atol=1e-5)  # nothing is further back yet
    assert not torch.allclose(ours[distance:], plain[distance:], atol=1e-3)
    assert MaskSpec("clip").get("distance") is None  # the trained length unless given


SPANS = [{"kind": "document", "token_start": 4, "token_end": 9}, {"kind": "gold", "token_start": 10, "token_end": 16},
         {"kind": "document", "token_start": 16, "token_end": 20}]


def ape_reference(model, ids, positions, temperature, scale):
    """The one layer by hand: segments' visibility at shared positions, and for the question's rows the
    documents read with scores / temperature, merged with the other keys by exp(scale x temperature x lse)."""
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    hidden, x, q, k, v = one_layer_inputs(model, ids)
    q, k = apply_rotary_pos_emb(q, k, *model.model.rotary_emb(x, positions[None]))
    scores = (q @ k.transpose(-1, -2))[0] / 8 ** 0.5  # heads x L x L
    mix = lambda probs, values: torch.einsum("hk,hkd->hd", probs, values)  # noqa: E731
    rows, probabilities = [], {}
    for i in range(ids.shape[1]):
        seen = torch.tensor([reference("segments", {}, i, j) for j in range(ids.shape[1])])
        document = torch.tensor([j < len(SEGMENTS) and int(SEGMENTS[j]) >= 0 for j in range(ids.shape[1])])
        if i < len(SEGMENTS) and int(SEGMENTS[i]) != SUFFIX:
            rows.append(mix(torch.softmax(scores[:, i].masked_fill(~seen, float("-inf")), -1), v[0]))
            continue
        read = (scores[:, i] / temperature).masked_fill(~(seen & document), float("-inf"))
        own = scores[:, i].masked_fill(~(seen & ~document), float("-inf"))
        weights = torch.softmax(torch.stack([scale * temperature * read.logsumexp(-1), own.logsumexp(-1)]), 0)
        probabilities[i] = weights[0][:, None] * torch.softmax(read, -1) + weights[1][:, None] * torch.softmax(own, -1)
        rows.append(mix(probabilities[i], v[0]))
    return one_layer_logits(model, hidden, rows), probabilities


@pytest.mark.parametrize("temperature, scale", [(0.9, 0.9), (0.5, 1.3), (1.0, 1.0)])
def test_ape_equals_its_attention_written_out(one_layer, temperature, scale):
    ids = torch.randint(0, 64, (1, N))
    spec = MaskSpec("ape", {"temperature": temperature, "scale": scale})
    capture = AttentionCapture([21, 23], new_tokens=False)
    with torch.inference_mode():
        with run_state(one_layer, RopeSpec(), spec, SPANS, N, capture) as positions:
            ours = one_layer(input_ids=ids, position_ids=positions[None]).logits
        expected, probabilities = ape_reference(one_layer, ids, positions, temperature, scale)
        with run_state(one_layer, RopeSpec(), MaskSpec("segments", {"shared_positions": 1}), SPANS, N) as positions:
            plain = one_layer(input_ids=ids, position_ids=positions[None]).logits
    assert torch.allclose(ours, expected, atol=1e-5)
    assert torch.allclose(capture.prompt[0], torch.stack([probabilities[21], probabilities[23]], 1), atol=1e-5)
    assert torch.allclose(ours[:, :20], plain[:, :20], atol=1e-5)  # the documents are encoded as parallel encoding
    assert (temperature, scale) == (1.0, 1.0) or not torch.allclose(ours[:, 20:], plain[:, 20:], atol=1e-3)
