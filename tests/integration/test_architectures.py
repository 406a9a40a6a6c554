"""Beyond Llama: tiny random-weight Qwen2 (full and sliding layers mixed), Mistral (a sliding window
on every layer), Phi-3 (half the head dimension rotated) and Gemma 3 (local and global layers, each
with its own RoPE) models built from their configs, run
through the lab's own paths and checked against stock transformers (eager attention, its own RoPE
scaling, generate()) and against masks written out here. Prompts are longer than the models'
sliding windows, so the windows bind."""
import pytest
import torch
from transformers import (
    Gemma3ForCausalLM,
    Gemma3TextConfig,
    MistralConfig,
    MistralForCausalLM,
    Phi3Config,
    Phi3ForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
)
from transformers.models.phi3.modeling_phi3 import apply_rotary_pos_emb

from engines.attention.function import AttentionCapture, rotate
from engines.config.errors import SpecError
from engines.config.kinds import entries
from engines.config.specs import DecodingSpec, MaskSpec, ModelSpec, RopeSpec, RunConfig
from engines.context.masks import segment_ids, visible
from engines.context.rope import rope_parameters
from engines.context.run import run_state
from engines.decoding.decode import decode
from engines.decoding.generation import encode
from engines.model.loading import MANAGER
from engines.probes.runner import run_free, run_probe
from engines.probes.tasks import ProbeSpec, build_probe
from engines.studies.sweeps import SweepSpec, build_cells, run_sweep

pytestmark = pytest.mark.model
WINDOW, TRAINED, LENGTH = 256, 2048, 600
SHAPES = {
    "qwen2": (Qwen2ForCausalLM, Qwen2Config, {"rope_theta": 1e6, "sliding_window": WINDOW, "use_sliding_window": True,
                                              "layer_types": ["full_attention", "sliding_attention"]}),
    "mistral": (MistralForCausalLM, MistralConfig, {"sliding_window": WINDOW}),
    "phi3": (Phi3ForCausalLM, Phi3Config, {"partial_rotary_factor": 0.5}),
    "gemma3": (Gemma3ForCausalLM, Gemma3TextConfig, {"head_dim": 16, "sliding_window": WINDOW,
                                                     "layer_types": ["sliding_attention", "full_attention"]}),
}
GEMMA_THETAS = {"sliding_attention": 1e4, "full_attention": 1e6}  # Gemma3TextConfig's defaults


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory, tokenizer):
    """Each architecture saved with the embedded model's tokenizer, as a person's local model would be."""
    dirs = {}
    for name, (model_class, config_class, own) in SHAPES.items():
        config = config_class(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                              num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=TRAINED,
                              bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                              pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=True, **own)
        torch.manual_seed(0)
        path = tmp_path_factory.mktemp(name)
        model_class(config).save_pretrained(path)
        tokenizer.save_pretrained(path)
        dirs[name] = path
    return dirs


def lab_model(model_dirs, name):
    return MANAGER.get(ModelSpec(model=str(model_dirs[name]), dtype="fp32"))


def stock(model_dirs, name, rope: RopeSpec | None = None, loaded=None):
    """The same weights in plain transformers with eager attention (and its own RoPE scaling)."""
    model_class, _, _ = SHAPES[name]
    model = model_class.from_pretrained(model_dirs[name], attn_implementation="eager", dtype=torch.float32)
    if rope is not None:
        rotary = type(loaded.model.model.rotary_emb)
        if name == "gemma3":  # written out: the chosen layer types scaled, the others at their own theta
            scaled = {"all": GEMMA_THETAS, "global": ["full_attention"], "local": ["sliding_attention"]}[rope.layer_type]
            model.config.rope_parameters = {
                t: rope_parameters(rope, theta, TRAINED, 16) if t in scaled else {"rope_type": "default",
                                                                                   "rope_theta": theta}
                for t, theta in GEMMA_THETAS.items()}
        else:
            model.config.rope_parameters = rope_parameters(rope, model.config.rope_parameters["rope_theta"], TRAINED,
                                                           loaded.model.model.rotary_emb.inv_freq.shape[0] * 2)
        model.model.rotary_emb = rotary(config=model.config)
    return model.eval()


