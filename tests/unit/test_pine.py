"""PINE in full (`pine_full`) against the method written out here from the paper and the authors' code: each
reader's positions for every key laid out by hand, keys rotated at them with transformers' RoPE, eager
attention; and the property PINE is for: the answer does not change when the documents change order."""
import torch
from conftest import one_layer_inputs, one_layer_logits
from transformers import LlamaConfig, LlamaForCausalLM
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

from engines.attention.function import AttentionCapture
from engines.config.specs import MaskSpec, RopeSpec
from engines.context.run import run_state

PREFIX, LENGTHS, SUFFIX = 3, [5, 7, 4], 5
N = PREFIX + sum(LENGTHS) + SUFFIX


def spans(lengths: list[int]) -> list[dict]:
    out, start = [], PREFIX
    for length in lengths:
        out.append({"kind": "document", "token_start": start, "token_end": start + length})
        start += length
    return out


def tiny_llama(layers: int) -> LlamaForCausalLM:
    torch.manual_seed(5)
    config = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=layers,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                         rope_parameters={"rope_type": "default", "rope_theta": 100.0})
    model = LlamaForCausalLM(config).eval()
    model.set_attn_implementation("lab_sdpa")
    return model


def reader_positions(raw: torch.Tensor, row: int, head: int) -> tuple[int, dict[int, int]]:
    """Where the reader at `row` sits and where it sees each key, from the paper: documents end at E, a
    document reads itself at E - length + offset and the others before it, most important (mean attention
    without RoPE, its own tokens left out) closest; a question token reads them likewise by its own attention."""
    starts = [PREFIX + sum(LENGTHS[:j]) for j in range(len(LENGTHS))]
    end = PREFIX + sum(LENGTHS)
    doc_of = {starts[j] + o: j for j in range(len(LENGTHS)) for o in range(LENGTHS[j])}

    def importance(r: int, own: int | None) -> list[float]:
        keys = [t for t in range(PREFIX, end) if doc_of[t] != own]
        weights = dict(zip(keys, torch.softmax(raw[head, r, keys], -1).tolist()))
        return [sum(weights.get(starts[j] + o, 0.0) for o in range(LENGTHS[j])) / LENGTHS[j] for j in range(len(LENGTHS))]

    own = doc_of.get(row)
    if own is None:
        given = importance(row, None)
        order = sorted(range(len(LENGTHS)), key=lambda j: (-given[j], j))
    else:
        readers = [starts[own] + o for o in range(LENGTHS[own])]
        given = [sum(importance(r, own)[j] for r in readers) for j in range(len(LENGTHS))]
        order = [own] + sorted((j for j in range(len(LENGTHS)) if j != own), key=lambda j: (-given[j], j))
    placed, cursor = {}, end
    for j in order:
        cursor -= LENGTHS[j]
        placed.update({starts[j] + o: cursor + o for o in range(LENGTHS[j])})
    seen = {t: t for t in range(PREFIX)} | placed
    if own is None:
        seen |= {t: t for t in range(end, row + 1)}
        return row, {t: p for t, p in seen.items() if t <= row}
    me = placed[row]
    return me, {t: p for t, p in seen.items() if p <= me}


def pine_reference(model, ids):
    """The one layer by hand under PINE; returns logits and each row's attention [heads, keys]."""
    heads, dim = 4, 8
    hidden, x, q, k, v = one_layer_inputs(model, ids)
    v = v[0]
    raw = (q @ k.transpose(-1, -2))[0] / dim ** 0.5
    rows, probabilities = [], {}
    for row in range(N):
        probs = torch.zeros(heads, N)
        for head in range(heads):
            me, seen = reader_positions(raw, row, head)
            keys = sorted(seen)
            cos, sin = model.model.rotary_emb(x, torch.tensor([[me] + [seen[t] for t in keys]]))
            q_turned, _ = apply_rotary_pos_emb(q[:, head:head + 1, row:row + 1], q[:, head:head + 1, row:row + 1],
                                               cos[:, :1], sin[:, :1])
            _, k_turned = apply_rotary_pos_emb(k[:, head:head + 1, keys], k[:, head:head + 1, keys], cos[:, 1:],
                                               sin[:, 1:])
            probs[head, keys] = torch.softmax((q_turned @ k_turned.transpose(-1, -2))[0, 0, 0] / dim ** 0.5, -1)
        probabilities[row] = probs
        rows.append(torch.einsum("hk,hkd->hd", probs, v))
    return one_layer_logits(model, hidden, rows), probabilities


