"""Contrastive search (Su et al. 2022): trade a token's probability against how similar its hidden
state is to everything before it."""
from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import torch

from engines.config.kinds import Setting, register
from engines.decoding.generation import TextDelta, TokenEvent, _eos_ids, event_from_logits
from engines.decoding.methods import DecodingMethod
from engines.model.loading import LoadedModel


@torch.inference_mode()
def stream_contrastive(loaded: LoadedModel, input_ids: torch.Tensor, max_new_tokens: int, alpha: float,
                       top_k: int, should_stop: Callable[[], bool]) -> Iterator[TokenEvent]:
    """Contrastive search: among the top_k tokens pick argmax (1-alpha) p(v) - alpha max_j cos(h_v, h_j),
    h = last-layer hidden states of every earlier token (prompt included). Each candidate is run on the
    cache and cropped off again; the chosen one is then fed for real."""
    from engines.decoding.cache import new_cache

    model, tokenizer, device = loaded.model, loaded.tokenizer, loaded.device
    cache, eos, delta = new_cache(), _eos_ids(loaded), TextDelta(tokenizer)
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


@register
class Contrastive(DecodingMethod):
    name = "contrastive"
    description = ("among the top_k tokens, trade probability against similarity to what came before "
                   "(penalty_alpha)")
    supports_shared_positions = False
    settings = (
        Setting("penalty_alpha", "float", 0.6, "weight of the similarity penalty", 0.0, 1.0),
        Setting("top_k", "int", 4, "how many candidate tokens each step", 1, 50),
    )

    def stream(self, job):
        yield from stream_contrastive(job.loaded, job.input_ids, job.max_new_tokens, job.spec.get("penalty_alpha"),
                                      job.spec.get("top_k"), job.should_stop)