def ids_of(length=700):
    return torch.randint(100, 5000, (1, length), generator=torch.Generator().manual_seed(1))


def lab_logits(loaded, ids, rope=RopeSpec(), mask=MaskSpec(), spans=None):
    with torch.inference_mode(), run_state(loaded.model, rope, mask, spans, ids.shape[1]) as positions:
        return loaded.model(input_ids=ids, position_ids=positions).logits


@pytest.mark.parametrize("name", list(SHAPES))
@pytest.mark.parametrize("rope", ["default", "yarn:2", "linear:2", "dynamic:2"])
def test_rope_kinds_equal_transformers_own(model_dirs, name, rope):
    loaded = lab_model(model_dirs, name)
    spec = RopeSpec.parse(rope)
    ids = ids_of(2600 if spec.kind == "dynamic" else 700)  # dynamic changes only past the trained length
    with torch.inference_mode():
        reference = stock(model_dirs, name, spec if spec.kind != "default" else None, loaded)(input_ids=ids).logits
    assert torch.allclose(lab_logits(loaded, ids, spec), reference, atol=2e-4)


@pytest.mark.parametrize("rope", ["yarn:2,layer_type=global", "linear:4,layer_type=local", "dynamic:2,layer_type=global"])
def test_gemma_scales_the_chosen_layer_types_only(model_dirs, rope):
    """Gemma 3 rotates local layers at theta 10K and global ones at 1M: a kind applied to one type
    leaves the other as it was, as transformers computes it from per-type rope_parameters."""
    loaded = lab_model(model_dirs, "gemma3")
    spec = RopeSpec.parse(rope)
    ids = ids_of(2600 if spec.kind == "dynamic" else 700)
    with torch.inference_mode():
        reference = stock(model_dirs, "gemma3", spec, loaded)(input_ids=ids).logits
    logits = lab_logits(loaded, ids, spec)
    assert torch.allclose(logits, reference, atol=2e-4)
    assert not torch.allclose(logits, lab_logits(loaded, ids), atol=1e-3)


def test_a_model_without_rope_is_refused_with_a_sentence(tmp_path, tokenizer):
    from transformers import GPT2Config, GPT2LMHeadModel

    from engines.model.loading import ModelError

    GPT2LMHeadModel(GPT2Config(vocab_size=len(tokenizer), n_embd=32, n_layer=1, n_head=2)).save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    before = MANAGER.loaded
    with pytest.raises(ModelError, match="has no rotary position embedding"):
        MANAGER.get(ModelSpec(model=str(tmp_path), dtype="fp32"))
    assert (MANAGER.loaded.spec if MANAGER.loaded else None) == (before.spec if before else None)  # kept


def test_layer_types_are_refused_where_every_layer_rotates_alike(model_dirs):
    loaded = lab_model(model_dirs, "qwen2")
    with pytest.raises(SpecError, match="needs a model with its own RoPE per layer type"):
        lab_logits(loaded, ids_of(50), RopeSpec.parse("yarn:2,layer_type=global"))


@pytest.mark.parametrize("name", ["mistral", "qwen2", "gemma3"])
@pytest.mark.parametrize("mask", ["sinks:n_sink=4,window=64", "sliding_window:window=64",
                                  "sliding_window:window=2000", "sinks:n_sink=4,window=2000"])
def test_window_masks_keep_to_the_models_own_window(model_dirs, name, mask):
    """The lab's mask and the layer's own sliding window, both: a key is seen only if both allow it."""
    loaded, ids = lab_model(model_dirs, name), ids_of()
    spec = MaskSpec.parse(mask)
    q, k = torch.arange(700)[:, None], torch.arange(700)[None, :]
    window, sinks = spec.params["window"], spec.params.get("n_sink", 0)
    lab_rule = (k <= q) & ((q - k < window) | (k < sinks))
    model = stock(model_dirs, name)
    own = (q - k < WINDOW)
    expected = []
    for layer_type in getattr(model.config, "layer_types", None) or ["sliding_attention"] * 2:
        expected.append(lab_rule & own if layer_type == "sliding_attention" else lab_rule)
    reference = reference_with_masks(model, ids, expected)
    assert torch.allclose(lab_logits(loaded, ids, mask=spec), reference, atol=2e-4)


