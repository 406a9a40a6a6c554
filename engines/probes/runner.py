"""Running a built probe: greedy generation or one-pass log-probability scoring, then the task's scorer."""
from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass

import psutil
import torch

from engines.attention.function import AttentionCapture, HeadMapCapture
from engines.config.kinds import entries
from engines.config.policy import limits
from engines.config.specs import RunConfig, SpecError
from engines.context.run import run_state
from engines.decoding.decode import decode
from engines.decoding.generation import GenerationResult, PrefixCache, TokenEvent, encode, format_prompt
from engines.model.loading import LoadedModel
from engines.probes.scorers import Score, score
from engines.probes.tasks import ProbeInstance
from engines.studies.knob import steering

SCORE_MODES = ("generate", "logprob")


@dataclass(frozen=True)
class LogprobResult:
    """The gold continuation's probability under the model, from one forward pass."""

    target: str
    logprob: float
    mean_logprob: float
    prob: float
    greedy_match: bool  # every gold token is the model's top choice
    tokens: tuple[dict, ...]
    seconds: float

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class ProbeOutcome:
    """A probe's answer (generated, or the gold target in logprob mode) and its score."""

    instance: ProbeInstance
    mode: str
    answer: str
    score: Score
    generation: GenerationResult | None = None
    logprob: LogprobResult | None = None

    def summary(self) -> dict:
        """The flat JSON the CLI prints and the UI shows."""
        spec = self.instance.spec
        out = {"task": self.instance.task, "length": spec.length, "depth": spec.depth, "seed": spec.seed,
               "mode": self.mode, "answer": self.answer, "expected": list(self.instance.expected),
               "correct": self.score.correct, "score": self.score.score, "score_details": self.score.details,
               "scorer": "logprob" if self.mode == "logprob" else self.instance.scorer,
               "prompt_tokens": self.instance.prompt_tokens,
               "prompt_chars": self.instance.prompt_chars, "haystack": self.instance.haystack,
               "needle_token_spans": self.instance.needle_token_spans,
               "spans": list(self.instance.spans)}
        if self.generation is not None:
            out |= {"seconds": self.generation.seconds, "time_to_first_token": self.generation.ttft,
                    "tokens_per_second": self.generation.tokens_per_second, "finish": self.generation.finish}
        if self.logprob is not None:
            out |= {"seconds": self.logprob.seconds, "logprob": self.logprob.logprob,
                    "mean_logprob": self.logprob.mean_logprob, "target": self.logprob.target}
        return out


def max_prompt_tokens(loaded: LoadedModel) -> int:
    """The longest prompt this model and the free memory allow.

    Four times the trained window (RoPE scaling can stretch it), small enough that one layer's
    fp32 attention scores (heads x L x L) take at most half of the available memory, and within
    the deployment's cap (a public Space allows fewer).
    """
    config = loaded.model.config
    trained = getattr(config, "max_position_embeddings", 8192)
    if loaded.device == "cuda":
        free = torch.cuda.mem_get_info()[0]
    else:
        free = psutil.virtual_memory().available
    by_memory = int(math.sqrt(free / 2 / (4 * config.num_attention_heads)))
    allowed = max(256, min(4 * trained, by_memory))
    cap = limits().prompt_tokens
    return allowed if cap is None else min(allowed, cap)


def check_prompt_length(loaded: LoadedModel, prompt: str) -> int:
    """The prompt's token count; a prompt longer than this model and the free memory allow is refused,
    first on its characters (no tokenizer work on a huge text; no token of this lab's tokenizers spans
    32 characters), then on its tokens."""
    limit = max_prompt_tokens(loaded)
    if len(prompt) > 32 * limit:
        raise SpecError(f"This prompt has {len(prompt):,} characters; this model and the free memory allow at most "
                        f"{limit:,} tokens here. Shorten the context.")
    tokens = len(encode(loaded.tokenizer, prompt)[0])
    if tokens > limit:
        raise SpecError(f"This prompt has {tokens:,} tokens; this model and the free memory allow at most {limit:,} "
                        "here. Shorten the context.")
    return tokens


