"""Prompt formatting and token-by-token decoding that yields structured per-token events.

No UI here: callers turn `TokenEvent`s into text, tables and plots.
"""
from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field

import torch

from engines.attention.state import current
from engines.context.transforms import transformed
from engines.decoding.cache import StaticSteps, new_cache, static_decoding
from engines.model.loading import LoadedModel

TOP_ALTERNATIVES = 5


@dataclass(frozen=True)
class TokenEvent:
    """One generated token: its text, probability, the top alternatives and the time so far."""

    index: int
    token_id: int
    text: str
    prob: float
    top: tuple[tuple[str, float], ...]
    entropy: float
    elapsed: float
    extra: dict = field(default_factory=dict)  # what a method adds: CAD's two distributions, DoLa's layer

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class GenerationResult:
    """A finished generation with the exact prompt text that was fed to the model."""

    text: str
    prompt: str
    prompt_tokens: int
    new_tokens: int
    seconds: float
    ttft: float
    tokens_per_second: float
    finish: str  # "eos", "length" or "cancelled"
    tokens: tuple[TokenEvent, ...] = field(default=(), repr=False)
    details: dict = field(default_factory=dict)  # what a method adds: beams, ICN answers

    def to_dict(self) -> dict:
        data = asdict(self)
        data["tokens"] = [event.to_dict() for event in self.tokens]
        return data


def format_prompt(tokenizer, context: str, question: str, chat_template: bool = True,
                  answer_prefix: str = "", transform=None) -> str:
    """The exact text fed to the model: context, a blank line, the question (after `transform`, a
    TransformSpec, rewrites them: the context repeated, the question also before it).

    With the chat template it is one user turn and `answer_prefix` opens the assistant turn;
    without it (or for a base model, which has none) the raw text ends in a newline and then the prefix.
    """
    context, question = transformed(transform, context, question)
    user = f"{context}\n\n{question}" if context else question
    if chat_template and getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template([{"role": "user", "content": user}],
                                             add_generation_prompt=True, tokenize=False)
    else:
        text = raw_start(tokenizer) + user + "\n"
    return text + answer_prefix


def raw_start(tokenizer) -> str:
    """What a raw-text prompt opens with: the BOS token when the tokenizer puts one before plain text
    (Gemma needs it; SmolLM2's tokenizer adds none), since `encode` adds no special tokens."""
    bos = tokenizer.bos_token_id
    return tokenizer.bos_token if bos is not None and tokenizer("a").input_ids[:1] == [bos] else ""


def encode(tokenizer, text: str) -> torch.Tensor:
    """Token ids [1, seq] of a full prompt; special tokens come only from the template text."""
    return tokenizer(text, add_special_tokens=False, return_tensors="pt").input_ids


def _eos_ids(loaded: LoadedModel) -> set[int]:
    ids = loaded.model.generation_config.eos_token_id
    ids = ids if isinstance(ids, list) else [ids]
    return {i for i in ids + [loaded.tokenizer.eos_token_id] if i is not None}


def top_tokens(tokenizer, logits: torch.Tensor, count: int = TOP_ALTERNATIVES) -> tuple[tuple[str, float], ...]:
    """The `count` most probable tokens of `logits` [vocab] with their probabilities."""
    top = torch.topk(torch.softmax(logits.float(), dim=-1), count)
    return tuple((tokenizer.decode([int(i)]), round(float(p), 6)) for p, i in zip(top.values, top.indices))


def event_from_logits(tokenizer, logits: torch.Tensor, token_id: int, index: int, text: str,
                      started: float, extra: dict | None = None) -> TokenEvent:
    """Build the event for `token_id` chosen from `logits` [vocab]."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    probs = logp.exp()
    entropy = float(-(probs * logp).nan_to_num().sum())
    return TokenEvent(index, token_id, text, float(probs[token_id]), top_tokens(tokenizer, logits), entropy,
                      time.perf_counter() - started, extra or {})


class TextDelta:
    """Turns a growing list of token ids into the new text each token adds (UTF-8 safe)."""

    def __init__(self, tokenizer):
        self.tokenizer, self.ids, self.emitted = tokenizer, [], ""

    def add(self, token_id: int) -> str:
        self.ids.append(token_id)
        text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        if text.endswith("\ufffd"):  # an incomplete multi-byte character: wait for the next token
            return ""
        delta, self.emitted = text[len(self.emitted):], text
        return delta


class PrefixCache:
    """A KV cache that knows which token ids it holds, so a new prompt is computed only past the
    prefix it shares with the last one (sweeps over one haystack share everything up to the needle).
    """

    def __init__(self):
        self.reset()

    def reset(self) -> None:
        self.cache = new_cache()
        self.ids: list[int] = []

    def keep(self, count: int) -> None:
        extra = self.cache.get_seq_length() - count
        if extra > 0:
            self.cache.crop(-extra)  # transformers 5: a negative count removes that many tokens
        self.ids = self.ids[:count]

    def reuse_for(self, ids: list[int], recompute_last: int = 1) -> int:
        """Crop to the common prefix with `ids`, keeping at least `recompute_last` tokens to feed."""
        self.keep(min(common_prefix(self.ids, ids), len(ids) - recompute_last))
        return len(self.ids)


def common_prefix(a: list[int], b: list[int]) -> int:
    """How many leading token ids two sequences share."""
    count = 0
    for x, y in zip(a, b):
        if x != y:
            break
        count += 1
    return count


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


def pick_greedy(logits: torch.Tensor, outputs, ids: list[int]) -> tuple[int, torch.Tensor, dict]:
    """The chooser of greedy decoding: the most probable token, shown with the model's own logits."""
    return int(logits.argmax()), logits, {}


