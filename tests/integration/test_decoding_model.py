"""Decoding methods on the embedded model, checked against transformers' generate() and against
reference loops written here from raw model logits (full forward passes, no cache)."""
from __future__ import annotations

import math

import pytest
import torch

from engines.config.specs import DecodingSpec, ModelSpec, SpecError
from engines.decoding.decode import decode
from engines.decoding.generation import GenerationResult, encode, format_prompt
from engines.decoding.methods.dola import dola_layers
from engines.model.loading import MANAGER

CONTEXT = "The Eiffel Tower was moved in 2021 to the city of Lyon, where it now stands by the Rhone."
QUESTION = "In which city is the Eiffel Tower? Answer with one word."


@pytest.fixture(scope="module")
def prompts(embedded):
    tokenizer = embedded.tokenizer
    return format_prompt(tokenizer, CONTEXT, QUESTION), format_prompt(tokenizer, "", QUESTION)


def run(loaded, prompt, method: str, new_tokens: int = 12, plain: str | None = None) -> GenerationResult:
    *_, result = decode(loaded, prompt, DecodingSpec.parse(method), new_tokens, plain_prompt=plain)
    return result


def ids_of(result: GenerationResult) -> list[int]:
    return [event.token_id for event in result.tokens]


@torch.inference_mode()
def full_logits(model, ids: list[int], hidden: bool = False):
    out = model(input_ids=torch.tensor([ids]), output_hidden_states=hidden)
    return out


def test_greedy_and_beam_equal_transformers_generate(embedded, prompts):
    """Beams are compared in fp32: in bf16 generate() prefills the prompt once per beam while the lab
    prefills it once and repeats the cache, and the two kernels round differently (scores move by
    about 0.01, enough to swap two close beams on some CPUs)."""
    prompt = prompts[0]
    ids = encode(embedded.tokenizer, prompt)
    with torch.inference_mode():
        greedy = embedded.model.generate(ids, max_new_tokens=12, do_sample=False)[0, ids.shape[1]:].tolist()
    assert ids_of(run(embedded, prompt, "greedy")) == [t for t in greedy if t != 2]
    exact = MANAGER.get(ModelSpec(dtype="fp32"))
    with torch.inference_mode():
        beams = exact.model.generate(ids, max_new_tokens=12, num_beams=4, num_return_sequences=4,
                                     do_sample=False, output_scores=True, return_dict_in_generate=True)
    ours = run(exact, prompt, "beam:num_beams=4,num_return_sequences=4").details["beams"]
    theirs = [[t for t in seq[ids.shape[1]:].tolist() if t != 2] for seq in beams.sequences]
    assert [[t for t in beam["token_ids"] if t != 2] for beam in ours] == theirs
    assert [beam["score"] for beam in ours] == pytest.approx(beams.sequences_scores.tolist(), abs=1e-4)


def test_diverse_beam_search(embedded, prompts):
    prompt = prompts[0]
    plain = run(embedded, prompt, "beam:num_beams=4")
    one_group = run(embedded, prompt, "diverse_beam:num_beams=4,num_beam_groups=1")
    assert one_group.details["beams"] == plain.details["beams"]
    diverse = run(embedded, prompt, "diverse_beam:num_beams=4,num_beam_groups=4,diversity_penalty=2")
    texts = [beam["text"] for beam in diverse.details["beams"]]
    assert len(texts) == 4 and len(set(texts)) == 4
    first_tokens = {beam["token_ids"][0] for beam in diverse.details["beams"]}
    assert len(first_tokens) > len({beam["token_ids"][0] for beam in plain.details["beams"]})
    assert diverse.details["diversity"]["pairwise_overlap"] < plain.details["diversity"]["pairwise_overlap"]


