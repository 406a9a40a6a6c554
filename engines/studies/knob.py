"""The context-sensitivity knob (Minder et al. 2025, Controllable Context Sensitivity and the Knob Behind
It): a direction in one layer's residual stream that separates answers taken from the context from answers
taken from what the model learnt, and runs that add `knob x direction` there.

Found once per model on the conflicts of assets/knob_conflicts.json, kept apart from conflicts.json on
which the knob is measured. Each prompt is answered at once after "Answer:"; the answer follows the
context when the first token of the context's answer is likelier than the familiar answer's. The direction
at layer l is the mean output of layer l at the last prompt token over the context-following prompts minus
that over the memory-following ones; the layer is chosen by a sweep over every layer but the first: the one
where adding +2 rather than -2 times its direction raises the mean log-odds of the context's answer most.
A run adds `knob x direction` at that layer from the last prompt token on (that token and every generated
one), where the direction was measured.

The paper finds its subspace in models fine-tuned on an intent task, with a learned projection; here the
model is used as it is and the direction is a plain difference of means.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass
from functools import lru_cache

import torch

from engines.config.paths import ASSETS, lab_home
from engines.config.specs import MaskSpec, RopeSpec, SpecError
from engines.context.run import run_state
from engines.decoding.generation import encode, format_prompt
from engines.model.loading import LoadedModel

FIND_SET = ASSETS / "knob_conflicts.json"
SWEEP_KNOB = 2.0  # the sweep compares the knob at +2 and -2


@dataclass(frozen=True)
class Knob:
    """A model's knob: its layer and direction, the sweep's gain per layer (0 for layer 0, not swept), and
    how many find-set prompts followed the context and the familiar fact."""

    layer: int
    direction: tuple[float, ...]
    gains: tuple[float, ...]
    context: int
    memory: int

    def record(self, value: float) -> dict:
        """What a run stores: the knob's value, layer and direction."""
        return {"value": value, "layer": self.layer, "norm": round(float(torch.tensor(self.direction).norm()), 4),
                "direction": list(self.direction)}


@lru_cache(maxsize=1)
def find_set() -> tuple[dict, ...]:
    return tuple(json.loads(FIND_SET.read_text())["items"])


def find_knob(loaded: LoadedModel) -> Knob:
    """The knob of the loaded model: kept in memory and in CONTEXT_LAB_HOME/knobs (about 40 s on a CPU once)."""
    digest = hashlib.sha256(json.dumps([loaded.spec.to_dict(), loaded.dtype_name, loaded.provenance()["model_revision"],
                                        find_set()]).encode()).hexdigest()[:16]
    return _found(loaded, digest)


_FOUND: dict[str, Knob] = {}


def _found(loaded: LoadedModel, digest: str) -> Knob:
    if digest in _FOUND:
        return _FOUND[digest]
    path = lab_home() / "knobs" / f"{digest}.json"
    if path.exists():
        knob = Knob(**{k: tuple(v) if isinstance(v, list) else v for k, v in json.loads(path.read_text()).items()})
    else:
        knob = _find(loaded)
        path.parent.mkdir(parents=True, exist_ok=True)
        written = path.with_suffix(f".{os.getpid()}.tmp")
        written.write_text(json.dumps(asdict(knob)))
        written.replace(path)  # whole or not at all, for another process reading it
    _FOUND[digest] = knob
    return knob


def _left_padded(tokenizer, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids and attention mask of `prompts` as one batch, padded on the left so all end together."""
    rows = [encode(tokenizer, prompt)[0] for prompt in prompts]
    width = max(len(row) for row in rows)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    ids, mask = torch.full((len(rows), width), pad), torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, width - len(row):], mask[i, width - len(row):] = row, 1
    return ids, mask


@torch.inference_mode()
def _find(loaded: LoadedModel) -> Knob:
    tokenizer, model = loaded.tokenizer, loaded.model
    items = find_set()
    forced = [t.to(loaded.device) for t in _left_padded(tokenizer, [format_prompt(
        tokenizer, i["context"], i["question"], answer_prefix="Answer:") for i in items])]
    plain = [t.to(loaded.device) for t in _left_padded(tokenizer, [format_prompt(
        tokenizer, i["context"], i["question"]) for i in items])]
    firsts = torch.tensor([[tokenizer(" " + i[side], add_special_tokens=False).input_ids[0]
                            for side in ("context_answer", "memory_answer")] for i in items], device=loaded.device)

    def margins(steer=None) -> torch.Tensor:
        """Log-odds of the context's first answer token over the familiar one's, per prompt."""
        with run_state(model, RopeSpec(), MaskSpec(), steer=None if steer is None else (*steer, forced[0].shape[1] - 1)):
            logits = model(input_ids=forced[0], attention_mask=forced[1], logits_to_keep=1).logits[:, -1].float()
        return logits.gather(1, firsts[:, :1])[:, 0] - logits.gather(1, firsts[:, 1:])[:, 0]

    margin = margins()
    follows, ignores = margin > 0, margin < 0  # a tie (both answers open with one token) counts for neither
    if not follows.any() or not ignores.any():
        raise SpecError("This model answers every conflict of the knob's find set the same way, so no direction "
                        "separates context from memory; run it without the knob (0).")
    with run_state(model, RopeSpec(), MaskSpec()):
        hidden = model(input_ids=plain[0], attention_mask=plain[1], output_hidden_states=True,
                       logits_to_keep=1).hidden_states
    states = torch.stack([h[:, -1].float() for h in hidden[1:]], dim=1)  # prompts x layers x width: each layer's output
    direction = states[follows].mean(0) - states[ignores].mean(0)
    gains = [0.0]
    for layer in range(1, direction.shape[0]):
        vector = SWEEP_KNOB * direction[layer].to(model.dtype)
        gains.append(float((margins((layer, vector)) - margins((layer, -vector))).mean()))
    layer = max(range(1, len(gains)), key=gains.__getitem__)
    return Knob(layer, tuple(round(x, 6) for x in direction[layer].tolist()), tuple(round(g, 4) for g in gains),
                int(follows.sum()), int(ignores.sum()))


def steering(loaded: LoadedModel, knob: float, prompt_tokens: int) -> tuple[int, torch.Tensor, int] | None:
    """run_state's `steer` for a run at `knob` on a prompt of `prompt_tokens` tokens (None when the knob is 0)."""
    if not knob:
        return None
    found = find_knob(loaded)
    vector = torch.tensor(found.direction, dtype=loaded.model.dtype, device=loaded.device) * knob
    return found.layer, vector, prompt_tokens - 1