def test_pine_full_equals_the_method_written_out():
    model = tiny_llama(1)
    ids = torch.randint(0, 64, (1, N))
    capture = AttentionCapture([4, 10, 17, N - 1], new_tokens=False)
    with torch.inference_mode():
        with run_state(model, RopeSpec(), MaskSpec("pine_full"), spans(LENGTHS), N, capture) as positions:
            assert positions is None  # keys keep their cache indices; the queries turn instead
            ours = model(input_ids=ids).logits
        expected, probabilities = pine_reference(model, ids)
        with run_state(model, RopeSpec(), MaskSpec("pine"), spans(LENGTHS), N) as positions:
            variant = model(input_ids=ids, position_ids=positions[None]).logits
    assert torch.allclose(ours, expected, atol=1e-5)
    assert torch.allclose(capture.prompt[0], torch.stack([probabilities[r] for r in (4, 10, 17, N - 1)], 1), atol=1e-5)
    assert torch.allclose(ours[:, :PREFIX], variant[:, :PREFIX], atol=1e-5)  # the prefix reads only itself
    assert (ours[:, PREFIX:] - variant[:, PREFIX:]).abs().max() > 20 * 1e-5  # tolerance above: the places matter


def test_the_answer_does_not_depend_on_the_documents_order():
    """Three layers: the last token's logits with documents A B C and with C A B are the same under PINE,
    and differ under the causal mask."""
    model = tiny_llama(3)
    torch.manual_seed(11)
    prefix, suffix = torch.randint(0, 64, (PREFIX,)), torch.randint(0, 64, (SUFFIX,))
    documents = [torch.randint(0, 64, (length,)) for length in LENGTHS]
    last = {}
    for mask in ("pine_full", "causal"):
        for order in ([0, 1, 2], [2, 0, 1]):
            ids = torch.cat([prefix, *[documents[j] for j in order], suffix])[None]
            with torch.inference_mode(), run_state(model, RopeSpec(), MaskSpec(mask), spans([LENGTHS[j] for j in order]), N):
                last[mask, tuple(order)] = model(input_ids=ids).logits[0, -1]
    assert torch.allclose(last["pine_full", (0, 1, 2)], last["pine_full", (2, 0, 1)], atol=1e-5)
    assert not torch.allclose(last["causal", (0, 1, 2)], last["causal", (2, 0, 1)], atol=1e-3)


def test_generated_tokens_read_the_cache_as_a_whole_pass_does():
    """Prefill then three tokens one at a time through the cache give the logits of one pass over all."""
    model = tiny_llama(2)
    ids = torch.randint(0, 64, (1, N + 3))
    with torch.inference_mode(), run_state(model, RopeSpec(), MaskSpec("pine_full"), spans(LENGTHS), N):
        whole = model(input_ids=ids).logits[0, N - 1:]
        out = model(input_ids=ids[:, :N], use_cache=True)
        steps, cache = [out.logits[0, -1]], out.past_key_values
        for t in range(N, N + 3):
            out = model(input_ids=ids[:, t:t + 1], cache=cache, use_cache=True)
            steps.append(out.logits[0, -1])
            cache = out.past_key_values
    assert torch.allclose(torch.stack(steps), whole, atol=1e-5)


def test_a_call_that_stops_inside_the_documents_ranks_the_ones_it_holds():
    """A first chunk of the prompt: before any document it is causal attention; inside the second document
    it is PINE over the prefix, the first document and the part of the second it holds."""
    model = tiny_llama(1)
    ids = torch.randint(0, 64, (1, N))
    with torch.inference_mode():
        with run_state(model, RopeSpec(), MaskSpec("causal")):
            causal = model(input_ids=ids[:, :PREFIX]).logits
        cut = PREFIX + LENGTHS[0] + 3
        with run_state(model, RopeSpec(), MaskSpec("pine_full"), spans(LENGTHS), N):
            assert torch.allclose(model(input_ids=ids[:, :PREFIX]).logits, causal, atol=1e-6)
            chunk = model(input_ids=ids[:, :cut]).logits
        with run_state(model, RopeSpec(), MaskSpec("pine_full"), spans([LENGTHS[0], 3]), cut):
            held = model(input_ids=ids[:, :cut]).logits
    assert torch.allclose(chunk, held, atol=1e-6)