def reference_with_masks(model, ids, masks: list[torch.Tensor]) -> torch.Tensor:
    """Eager forward with each layer's bool mask [q, k] given explicitly (a 4D additive mask per layer)."""
    additive = [torch.zeros(m.shape).masked_fill(~m, torch.finfo(torch.float32).min)[None, None] for m in masks]
    handles = []
    for layer, mask in zip(model.model.layers, additive):
        def pre_hook(module, args, kwargs, mask=mask):
            return args, kwargs | {"attention_mask": mask}
        handles.append(layer.self_attn.register_forward_pre_hook(pre_hook, with_kwargs=True))
    try:
        with torch.inference_mode():
            return model(input_ids=ids).logits
    finally:
        for handle in handles:
            handle.remove()


@pytest.mark.parametrize("name", ["mistral", "gemma3"])
def test_decoding_past_the_window_under_a_window_mask(model_dirs, name):
    """Once a sliding layer's cache keeps only its window, the first cached key is no sink: new tokens
    under sinks + window equal a full forward with each layer's mask written out, token by token."""
    loaded = lab_model(model_dirs, name)
    spec, prompt_ids = MaskSpec.parse("sinks:n_sink=4,window=64"), ids_of(LENGTH)
    prompt = loaded.tokenizer.decode(prompt_ids[0])
    *_, result = run_free(loaded, prompt, RunConfig(mask=spec, max_new_tokens=4))
    ids, model = encode(loaded.tokenizer, prompt), stock(model_dirs, name)
    types = getattr(model.config, "layer_types", None) or ["sliding_attention"] * 2
    for token in result.tokens:
        n = ids.shape[1]
        q, k = torch.arange(n)[:, None], torch.arange(n)[None, :]
        rule = (k <= q) & ((q - k < 64) | (k < 4))
        logits = reference_with_masks(model, ids, [rule & (q - k < WINDOW) if t == "sliding_attention" else rule
                                                   for t in types])
        assert token.token_id == int(logits[0, -1].argmax())
        ids = torch.cat([ids, torch.tensor([[token.token_id]])], dim=1)


@pytest.mark.parametrize("name", ["mistral", "gemma3"])
def test_captured_answer_rows_cover_every_key(model_dirs, name):
    """Rows captured while decoding past the window: every layer's row spans the whole sequence (keys a
    sliding layer no longer holds weigh 0) and equals eager attention at that position."""
    loaded = lab_model(model_dirs, name)
    prompt = loaded.tokenizer.decode(ids_of(LENGTH)[0])
    capture = AttentionCapture([LENGTH - 1])
    *_, result = run_free(loaded, prompt, RunConfig(max_new_tokens=4), capture=capture)
    ids = torch.cat([encode(loaded.tokenizer, prompt), torch.tensor([[t.token_id for t in result.tokens]])], dim=1)
    with torch.inference_mode():
        eager = stock(model_dirs, name)(input_ids=ids, output_attentions=True).attentions
    prompt_length = ids.shape[1] - len(result.tokens)
    for step, rows in enumerate(capture.steps):  # step j: the query fed at position prompt_length + j
        position = prompt_length + step
        for layer, row in rows.items():
            assert row.shape[-1] == position + 1
            assert torch.allclose(row, eager[layer][0, :, position, :position + 1], atol=1e-5)


def test_document_masks_keep_to_the_models_own_window(model_dirs, tokenizer):
    """Isolated documents on Mistral: the segments rule and the sliding window, both."""
    loaded = lab_model(model_dirs, "mistral")
    instance = build_probe(loaded.tokenizer, ProbeSpec("litm_qa", LENGTH, 50, 1), True)
    ids = encode(loaded.tokenizer, instance.prompt)
    length = ids.shape[1]
    q, k = torch.arange(length)[:, None], torch.arange(length)[None, :]
    segments = segment_ids(length, list(instance.spans))
    rule = visible(MaskSpec("segments"), q, k, segments) & (q - k < WINDOW)
    reference = reference_with_masks(stock(model_dirs, "mistral"), ids, [rule, rule])
    assert torch.allclose(lab_logits(loaded, ids, mask=MaskSpec("segments"), spans=list(instance.spans)), reference,
                          atol=2e-4)