def test_diverse_beams_are_ranked_by_their_true_log_probability(prompts):
    """Each returned beam's score is its log-probability from a teacher-forced pass over the prompt and
    the beam (EOS included when it ended there), over its length ** length_penalty; the beams come in
    that order, and the diversity-penalised search score is reported beside it."""
    exact = MANAGER.get(ModelSpec(dtype="fp32"))
    prompt = prompts[0]
    result = run(exact, prompt, "diverse_beam:num_beams=4,num_beam_groups=4,diversity_penalty=2,length_penalty=1")
    ids = encode(exact.tokenizer, prompt)[0].tolist()
    beams = result.details["beams"]
    for beam in beams:
        with torch.inference_mode():
            logits = exact.model(input_ids=torch.tensor([ids + beam["token_ids"]])).logits[0].float()
        logp = torch.log_softmax(logits[len(ids) - 1:-1], -1)
        total = float(logp.gather(1, torch.tensor(beam["token_ids"])[:, None]).sum())
        assert beam["score"] == pytest.approx(total / len(beam["token_ids"]), abs=1e-3)
        assert beam["search_score"] <= beam["score"] + 1e-6  # penalties only lower the search score
    assert [b["score"] for b in beams] == sorted((b["score"] for b in beams), reverse=True)
    assert any(b["search_score"] < b["score"] - 1e-3 for b in beams)  # the later groups were penalised


def test_sampling_is_reproducible_by_seed(embedded, prompts):
    prompt = prompts[0]
    first = ids_of(run(embedded, prompt, "sampling:temperature=1.5,seed=7", 16))
    assert first == ids_of(run(embedded, prompt, "sampling:temperature=1.5,seed=7", 16))
    others = [ids_of(run(embedded, prompt, f"sampling:temperature=1.5,seed={seed}", 16)) for seed in (8, 9)]
    assert any(other != first for other in others)
    for event in run(embedded, prompt, "sampling:top_k=1,seed=3").tokens:  # only the top token (or a tie) stays
        assert event.prob == pytest.approx(event.top[0][1], abs=1e-6)


def test_context_aware_decoding(embedded, prompts):
    prompt, plain = prompts
    greedy = ids_of(run(embedded, prompt, "greedy"))
    assert ids_of(run(embedded, prompt, "cad:alpha=0", plain=plain)) == greedy
    cad = run(embedded, prompt, "cad:alpha=0.5", plain=plain)
    ids, plain_ids = encode(embedded.tokenizer, prompt), encode(embedded.tokenizer, plain)
    with torch.inference_mode():
        reference = embedded.model.generate(ids, max_new_tokens=12, do_sample=False, guidance_scale=1.5,
                                            negative_prompt_ids=plain_ids)[0, ids.shape[1]:].tolist()
    assert ids_of(cad) == [t for t in reference if t != 2]
    event = cad.tokens[0]
    assert event.extra["alpha"] == 0.5 and len(event.extra["with_context"]) == 5
    assert len(event.extra["without_context"]) == 5


def test_adaptive_cad_matches_a_reference_loop(embedded, prompts):
    prompt, plain = prompts
    ours = run(embedded, prompt, "adacad", 8, plain)
    ids, plain_ids = encode(embedded.tokenizer, prompt)[0].tolist(), encode(embedded.tokenizer, plain)[0].tolist()
    for event in ours.tokens:
        with_context = full_logits(embedded.model, ids).logits[0, -1].float()
        without = full_logits(embedded.model, plain_ids).logits[0, -1].float()
        p, q = torch.softmax(with_context, -1), torch.softmax(without, -1)
        m = (p + q) / 2
        alpha = float(0.5 * (p * (p / m).log()).nansum() + 0.5 * (q * (q / m).log()).nansum())
        assert 0 <= event.extra["alpha"] <= math.log(2)
        assert event.extra["alpha"] == pytest.approx(alpha, abs=0.02)
        assert event.token_id == int(((1 + alpha) * with_context - alpha * without).argmax())
        ids.append(event.token_id)
        plain_ids.append(event.token_id)


