"""Decoding methods, a registry keyed by short names; each streams per-token events.

`DecodingSpec` is the logged setting ("beam:num_beams=4"). `decode(...)` yields TokenEvents (beam
methods also yield BeamStep progress and give their best beam's tokens at the end), then one
GenerationResult whose `details` hold what the method adds (beams and their scores, ICN answers).

transformers 5 no longer ships diverse beam search, contrastive search or DoLa, so they are written
here from their papers; beam search follows generate()'s rules (2 x beams candidates, length
penalty on finished beams, the same early-stop heuristic) so that it returns the same beams.
"""
from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from itertools import combinations
from typing import Any

import torch

from engines.config.specs import SpecError
from engines.decoding.generation import (
    GenerationResult,
    PrefixCache,
    TextDelta,
    TokenEvent,
    _eos_ids,
    encode,
    event_from_logits,
    pick_greedy,
    stream_tokens,
    summarize,
    top_tokens,
)
from engines.model.loading import LoadedModel

METHOD_PARAMS: dict[str, dict[str, Any]] = {
    "greedy": {},
    "sampling": {"temperature": 1.0, "top_k": 0, "top_p": 1.0, "min_p": 0.0, "typical_p": 1.0,
                 "repetition_penalty": 1.0, "no_repeat_ngram_size": 0, "seed": 0},
    "beam": {"num_beams": 4, "length_penalty": 1.0, "num_return_sequences": 4},  # at most num_beams
    "diverse_beam": {"num_beams": 4, "num_beam_groups": 4, "diversity_penalty": 0.5, "length_penalty": 1.0,
                     "num_return_sequences": 4},
    "contrastive": {"penalty_alpha": 0.6, "top_k": 4},
    "dola": {"layers": "high", "plausibility": 0.1, "repetition_penalty": 1.2},
    "cad": {"alpha": 1.0},
    "adacad": {},
    "icn": {"answers": 5, "answer_tokens": 12},
}
DESCRIPTIONS = {
    "greedy": "the most probable token at every step",
    "sampling": "draw from the distribution after temperature, top-k, top-p, min-p and typical filtering; "
                "the seed makes it reproducible",
    "beam": "keep the num_beams best partial answers by total log-probability (as generate(num_beams=...))",
    "diverse_beam": "beams in groups; a group is penalised for tokens earlier groups chose at the same step",
    "contrastive": "among the top_k tokens, trade probability against similarity to what came before "
                   "(penalty_alpha)",
    "dola": "contrast the final layer with the early layer that differs most (layers: high, low or a number)",
    "cad": "context-aware decoding: (1+alpha) x logits with the context - alpha x logits without it "
           "(two passes per token)",
    "adacad": "context-aware decoding with alpha at each step = JSD(p(.|context) || p(.|no context))",
    "icn": "in-context navigation: list several different short answers, each new one started from the "
           "best first token not yet tried",
}
BEAM_METHODS = ("beam", "diverse_beam")
NEEDS_PLAIN_PROMPT = ("cad", "adacad")
CAPTURE_METHODS = ("greedy", "sampling", "dola")  # one forward pass per token on one sequence


@dataclass(frozen=True)
class BeamStep:
    """Progress of a beam method: the step and the best running beam's text so far."""

    step: int
    best: str