@pytest.mark.parametrize("name", list(SHAPES))
def test_pine_reads_the_documents_alike_in_any_order(model_dirs, name):
    """PINE on every architecture (partial rotary, per-layer-type RoPE, Gemma's query scaling): the last
    token's logits are the same with the documents in another order, unlike causal attention. The prompt
    stays inside the sliding windows, which count cache distance and would break the symmetry."""
    loaded = lab_model(model_dirs, name)
    pieces = torch.randint(100, 5000, (60,), generator=torch.Generator().manual_seed(2))
    prefix, documents, suffix = pieces[:6], [pieces[6:20], pieces[20:43], pieces[43:52]], pieces[52:]
    last = {}
    for mask in ("pine_full", "causal"):
        for order in ([0, 1, 2], [1, 2, 0]):
            chosen = [documents[j] for j in order]
            spans, start = [], len(prefix)
            for document in chosen:
                spans.append({"kind": "document", "token_start": start, "token_end": start + len(document)})
                start += len(document)
            ids = torch.cat([prefix, *chosen, suffix])[None]
            last[mask, order[0]] = lab_logits(loaded, ids, mask=MaskSpec(mask), spans=spans)[0, -1]
    assert torch.allclose(last["pine_full", 0], last["pine_full", 1], atol=1e-5)
    assert not torch.allclose(last["causal", 0], last["causal", 1], atol=1e-3)


@pytest.mark.parametrize("name", ["mistral", "gemma3", "phi3"])
def test_a_masked_head_attends_uniformly_to_what_it_sees(model_dirs, name):
    """Head masking gives a head uniform attention over the keys it may see (its layer's own window
    included): the same as eager attention with that head's queries zeroed, so every score is 0."""
    loaded, ids = lab_model(model_dirs, name), ids_of()
    heads = [(0, 1), (1, 3)]
    with torch.inference_mode(), run_state(loaded.model, RopeSpec(), MaskSpec(), heads=heads):
        logits = loaded.model(input_ids=ids).logits
    model = stock(model_dirs, name)
    head_dim = model.config.hidden_size // model.config.num_attention_heads if name != "gemma3" else 16
    for layer, head in heads:
        attention = model.model.layers[layer].self_attn
        projection = attention.q_proj if hasattr(attention, "q_proj") else attention.qkv_proj

        def zero_head(module, args, out, head=head):
            out = out.clone()
            out[..., head * head_dim:(head + 1) * head_dim] = 0
            return out
        projection.register_forward_hook(zero_head)
    with torch.inference_mode():
        reference = model(input_ids=ids).logits
    assert torch.allclose(logits, reference, atol=2e-4)
    assert not torch.allclose(logits, lab_logits(loaded, ids), atol=1e-3)


@pytest.mark.parametrize("name", ["mistral", "phi3", "gemma3"])
def test_capture_equals_eager_attention(model_dirs, name):
    loaded, ids = lab_model(model_dirs, name), ids_of()
    rows = [0, 300, 699]
    capture = AttentionCapture(rows, new_tokens=False)
    with torch.inference_mode(), run_state(loaded.model, RopeSpec(), MaskSpec(), capture=capture):
        loaded.model(input_ids=ids)
    with torch.inference_mode():
        eager = stock(model_dirs, name)(input_ids=ids, output_attentions=True).attentions
    for layer, attention in enumerate(eager):  # capture.prompt[layer]: [heads, rows, keys]
        assert torch.allclose(capture.prompt[layer], attention[0][:, rows], atol=1e-5)


def test_re_rotation_turns_only_the_rotated_part(model_dirs):
    """Window masks move far keys by re-rotating them; on Phi-3 half of each head is not rotated."""
    loaded = lab_model(model_dirs, "phi3")
    rotary = loaded.model.model.rotary_emb
    x = torch.randn(1, 4, 3, 16)
    at = lambda positions: apply_rotary_pos_emb(x, x, *rotary(x, positions[None]))[0]  # noqa: E731
    start = torch.tensor([5, 40, 300])
    moved = rotate(at(start), torch.tensor([7, 100, 1000]), rotary.inv_freq)
    assert torch.allclose(moved, at(start + torch.tensor([7, 100, 1000])), atol=1e-4)


