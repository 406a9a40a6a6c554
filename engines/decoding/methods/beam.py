"""Beam search as generate() does it, and diverse beam search (Vijayakumar et al. 2018): beams in
groups, each group penalised for the tokens earlier groups chose at the same step."""
from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from itertools import combinations

import torch

from engines.config.errors import SpecError
from engines.config.kinds import Setting, register
from engines.config.specs import DecodingSpec
from engines.decoding.generation import TokenEvent, _eos_ids, event_from_logits
from engines.decoding.methods import BeamStep, DecodingMethod
from engines.model.loading import LoadedModel


@dataclass
class _Group:
    """One group of beams: running token lists, search scores (diversity penalties included) and true
    log-probabilities, and the finished beams kept so far."""

    width: int
    tokens: list = field(default_factory=list)
    events: list = field(default_factory=list)
    scores: torch.Tensor | None = None
    true: torch.Tensor | None = None
    done_scores: torch.Tensor | None = None
    done: list = field(default_factory=list)
    open: bool = True

    def __post_init__(self):
        self.tokens = [[] for _ in range(self.width)]
        self.events = [[] for _ in range(self.width)]
        self.scores = torch.full((self.width,), -1e9)
        self.scores[0] = 0.0
        self.true = torch.zeros(self.width)
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
    from engines.decoding.cache import new_cache

    model, tokenizer, device = loaded.model, loaded.tokenizer, loaded.device
    beams = spec.get("num_beams")
    values = spec.entry.defaults() | spec.params
    group_count, penalty = spec.entry.groups(values), values.get("diversity_penalty", 0.0)
    length_penalty = spec.get("length_penalty")
    width, eos = beams // group_count, _eos_ids(loaded)
    groups = [_Group(width) for _ in range(group_count)]
    cache, started = new_cache(), time.perf_counter()
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
            true = torch.stack([group.true[o] + rows[o, t] for o, t in zip(origin, token)])  # no penalties
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
                return group.tokens[origin[r]] + [token[r]], ended, float(true[r]) / (step + 1) ** length_penalty

            group.done_scores, group.done = merged[keep], [finished(i) for i in keep]
            running = torch.topk(totals - 1e9 * hits.float(), width)
            order = running.indices.tolist()
            group.events = [group.events[origin[r]] + [event(r)] for r in order]
            group.tokens = [group.tokens[origin[r]] + [token[r]] for r in order]
            group.scores, group.true = running.values, true[order]
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
    yield _finished_beams(tokenizer, groups, spec.get("num_return_sequences") or min(4, beams))


def _beam_event(tokenizer, logp_row: torch.Tensor, tokens: list[int], token: int, step: int,
                started: float) -> TokenEvent:
    text = tokenizer.decode(tokens, skip_special_tokens=True)[len(tokenizer.decode(tokens[:-1],
                                                                                   skip_special_tokens=True)):]
    return event_from_logits(tokenizer, logp_row, token, step, text, started)


def _finished_beams(tokenizer, groups: list[_Group], count: int) -> list[dict]:
    """Finished beams ranked by their true log-probability (length-penalised as beam search does);
    `search_score` is the score the search kept them by (with diverse beam's penalties)."""
    finished = []
    for group in groups:
        for search_score, item in zip(group.done_scores.tolist(), group.done):
            if item is not None:
                tokens, events, score = item
                finished.append({"text": tokenizer.decode(tokens, skip_special_tokens=True).strip(),
                                 "score": round(score, 5), "search_score": round(search_score, 5),
                                 "token_ids": tokens, "events": events})
    finished.sort(key=lambda beam: -beam["score"])
    return finished[:count]


def beam_diversity(token_lists: list[list[int]]) -> dict[str, float]:
    """distinct-2 (distinct bigrams over all bigrams) and the mean pairwise Jaccard overlap of bigram sets."""
    bigram_sets = [set(zip(tokens, tokens[1:])) for tokens in token_lists]
    total = sum(max(len(tokens) - 1, 0) for tokens in token_lists)
    distinct = len(set().union(*bigram_sets)) / total if total else 0.0
    pairs = [len(a & b) / len(a | b) for a, b in combinations(bigram_sets, 2) if a | b]
    return {"distinct_2": round(distinct, 4), "pairwise_overlap": round(sum(pairs) / len(pairs), 4) if pairs else 0.0}


@register
class Beam(DecodingMethod):
    name = "beam"
    description = "keep the num_beams best partial answers by total log-probability (as generate(num_beams=...))"
    beam = True
    settings = (
        Setting("num_beams", "int", 4, "how many partial answers are kept", 1, 32),
        Setting("length_penalty", "float", 1.0, "finished beams score sum log p / length ** this"),
        Setting("num_return_sequences", "int", None, "how many finished beams are returned; default "
                "min(4, num_beams)", 1, 32),
    )

    def groups(self, values) -> int:
        return 1

    def check(self, values):
        beams, groups = values["num_beams"], self.groups(values)
        if groups < 1 or beams % groups:
            raise SpecError(f"num_beams ({beams}) must be 1 to 32 and divisible by num_beam_groups ({groups}); "
                            "change one of them.")
        if (values["num_return_sequences"] or 1) > beams:
            raise SpecError(f"num_return_sequences must be 1 to num_beams ({beams}).")

    def stream(self, job):
        for item in stream_beams(job.loaded, job.input_ids, job.max_new_tokens, job.spec, job.should_stop,
                                 job.positions):
            if isinstance(item, BeamStep):
                yield item
        beams = item
        yield from beams[0]["events"] if beams else []
        job.details = {"beams": [{k: b[k] for k in ("text", "score", "search_score", "token_ids")} for b in beams],
                       "diversity": beam_diversity([b["token_ids"] for b in beams])}


@register
class DiverseBeam(Beam):
    name = "diverse_beam"
    description = "beams in groups; a group is penalised for tokens earlier groups chose at the same step"
    settings = (
        Setting("num_beams", "int", 4, "how many partial answers are kept, in all groups together", 1, 32),
        Setting("num_beam_groups", "int", 4, "how many groups the beams are split into", 1, 32),
        Setting("diversity_penalty", "float", 0.5, "subtracted per earlier choice of the same token", 0.0),
        Setting("length_penalty", "float", 1.0, "finished beams score sum log p / length ** this"),
        Setting("num_return_sequences", "int", None, "how many finished beams are returned; default "
                "min(4, num_beams)", 1, 32),
    )

    def groups(self, values) -> int:
        return values["num_beam_groups"]