@dataclass(frozen=True)
class DecodingSpec:
    method: str = "greedy"
    params: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.method not in METHOD_PARAMS:
            raise SpecError(f"Unknown decoding method '{self.method}'. Known methods: {', '.join(METHOD_PARAMS)}.")
        defaults = METHOD_PARAMS[self.method]
        unknown = set(self.params) - set(defaults)
        if unknown:
            raise SpecError(f"Decoding method '{self.method}' has no setting {', '.join(sorted(unknown))}; "
                            f"its settings: {', '.join(defaults) or 'none'}.")
        params = {key: _typed(key, value, defaults[key]) for key, value in self.params.items()}
        object.__setattr__(self, "params", params)
        self._check()

    def get(self, key: str) -> Any:
        return self.params.get(key, METHOD_PARAMS[self.method][key])

    def _check(self) -> None:
        get, method = self.get, self.method
        if method == "sampling":
            if get("temperature") <= 0:
                raise SpecError("Sampling needs a temperature above 0; for temperature 0 choose the greedy method.")
            if not 0 < get("top_p") <= 1:
                raise SpecError(f"top_p={get('top_p')} must be in (0, 1]; 1 switches it off.")
            if not 0 <= get("min_p") < 1 or not 0 < get("typical_p") <= 1:
                raise SpecError("min_p must be in [0, 1) and typical_p in (0, 1].")
            if get("top_k") < 0 or get("no_repeat_ngram_size") < 0 or get("repetition_penalty") <= 0:
                raise SpecError("top_k and no_repeat_ngram_size must be 0 or more, repetition_penalty above 0.")
        if method in BEAM_METHODS:
            beams, groups = get("num_beams"), get("num_beam_groups") if method == "diverse_beam" else 1
            if not 1 <= beams <= 32 or groups < 1 or beams % groups:
                raise SpecError(f"num_beams ({beams}) must be 1 to 32 and divisible by num_beam_groups ({groups}); "
                                "change one of them.")
            if "num_return_sequences" in self.params and not 1 <= get("num_return_sequences") <= beams:
                raise SpecError(f"num_return_sequences must be 1 to num_beams ({beams}).")
            if method == "diverse_beam" and get("diversity_penalty") < 0:
                raise SpecError("diversity_penalty must be 0 or more.")
        if method == "contrastive" and (not 0 <= get("penalty_alpha") <= 1 or not 1 <= get("top_k") <= 50):
            raise SpecError("Contrastive search needs penalty_alpha in [0, 1] and top_k from 1 to 50.")
        if method == "dola":
            layers = str(get("layers"))
            if layers not in ("high", "low") and not layers.isdigit():
                raise SpecError(f"DoLa layers='{layers}': write high, low, or one layer number.")
            if not 0 < get("plausibility") < 1 or get("repetition_penalty") <= 0:
                raise SpecError("DoLa needs plausibility in (0, 1) and repetition_penalty above 0.")
        if method == "cad" and get("alpha") < 0:
            raise SpecError(f"alpha={get('alpha')} is negative: use 0 (plain decoding) or more (1 for "
                            "knowledge conflicts, 0.5 for summaries).")
        if method == "icn" and (not 1 <= get("answers") <= 20 or not 1 <= get("answer_tokens") <= 64):
            raise SpecError("ICN needs answers from 1 to 20 and answer_tokens from 1 to 64.")

    @property
    def label(self) -> str:
        shown = {k: int(v) if isinstance(v, float) and v.is_integer() else v for k, v in self.params.items()}
        return self.method + (":" + ",".join(f"{k}={v}" for k, v in shown.items()) if shown else "")

    def to_dict(self) -> dict:
        return {"method": self.method, "params": dict(self.params)}

    @classmethod
    def from_dict(cls, data: dict) -> "DecodingSpec":
        return cls(data.get("method", "greedy"), dict(data.get("params", {})))

    @classmethod
    def parse(cls, text: str) -> "DecodingSpec":
        """'beam:num_beams=4,length_penalty=1.0' -> DecodingSpec('beam', {...})."""
        method, _, rest = (text or "greedy").strip().partition(":")
        params = {}
        for item in (p.strip() for p in rest.split(",") if p.strip()):
            key, sep, value = item.partition("=")
            if not sep:
                raise SpecError(f"Could not read '{item}' in the decoding setting {text}: write "
                                "METHOD[:key=value,...], e.g. beam:num_beams=4.")
            params[key.strip()] = value.strip()
        return cls(method.strip(), params)


def _typed(key: str, value: Any, default: Any) -> Any:
    try:
        if isinstance(default, str):
            return str(value)
        if isinstance(default, int) and not isinstance(default, bool):
            number = float(value)
            if number != int(number):
                raise ValueError
            return int(number)
        number = float(value)
        if not math.isfinite(number):
            raise ValueError
        return number
    except (TypeError, ValueError, OverflowError):
        kind = "a whole number" if isinstance(default, int) else "a finite number"
        raise SpecError(f"Decoding setting {key}={value!r} must be {kind}.") from None