def test_contrastive_search_matches_a_reference_loop(embedded, prompts):
    prompt, alpha, k = prompts[0], 0.6, 4
    ours = ids_of(run(embedded, prompt, f"contrastive:penalty_alpha={alpha},top_k={k}", 8))
    ids = encode(embedded.tokenizer, prompt)[0].tolist()
    reference = []
    for _ in range(len(ours)):
        out = full_logits(embedded.model, ids, hidden=True)
        probs = torch.softmax(out.logits[0, -1].float(), -1)
        history = out.hidden_states[-1][0].float()
        top = torch.topk(probs, k)
        scores = []
        for prob, token in zip(top.values, top.indices):
            state = full_logits(embedded.model, ids + [int(token)], hidden=True).hidden_states[-1][0, -1].float()
            similarity = torch.nn.functional.cosine_similarity(history, state[None], dim=-1).max()
            scores.append((1 - alpha) * float(prob) - alpha * float(similarity))
        chosen = int(top.indices[max(range(k), key=lambda i: scores[i])])
        reference.append(chosen)
        ids.append(chosen)
    assert ours == reference and len(ours) > 3


@pytest.mark.parametrize("norm", [0, 1])
def test_dola_matches_a_reference_loop(prompts, norm):
    """The authors' rule (norm=0: an early layer's raw hidden state to the head) and the normed variant,
    against full forward passes without a cache, in fp32. Raw early layers give near one-hot
    distributions, so several layers can tie at JSD close to ln 2: the chosen layer must reach the
    largest divergence (within 1e-4), and the token must follow from that layer."""
    exact = MANAGER.get(ModelSpec(dtype="fp32"))
    prompt, model = prompts[0], exact.model
    assert dola_layers(model, "high") == list(range(15, 30, 2))
    assert dola_layers(model, "low") == list(range(2, 15, 2))
    ours = run(exact, prompt, f"dola:layers=high,repetition_penalty=1.2,norm={norm}", 8)
    ids = encode(exact.tokenizer, prompt)[0].tolist()
    seen = set(ids)
    with torch.inference_mode():
        for event in ours.tokens:
            out = full_logits(model, ids, hidden=True)
            final = torch.log_softmax(out.logits[0, -1].float(), -1)
            early, divergence = {}, {}
            for layer in range(15, 30, 2):
                hidden = out.hidden_states[layer][0, -1]
                early[layer] = torch.log_softmax(model.lm_head(model.model.norm(hidden) if norm else hidden).float(), -1)
                m = ((final.exp() + early[layer].exp()) / 2).log()
                divergence[layer] = float(0.5 * (final.exp() * (final - m)).sum()
                                          + 0.5 * (early[layer].exp() * (early[layer] - m)).sum())
            chosen = event.extra["premature_layer"]
            assert divergence[chosen] >= max(divergence.values()) - 1e-4
            scores = final - early[chosen]
            for token in seen:
                scores[token] = scores[token] / 1.2 if scores[token] > 0 else scores[token] * 1.2
            scores[final < final.max() + math.log(0.1)] = float("-inf")
            assert event.token_id == int(scores.argmax())
            ids.append(event.token_id)
            seen.add(event.token_id)
    assert len(ours.tokens) >= 1


def test_in_context_navigation_collects_distinct_answers(embedded):
    prompt = format_prompt(embedded.tokenizer, "", "Name a large city in Europe.")
    result = run(embedded, prompt, "icn:answers=4,answer_tokens=8")
    answers = result.details["answers"]
    assert len(answers) == 4 and all(answers)
    assert len(result.details["topk_answers"]) == 4
    assert result.text.splitlines()[0] == f"1. {answers[0]}"
    assert {event.extra["answer"] for event in result.tokens} <= {0, 1, 2, 3}


def test_every_method_streams_token_events(embedded, prompts):
    prompt, plain = prompts
    for method in ("sampling:seed=1", "contrastive", "dola", "cad", "beam:num_beams=2"):
        events = [item for item in decode(embedded, prompt, DecodingSpec.parse(method), 6, plain_prompt=plain)]
        tokens = [e for e in events if hasattr(e, "top")]
        assert tokens, method
        for event in tokens:
            assert 0 <= event.prob <= 1 and len(event.top) == 5 and event.entropy >= 0 and event.elapsed >= 0
        assert isinstance(events[-1], GenerationResult) and events[-1].new_tokens == len(tokens)


def test_cad_without_a_plain_prompt_says_what_to_do(embedded, prompts):
    with pytest.raises(SpecError, match="without its context"):
        run(embedded, prompts[0], "cad")