@torch.inference_mode()
def stream_tokens(loaded: LoadedModel, input_ids: torch.Tensor, max_new_tokens: int,
                  should_stop: Callable[[], bool] = lambda: False,
                  prefix: PrefixCache | None = None,
                  positions: torch.Tensor | None = None,
                  choose: Callable = pick_greedy, hidden_states: bool = False) -> Iterator[TokenEvent]:
    """Decoding of one sequence with a KV cache, one event per new token; stops at EOS or the budget.

    `choose(logits [vocab], outputs, ids so far)` returns the token, the logits the event shows and the
    event's extra fields (greedy by default; sampling, DoLa and CAD bring their own). With `prefix`,
    the cached part of the prompt is not computed again, and afterwards the cache holds exactly the
    prompt, ready for the next one. `positions` [seq] gives the prompt's position ids when they are
    not 0..n-1 (shared document positions); new tokens continue after the largest. A plain run's steps after
    the prompt go through `StaticSteps` where `static_decoding` says so (on CUDA), with the same events.
    """
    model, tokenizer = loaded.model, loaded.tokenizer
    steps_mode = static_decoding(loaded.device)
    state = current(model.config)  # a mask, a capture or masked heads keep to the growing cache
    static = (steps_mode != "dynamic" and positions is None and not hidden_states and state.rule is None
              and state.capture is None and not state.head_mask)
    prefix = prefix or PrefixCache()
    if positions is not None:
        prefix.reset()  # cached keys were placed at other positions
    ids = input_ids[0].tolist()
    reused = prefix.reuse_for(ids)
    prefix.ids = ids
    eos, delta, cache = _eos_ids(loaded), TextDelta(tokenizer), prefix.cache
    started = time.perf_counter()
    next_input = input_ids[:, reused:].to(loaded.device)
    position_ids = None if positions is None else positions[None, reused:].to(loaded.device)
    so_far, steps, times = list(ids), None, []
    try:
        for index in range(max_new_tokens):
            if should_stop():
                return
            if index and static:  # after the prompt, on a static cache (see StaticSteps)
                steps = steps or StaticSteps(model, cache, max_new_tokens, steps_mode == "compiled")
                outputs = steps(next_input)
            else:
                outputs = model(input_ids=next_input, cache=cache, use_cache=True, logits_to_keep=1,
                                position_ids=position_ids,
                                **({"output_hidden_states": True} if hidden_states else {}))
            token_id, shown, extra = choose(outputs.logits[0, -1], outputs, so_far)
            if token_id in eos:
                return
            so_far.append(token_id)
            times.append(time.perf_counter())
            yield event_from_logits(tokenizer, shown, token_id, index, delta.add(token_id), started, extra)
            next_input = torch.tensor([[token_id]], device=loaded.device)
            if positions is not None:
                position_ids = torch.tensor([[int(positions.max()) + 1 + index]], device=loaded.device)
    except Exception:
        prefix.reset()  # a forward pass that failed may have filled only some layers
        raise
    finally:
        if prefix.cache is cache:
            prefix.keep(len(ids))
        if len(times) > 1:
            loaded.last_speed = {"computed_tokens": len(ids) - reused, "steps": steps_mode if static else "dynamic",
                                 "prefill_tokens_per_s": round((len(ids) - reused) / (times[0] - started)),
                                 "decode_tokens_per_s": round((len(times) - 1) / (times[-1] - times[0]), 1)}


def generate(loaded: LoadedModel, prompt: str, max_new_tokens: int,
             should_stop: Callable[[], bool] = lambda: False) -> GenerationResult:
    """Greedy decoding of `prompt` to the end (engines.decoding.methods.decode runs every method, streaming)."""
    input_ids = encode(loaded.tokenizer, prompt)
    started = time.perf_counter()
    events = list(stream_tokens(loaded, input_ids, max_new_tokens, should_stop))
    return summarize(prompt, input_ids.shape[1], events, time.perf_counter() - started, max_new_tokens,
                     should_stop())


def summarize(prompt: str, prompt_tokens: int, events: list[TokenEvent], seconds: float,
              max_new_tokens: int, cancelled: bool, text: str | None = None,
              details: dict | None = None) -> GenerationResult:
    ttft = events[0].elapsed if events else seconds
    decode_seconds = seconds - ttft
    rate = (len(events) - 1) / decode_seconds if len(events) > 1 and decode_seconds > 0 else 0.0
    finish = "cancelled" if cancelled else ("length" if len(events) >= max_new_tokens else "eos")
    text = "".join(e.text for e in events).strip() if text is None else text
    return GenerationResult(text, prompt, prompt_tokens, len(events), round(seconds, 4), round(ttft, 4),
                            round(rate, 2) if math.isfinite(rate) else 0.0, finish, tuple(events), details or {})