@torch.inference_mode()
def logprob_of(loaded: LoadedModel, prompt: str, target: str, lead: str = "",
               prefix: PrefixCache | None = None, positions: torch.Tensor | None = None) -> LogprobResult:
    """log p(target | prompt + lead) with per-token probabilities and whether greedy would produce it.

    `lead` is the answer's usual opening ("The pass key is"): it is fed but not scored, so the score
    measures the answer itself, not the model's choice of how to start its reply.
    """
    started = time.perf_counter()
    tokenizer = loaded.tokenizer
    prompt_ids = encode(tokenizer, prompt)
    continuation = tokenizer(lead + target, add_special_tokens=False, return_offsets_mapping=True)
    scored = [i for i, (_, end) in enumerate(continuation["offset_mapping"]) if end > len(lead)]
    continuation_ids = torch.tensor([continuation["input_ids"]])
    ids = torch.cat([prompt_ids, continuation_ids], dim=1)
    count = continuation_ids.shape[1]
    prefix = prefix or PrefixCache()
    position_ids = None
    if positions is not None:
        prefix.reset()
        after = torch.arange(count) + int(positions.max()) + 1
        position_ids = torch.cat([positions, after])[None].to(loaded.device)
    reused = prefix.reuse_for(ids[0].tolist(), recompute_last=count + 1)
    try:
        logits = loaded.model(input_ids=ids[:, reused:].to(loaded.device), cache=prefix.cache, use_cache=True,
                              logits_to_keep=count + 1, position_ids=position_ids).logits[0, :-1].float()
    except Exception:
        prefix.reset()
        raise
    prefix.ids = ids[0].tolist()
    prefix.keep(prompt_ids.shape[1])
    logp = torch.log_softmax(logits, dim=-1)[scored]
    gold = continuation_ids[0, scored].to(loaded.device)
    chosen = logp.gather(1, gold[:, None])[:, 0]
    top = logp.argmax(dim=-1)
    tokens = tuple({"token": tokenizer.decode([int(t)]), "prob": round(float(p.exp()), 6),
                    "top": tokenizer.decode([int(a)])} for t, p, a in zip(gold, chosen, top))
    total = float(chosen.sum())
    return LogprobResult(target, round(total, 5), round(total / len(scored), 5), math.exp(total),
                         bool((top == gold).all()), tokens, round(time.perf_counter() - started, 4))


def run_probe(loaded: LoadedModel, instance: ProbeInstance, mode: str = "generate",
              config: RunConfig | None = None, should_stop: Callable[[], bool] = lambda: False,
              prefix: PrefixCache | None = None,
              capture: AttentionCapture | None = None) -> Iterator[TokenEvent | ProbeOutcome]:
    """As `probe_events`, recording attention rows into `capture` when one is given."""
    config = config or RunConfig(max_new_tokens=instance.max_new_tokens)
    if capture is not None:
        check_capture(config)
        prefix = None
    yield from probe_events(loaded, instance, mode, config, should_stop, prefix, capture)


def check_capture(config: RunConfig) -> None:
    if not config.decoding.entry.supports_capture:
        methods = [name for name, method in entries("decoding").items() if method.supports_capture]
        raise SpecError(f"Attention capture follows one sequence: use {', '.join(methods)} decoding, "
                        f"or switch capture off for {config.decoding.method}.")


def decoded(loaded: LoadedModel, prompt: str, config: RunConfig, should_stop: Callable[[], bool],
            prefix: PrefixCache | None = None, positions: torch.Tensor | None = None,
            plain_prompt: str | None = None) -> Iterator[TokenEvent | GenerationResult]:
    """The config's decoding method on `prompt`: TokenEvents then the GenerationResult (beam progress left out)."""
    for item in decode(loaded, prompt, config.decoding, config.max_new_tokens, should_stop, prefix, positions,
                       plain_prompt):
        if isinstance(item, (TokenEvent, GenerationResult)):
            yield item


def probe_events(loaded: LoadedModel, instance: ProbeInstance, mode: str = "generate",
                 config: RunConfig | None = None, should_stop: Callable[[], bool] = lambda: False,
                 prefix: PrefixCache | None = None, capture=None) -> Iterator[TokenEvent | ProbeOutcome]:
    """Yields TokenEvents while generating (none in logprob mode), then the ProbeOutcome.

    `config` brings the RoPE kind, the mask and the new-token budget (default: the task's budget,
    default RoPE, causal mask)."""
    if mode not in SCORE_MODES:
        raise ValueError(f"Unknown scoring mode '{mode}'. Choose one of: {', '.join(SCORE_MODES)}.")
    config = config or RunConfig(max_new_tokens=instance.max_new_tokens)
    if config.mask.looks_ahead:
        prefix = None
    with run_state(loaded.model, config.rope, config.mask, list(instance.spans), instance.prompt_tokens,
                   capture, steer=steering(loaded, config.knob, instance.prompt_tokens)) as positions:
        if mode == "logprob":
            result = logprob_of(loaded, instance.prompt, instance.logprob_target, instance.logprob_lead, prefix,
                                positions)
            outcome = Score(round(result.prob, 6), result.greedy_match,
                            {"logprob": result.logprob, "mean_logprob": result.mean_logprob})
            yield ProbeOutcome(instance, mode, result.target, outcome, logprob=result)
            return
        plain_prompt = format_prompt(loaded.tokenizer, "", instance.question, config.chat_template,
                                     instance.answer_prefix)
        for item in decoded(loaded, instance.prompt, config, should_stop, prefix, positions, plain_prompt):
            if isinstance(item, GenerationResult):
                verdict = score(instance.scorer, item.text, instance.expected, instance.question)
                yield ProbeOutcome(instance, mode, item.text, verdict, generation=item)
            else:
                yield item