# ---- one-sequence choosers: (logits [vocab], model outputs, ids so far) -> (token, shown logits, extra)

def sampling_chooser(spec: DecodingSpec) -> Callable:
    from transformers import (
        LogitsProcessorList,
        MinPLogitsWarper,
        NoRepeatNGramLogitsProcessor,
        RepetitionPenaltyLogitsProcessor,
        TemperatureLogitsWarper,
        TopKLogitsWarper,
        TopPLogitsWarper,
        TypicalLogitsWarper,
    )

    get = spec.get
    processors = LogitsProcessorList()
    if get("repetition_penalty") != 1.0:
        processors.append(RepetitionPenaltyLogitsProcessor(get("repetition_penalty")))
    if get("no_repeat_ngram_size"):
        processors.append(NoRepeatNGramLogitsProcessor(get("no_repeat_ngram_size")))
    processors.append(TemperatureLogitsWarper(get("temperature")))
    if get("top_k"):
        processors.append(TopKLogitsWarper(get("top_k")))
    if get("top_p") < 1:
        processors.append(TopPLogitsWarper(get("top_p")))
    if get("min_p") > 0:
        processors.append(MinPLogitsWarper(get("min_p")))
    if get("typical_p") < 1:
        processors.append(TypicalLogitsWarper(get("typical_p")))
    generator = torch.Generator().manual_seed(get("seed"))

    def choose(logits, outputs, ids):
        ids_tensor = torch.tensor([ids], device=logits.device)
        scores = processors(ids_tensor, logits.float()[None])[0]
        probs = torch.softmax(scores, dim=-1).cpu()
        token = int(torch.multinomial(probs, 1, generator=generator))
        return token, logits, {"sampled_from": round(float(probs[token]), 6)}

    return choose


def jsd(p_logits: torch.Tensor, q_logits: torch.Tensor) -> float:
    """Jensen-Shannon divergence (natural log, 0..ln 2) between two distributions given as logits."""
    p, q = torch.softmax(p_logits.float(), -1), torch.softmax(q_logits.float(), -1)
    m = (0.5 * (p + q)).clamp_min(1e-30).log()
    kl = lambda a: (a * (a.clamp_min(1e-30).log() - m)).sum()  # noqa: E731
    return float(0.5 * kl(p) + 0.5 * kl(q))


def repetition_penalized(scores: torch.Tensor, ids: list[int], penalty: float) -> torch.Tensor:
    """Scores of tokens already in `ids` pushed down: divided by `penalty` when positive, times it when not."""
    if penalty == 1.0:
        return scores
    scores = scores.clone()
    seen = torch.tensor(sorted(set(ids)), device=scores.device)
    picked = scores[seen]
    scores[seen] = torch.where(picked < 0, picked * penalty, picked / penalty)
    return scores


def dola_layers(model, layers: str) -> list[int]:
    """Candidate early layers (indices into hidden_states, 0 = embeddings) for DoLa's 'high'/'low'/number."""
    count = model.config.num_hidden_layers
    if layers.isdigit():
        if not 0 <= int(layers) < count:
            raise SpecError(f"DoLa layer {layers} is out of range: this model has layers 0 to {count - 1}.")
        return [int(layers)]
    start = 2 if model.config.tie_word_embeddings else 0  # tied embeddings make layer 0 a copy of the input
    half = count // 2
    return list(range(start, half, 2)) if layers == "low" else list(range(half, count, 2))


def dola_chooser(model, spec: DecodingSpec) -> Callable:
    """DoLa: final-layer log-probabilities minus those of the most different early layer (by JSD), only
    over tokens the final layer finds plausible (p >= plausibility x the top probability); each early
    layer is read through the model's final norm and output head."""
    candidates = dola_layers(model, str(spec.get("layers")))
    norm, head = model.model.norm, model.get_output_embeddings()
    cutoff = float(torch.tensor(spec.get("plausibility")).log())

    def choose(logits, outputs, ids):
        final = torch.log_softmax(logits.float(), -1)
        early = {j: head(norm(outputs.hidden_states[j][0, -1])).float() for j in candidates}
        divergence = {j: jsd(logits, early[j]) for j in candidates}
        layer = max(candidates, key=lambda j: divergence[j])
        scores = final - torch.log_softmax(early[layer], -1)
        scores = repetition_penalized(scores, ids, spec.get("repetition_penalty"))
        scores = scores.masked_fill(final < final.max() + cutoff, float("-inf"))
        return int(scores.argmax()), logits, {"premature_layer": layer, "jsd": round(divergence[layer], 5)}

    return choose