@pytest.mark.parametrize("layer", [0, 1])
def test_re_rotation_uses_the_layers_own_frequencies(model_dirs, layer):
    """On Gemma 3 a far key moves by the frequencies of its layer's type (theta 10K local, 1M global)."""
    from transformers.models.gemma3.modeling_gemma3 import apply_rotary_pos_emb as gemma_rotary

    from engines.context.rope import layer_inv_freq

    loaded = lab_model(model_dirs, "gemma3")
    rotary, layer_type = loaded.model.model.rotary_emb, loaded.model.config.layer_types[layer]
    x = torch.randn(1, 4, 3, 16)
    at = lambda positions: gemma_rotary(x, x, *rotary(x, positions[None], layer_type))[0]  # noqa: E731
    start, delta = torch.tensor([5, 40, 300]), torch.tensor([7, 100, 1000])
    assert torch.allclose(rotate(at(start), delta, layer_inv_freq(rotary, layer_type)), at(start + delta), atol=1e-4)


@pytest.mark.parametrize("name", list(SHAPES))
def test_every_decoding_method_runs_and_greedy_equals_generate(model_dirs, name):
    loaded = lab_model(model_dirs, name)
    prompt = loaded.tokenizer.decode(ids_of(400)[0])
    for method in entries("decoding"):
        *_, result = decode(loaded, prompt, DecodingSpec.parse(method), 6, plain_prompt="Hello")
        assert result.new_tokens >= 1 and result.finish in ("eos", "length"), method
        if method == "greedy":
            ids = encode(loaded.tokenizer, prompt)
            with torch.inference_mode():
                generated = stock(model_dirs, name).generate(ids, max_new_tokens=6, do_sample=False)[0, ids.shape[1]:]
            assert [t.token_id for t in result.tokens] == generated.tolist()[:len(result.tokens)]


@pytest.mark.parametrize("name", list(SHAPES))
def test_static_cache_steps_equal_the_growing_cache(model_dirs, name, monkeypatch):
    """The steps CUDA runs on a static cache (here not compiled) give the events of the growing cache, past
    the sliding window: the same tokens, probabilities and alternatives, greedy and sampled."""
    loaded = lab_model(model_dirs, name)
    prompt = loaded.tokenizer.decode(ids_of(LENGTH)[0])
    for method in ("greedy", "sampling:temperature=0.8,top_k=20,seed=3"):
        runs = {}
        for mode in ("dynamic", "static"):
            monkeypatch.setenv("CONTEXT_LAB_STATIC_DECODE", mode)
            *_, runs[mode] = decode(loaded, prompt, DecodingSpec.parse(method), 24)
        dynamic, static = runs["dynamic"].tokens, runs["static"].tokens
        assert len(dynamic) > 1 and [t.token_id for t in static] == [t.token_id for t in dynamic], method
        assert max(abs(a.prob - b.prob) for a, b in zip(static, dynamic)) < 1e-5
        assert [[word for word, _ in t.top] for t in static] == [[word for word, _ in t.top] for t in dynamic]


@pytest.mark.parametrize("name", ["mistral", "qwen2", "gemma3"])
def test_a_sweep_shares_prefixes_past_the_window(model_dirs, name):
    """Cells run with prefix sharing (the lab's cache keeps every key, sliding layers too) answer as
    cells run alone."""
    loaded = lab_model(model_dirs, name)
    config = RunConfig(max_new_tokens=4)
    spec = SweepSpec("passkey", (LENGTH,), (0.0, 50.0, 100.0))
    cells = build_cells(loaded.tokenizer, spec, True)
    shared = [result.row()["answer"] for result in run_sweep(loaded, spec, cells, config=config)]
    alone = [run_probe(loaded, instance, "generate", config) for _, instance in cells]
    assert shared == [list(events)[-1].answer for events in alone]
    assert sum(result.computed_tokens for result in run_sweep(loaded, spec, cells, config=config)) < 3 * LENGTH