def run_free(loaded: LoadedModel, prompt: str, config: RunConfig,
             should_stop: Callable[[], bool] = lambda: False,
             capture: AttentionCapture | None = None,
             plain_prompt: str | None = None) -> Iterator[TokenEvent | GenerationResult]:
    """A free prompt under the config's RoPE, mask and decoding: TokenEvents, then the GenerationResult;
    attention rows go into `capture` when one is given. `plain_prompt` (the prompt without its context)
    is what context-aware decoding contrasts with."""
    check_prompt_length(loaded, prompt)
    if capture is not None:
        check_capture(config)
    steer = steering(loaded, config.knob, len(encode(loaded.tokenizer, prompt)[0]))
    with run_state(loaded.model, config.rope, config.mask, capture=capture, steer=steer):
        yield from decoded(loaded, prompt, config, should_stop, plain_prompt=plain_prompt)


def run_each(loaded: LoadedModel, configs: list[RunConfig], instance: ProbeInstance | None, prompt: str,
             plain_prompt: str | None, should_stop: Callable[[], bool] = lambda: False,
             ) -> Iterator[tuple[int, TokenEvent | GenerationResult | ProbeOutcome]]:
    """One prompt under each config in turn (methods side by side): (config number, item) pairs, the items of
    `run_probe` when the prompt is a task's `instance`, else of `run_free`."""
    for number, config in enumerate(configs):
        items = (run_probe(loaded, instance, "generate", config, should_stop) if instance else
                 run_free(loaded, prompt, config, should_stop, plain_prompt=plain_prompt))
        for item in items:
            yield number, item


@torch.inference_mode()
def full_head_map(loaded: LoadedModel, prompt: str, config: RunConfig, layer: int, head: int,
                  spans: list[dict] | None = None, side: int = 512) -> dict:
    """One layer and head's query x key map of `prompt` under the config's RoPE and mask, pooled to at
    most side x side (token by token, with the token texts, when the prompt has at most `side` tokens)."""
    model_config = loaded.model.config
    if not 0 <= layer < model_config.num_hidden_layers or not 0 <= head < model_config.num_attention_heads:
        raise SpecError(f"Choose a layer from 0 to {model_config.num_hidden_layers - 1} and a head from 0 to "
                        f"{model_config.num_attention_heads - 1} for the full map.")
    ids = encode(loaded.tokenizer, prompt)
    capture = HeadMapCapture(layer, head, side)
    with run_state(loaded.model, config.rope, config.mask, spans or [], ids.shape[1], capture) as positions:
        loaded.model(input_ids=ids.to(loaded.device), logits_to_keep=1,
                     position_ids=None if positions is None else positions[None].to(loaded.device))
    labels = [loaded.tokenizer.decode([t]) for t in ids[0].tolist()] if ids.shape[1] <= side else None
    return {"map": capture.result().tolist(), "tokens": ids.shape[1], "layer": layer, "head": head,
            "labels": labels}


def masking_effect(loaded: LoadedModel, instance: ProbeInstance, config: RunConfig, heads: list[tuple[int, int]],
                   seed: int = 0, should_stop: Callable[[], bool] = lambda: False) -> Iterator[dict]:
    """The probe as it is, with `heads` given uniform attention, and with as many random other heads
    masked: each setting's answer, correctness and log-probability of the gold answer, as it finishes."""
    import random

    model_config = loaded.model.config
    others = [(layer, head) for layer in range(model_config.num_hidden_layers)
              for head in range(model_config.num_attention_heads) if (layer, head) not in set(heads)]
    settings = [("no heads masked", []), (f"top {len(heads)} retrieval heads masked", heads),
                (f"{len(heads)} random heads masked (seed {seed})", random.Random(seed).sample(others, len(heads)))]
    for label, masked in settings:
        if should_stop():
            return
        with run_state(loaded.model, config.rope, config.mask, list(instance.spans), instance.prompt_tokens,
                       heads=masked) as positions:
            *_, outcome = probe_events(loaded, instance, "generate", config, should_stop)
            gold = logprob_of(loaded, instance.prompt, instance.logprob_target, instance.logprob_lead,
                              positions=positions)
        yield {"setting": label, "heads": [list(h) for h in masked], "answer": outcome.answer,
               "correct": outcome.score.correct, "gold_logprob": gold.logprob}