def cad_chooser(loaded: LoadedModel, plain_ids: torch.Tensor, alpha: float | None) -> Callable:
    """Context-aware decoding: a second KV cache runs the prompt without the context; the chosen token
    maximises (1+a) z(y|c,x) - a z(y|x). `alpha` None is AdaCAD: a = JSD of the two distributions."""
    from transformers import DynamicCache

    cache, state = DynamicCache(), {"next": plain_ids.to(loaded.device)}
    tokenizer = loaded.tokenizer

    def choose(logits, outputs, ids):
        plain = loaded.model(input_ids=state["next"], cache=cache, use_cache=True, logits_to_keep=1).logits[0, -1]
        a = jsd(logits, plain) if alpha is None else alpha
        combined = (1 + a) * logits.float() - a * plain.float()
        token = int(combined.argmax())
        state["next"] = torch.tensor([[token]], device=loaded.device)
        return token, combined, {"alpha": round(a, 5), "with_context": top_tokens(tokenizer, logits),
                                 "without_context": top_tokens(tokenizer, plain)}

    return choose


# ---- methods with their own loops

@torch.inference_mode()
def stream_contrastive(loaded: LoadedModel, input_ids: torch.Tensor, max_new_tokens: int, alpha: float,
                       top_k: int, should_stop: Callable[[], bool]) -> Iterator[TokenEvent]:
    """Contrastive search: among the top_k tokens pick argmax (1-alpha) p(v) - alpha max_j cos(h_v, h_j),
    h = last-layer hidden states of every earlier token (prompt included). Each candidate is run on the
    cache and cropped off again; the chosen one is then fed for real."""
    from transformers import DynamicCache

    model, tokenizer, device = loaded.model, loaded.tokenizer, loaded.device
    cache, eos, delta = DynamicCache(), _eos_ids(loaded), TextDelta(tokenizer)
    started = time.perf_counter()
    out = model(input_ids=input_ids.to(device), cache=cache, use_cache=True, output_hidden_states=True)
    history = out.hidden_states[-1][0].float()
    logits = out.logits[0, -1]
    for index in range(max_new_tokens):
        if should_stop():
            return
        probs = torch.softmax(logits.float(), -1)
        top = torch.topk(probs, top_k)
        scores, states, next_logits = [], [], []
        for prob, token in zip(top.values, top.indices):
            step = model(input_ids=token.view(1, 1).to(device), cache=cache, use_cache=True,
                         output_hidden_states=True)
            cache.crop(-1)
            state = step.hidden_states[-1][0, -1].float()
            penalty = float(torch.nn.functional.cosine_similarity(history, state[None], dim=-1).max())
            scores.append((1 - alpha) * float(prob) - alpha * penalty)
            states.append(state)
            next_logits.append(step.logits[0, -1])
        best = max(range(top_k), key=lambda i: scores[i])  # the first of equal scores, as argmax
        token_id = int(top.indices[best])
        if token_id in eos:
            return
        yield event_from_logits(tokenizer, logits, token_id, index, delta.add(token_id), started,
                                {"score": round(scores[best], 5)})
        model(input_ids=torch.tensor([[token_id]], device=device), cache=cache, use_cache=True, logits_to_keep=1)
        history = torch.cat([history, states[best][None]])
        logits = next_logits[best]


@dataclass
class _Group:
    """One group of beams: running token lists and scores, and the finished beams kept so far."""

    width: int
    tokens: list = field(default_factory=list)
    events: list = field(default_factory=list)
    scores: torch.Tensor | None = None
    done_scores: torch.Tensor | None = None
    done: list = field(default_factory=list)
    open: bool = True

    def __post_init__(self):
        self.tokens = [[] for _ in range(self.width)]
        self.events = [[] for _ in range(self.width)]
        self.scores = torch.full((self.width,), -1e9)
        self.scores[0] = 0.0
        self.done_scores = torch.full((self.width,), -1e9)
        self.done = [None] * self.width


@torch.inference_mode()
def stream_beams(loaded: LoadedModel, input_ids: torch.Tensor, max_new_tokens: int, spec: DecodingSpec,
                 should_stop: Callable[[], bool], positions: torch.Tensor | None = None
                 ) -> Iterator[BeamStep | list[dict]]:
    """Beam search in groups (one group: plain beam search). Yields a BeamStep per step, then the
    finished beams [{text, score, token_ids, events}] best first.

    Within a group each step follows generate(): the 2 x width best continuations of all running beams;
    those among the first `width` that end (EOS or the budget) are finished with score
    sum log p / length ** length_penalty; the best `width` unfinished ones run on. Group g first
    subtracts diversity_penalty x (how often earlier groups chose the token at this step).
    """
    from transformers import DynamicCache

    model, tokenizer, device = loaded.model, loaded.tokenizer, loaded.device
    beams = spec.get("num_beams")
    group_count = spec.get("num_beam_groups") if spec.method == "diverse_beam" else 1
    penalty = spec.get("diversity_penalty") if spec.method == "diverse_beam" else 0.0
    length_penalty = spec.get("length_penalty")
    width, eos = beams // group_count, _eos_ids(loaded)
    groups = [_Group(width) for _ in range(group_count)]
    cache, started = DynamicCache(), time.perf_counter()
    position_ids = None if positions is None else positions[None].to(device)
    logits = model(input_ids=input_ids.to(device), cache=cache, use_cache=True, logits_to_keep=1,
                   position_ids=position_ids).logits[:, -1]
    cache.batch_repeat_interleave(beams)
    logits = logits.expand(beams, -1)
    for step in range(max_new_tokens):
        if should_stop():
            break
        logp = torch.log_softmax(logits.float().cpu(), dim=-1)
        vocab = logp.shape[-1]
        chosen_now: list[int] = []
        sources, new_tokens, all_hit = [], [], True
        for g, group in enumerate(groups):
            rows = logp[g * width:(g + 1) * width]
            scored = rows.clone()
            if chosen_now and penalty:
                scored -= penalty * torch.bincount(torch.tensor(chosen_now), minlength=vocab).float()
            totals, flat = torch.topk((scored + group.scores[:, None]).reshape(-1), 2 * width)
            origin, token = (flat // vocab).tolist(), (flat % vocab).tolist()
            hits = torch.tensor([t in eos or step + 1 >= max_new_tokens for t in token])
            all_hit &= bool(hits.all())
            made: dict[int, TokenEvent] = {}

            def event(r: int) -> TokenEvent:  # built once, and only for beams that are kept
                if r not in made:
                    made[r] = _beam_event(tokenizer, rows[origin[r]], group.tokens[origin[r]] + [token[r]], token[r],
                                          step, started)
                return made[r]

            finishing = hits.clone()
            finishing[width:] = False
            candidate = totals / (step + 1) ** length_penalty - 1e9 * (~finishing).float()
            if not group.open:
                candidate -= 1e9
            merged = torch.cat([group.done_scores, candidate])
            keep = torch.topk(merged, width).indices.tolist()

            def finished(index: int):  # a kept slot: an earlier finished beam, or candidate index - width
                if index < width:
                    return group.done[index]
                r = index - width
                if not (finishing[r] and group.open):
                    return None
                ended = group.events[origin[r]] + ([] if token[r] in eos else [event(r)])
                return group.tokens[origin[r]] + [token[r]], ended

            group.done_scores, group.done = merged[keep], [finished(i) for i in keep]
            running = torch.topk(totals - 1e9 * hits.float(), width)
            order = running.indices.tolist()
            group.events = [group.events[origin[r]] + [event(r)] for r in order]
            group.tokens = [group.tokens[origin[r]] + [token[r]] for r in order]
            group.scores = running.values
            sources += [g * width + origin[r] for r in order]
            new_tokens += [token[r] for r in order]
            chosen_now += [token[r] for r in order]
            filled = all(item is not None for item in group.done)
            best_possible = float(group.scores[0]) / (step + 1) ** length_penalty
            group.open = group.open and not (filled and best_possible <= float(group.done_scores.min()))
        yield BeamStep(step, tokenizer.decode(groups[0].tokens[0], skip_special_tokens=True))
        if all_hit or not any(group.open for group in groups):
            break
        cache.reorder_cache(torch.tensor(sources, device=device))
        step_positions = None if positions is None else torch.full((beams, 1), int(positions.max()) + 1 + step,
                                                                   device=device)
        logits = model(input_ids=torch.tensor(new_tokens, device=device)[:, None], cache=cache, use_cache=True,
                       position_ids=step_positions).logits[:, -1]
    yield _finished_beams(tokenizer, groups, min(spec.get("num_return_sequences"), beams))


def _beam_event(tokenizer, logp_row: torch.Tensor, tokens: list[int], token: int, step: int,
                started: float) -> TokenEvent:
    text = tokenizer.decode(tokens, skip_special_tokens=True)[len(tokenizer.decode(tokens[:-1],
                                                                                   skip_special_tokens=True)):]
    return event_from_logits(tokenizer, logp_row, token, step, text, started)


def _finished_beams(tokenizer, groups: list[_Group], count: int) -> list[dict]:
    finished = []
    for group in groups:
        for score, item in zip(group.done_scores.tolist(), group.done):
            if item is not None:
                tokens, events = item
                finished.append({"text": tokenizer.decode(tokens, skip_special_tokens=True).strip(),
                                 "score": round(score, 5), "token_ids": tokens, "events": events})
    finished.sort(key=lambda beam: -beam["score"])
    return finished[:count]


def beam_diversity(token_lists: list[list[int]]) -> dict[str, float]:
    """distinct-2 (distinct bigrams over all bigrams) and the mean pairwise Jaccard overlap of bigram sets."""
    bigram_sets = [set(zip(tokens, tokens[1:])) for tokens in token_lists]
    total = sum(max(len(tokens) - 1, 0) for tokens in token_lists)
    distinct = len(set().union(*bigram_sets)) / total if total else 0.0
    pairs = [len(a & b) / len(a | b) for a, b in combinations(bigram_sets, 2) if a | b]
    return {"distinct_2": round(distinct, 4), "pairwise_overlap": round(sum(pairs) / len(pairs), 4) if pairs else 0.0}


# ---- in-context navigation

def _next_logits(loaded: LoadedModel, ids: list[int], prefix: PrefixCache) -> torch.Tensor:
    reused = prefix.reuse_for(ids)
    logits = loaded.model(input_ids=torch.tensor([ids[reused:]], device=loaded.device), cache=prefix.cache,
                          use_cache=True, logits_to_keep=1).logits[0, -1]
    prefix.ids = ids
    return logits


@torch.inference_mode()
def stream_icn(loaded: LoadedModel, prompt: str, spec: DecodingSpec,
               should_stop: Callable[[], bool]) -> Iterator[TokenEvent | dict]:
    """In-context navigation: the prompt continues 'Answers:\\n1. "a1"\\n2. "' with the answers found so far;
    each new answer starts from the best first token not yet tried and is completed greedily to the
    closing quote. Plain top-k expansion (the k best first tokens after '1. "', each completed) is
    run too, for comparison. Yields TokenEvents, then {"answers", "topk_answers", ...}."""
    tokenizer, count, limit = loaded.tokenizer, spec.get("answers"), spec.get("answer_tokens")
    prefix, started, index = PrefixCache(), time.perf_counter(), 0

    def listing(answers: list[str]) -> list[int]:
        lines = "".join(f'{i}. "{a}"\n' for i, a in enumerate(answers, 1))
        return encode(tokenizer, prompt + "Answers:\n" + lines + f'{len(answers) + 1}. "')[0].tolist()

    def complete(ids: list[int], first: int, answer: int) -> Iterator[TokenEvent | str]:
        nonlocal index
        ids_tensor = torch.tensor([ids + [first]])
        text = tokenizer.decode([first])
        if '"' not in text and "\n" not in text:
            for event in stream_tokens(loaded, ids_tensor, limit - 1, should_stop, prefix):
                if '"' in event.text or "\n" in event.text:
                    text += event.text
                    break
                text += event.text
                yield TokenEvent(index, event.token_id, event.text, event.prob, event.top, event.entropy,
                                 time.perf_counter() - started, {"answer": answer})
                index += 1
        yield text.split('"')[0].split("\n")[0].strip()

    answers, tried = [], set()
    for number in range(count):
        if should_stop():
            break
        ids = listing(answers)
        ranked = torch.argsort(_next_logits(loaded, ids, prefix), descending=True).tolist()
        first = next(t for t in ranked if t not in tried)
        tried.add(first)
        *events, answer = complete(ids, first, number)
        yield from events
        answers.append(answer)
    start_ids = listing([])
    expansion = []
    for first in torch.topk(_next_logits(loaded, start_ids, prefix), count).indices.tolist():
        if should_stop():
            break
        *_, answer = complete(start_ids, first, -1)
        expansion.append(answer)
    distinct = lambda items: round(len({a.lower() for a in items}) / len(items), 4) if items else 0.0  # noqa: E731
    yield {"answers": answers, "topk_answers": expansion, "distinct_share": distinct(answers),
           "topk_distinct_share": distinct(expansion)}


# ---- the one entry point

def decode(loaded: LoadedModel, prompt: str, spec: DecodingSpec | None, max_new_tokens: int,
           should_stop: Callable[[], bool] = lambda: False, prefix: PrefixCache | None = None,
           positions: torch.Tensor | None = None,
           plain_prompt: str | None = None) -> Iterator[TokenEvent | BeamStep | GenerationResult]:
    """Decode `prompt` with `spec`: TokenEvents (and BeamSteps), then the GenerationResult.

    `plain_prompt` is the same prompt with the context left out (context-aware decoding needs it);
    `prefix` and `positions` are used by the one-sequence methods (and positions by beams)."""
    spec = spec or DecodingSpec()
    method = spec.method
    input_ids = encode(loaded.tokenizer, prompt)
    started = time.perf_counter()
    events: list[TokenEvent] = []
    text, details = None, {}
    if method in NEEDS_PLAIN_PROMPT and plain_prompt is None:
        raise SpecError(f"{method} needs the prompt without its context; run it on a context and a question.")
    if positions is not None and method in ("contrastive", "icn", *NEEDS_PLAIN_PROMPT):
        raise SpecError(f"The {method} method does not run with shared document positions; choose another "
                        "method or turn shared_positions off.")
    if method in BEAM_METHODS:
        for item in stream_beams(loaded, input_ids, max_new_tokens, spec, should_stop, positions):
            if isinstance(item, BeamStep):
                yield item
        beams = item
        events = beams[0]["events"] if beams else []
        yield from events
        details = {"beams": [{k: b[k] for k in ("text", "score", "token_ids")} for b in beams],
                   "diversity": beam_diversity([b["token_ids"] for b in beams])}
    elif method == "icn":
        for item in stream_icn(loaded, prompt, spec, should_stop):
            if isinstance(item, TokenEvent):
                events.append(item)
                yield item
        details = item if isinstance(item, dict) else {}
        text = "\n".join(f"{i}. {a}" for i, a in enumerate(details.get("answers", []), 1))
    else:
        if method == "contrastive":
            stream = stream_contrastive(loaded, input_ids, max_new_tokens, spec.get("penalty_alpha"),
                                        spec.get("top_k"), should_stop)
        else:
            choose, hidden = pick_greedy, False
            if method == "sampling":
                choose = sampling_chooser(spec)
            elif method == "dola":
                choose, hidden = dola_chooser(loaded.model, spec), True
            elif method in NEEDS_PLAIN_PROMPT:
                alpha = spec.get("alpha") if method == "cad" else None
                choose = cad_chooser(loaded, encode(loaded.tokenizer, plain_prompt), alpha)
            stream = stream_tokens(loaded, input_ids, max_new_tokens, should_stop, prefix, positions, choose, hidden)
        for event in stream:
            events.append(event)
            yield event
    yield summarize(prompt, input_ids.shape[1], events, time.perf_counter() - started, max_new_tokens,
                    should_stop(), text, details)
