"""DoLa (Chuang et al. 2024): contrast the final layer with the early layer that differs most."""
from __future__ import annotations

import torch

from engines.config.errors import SpecError
from engines.config.kinds import Setting, register
from engines.decoding.generation import jsd, repetition_penalized
from engines.decoding.methods import ChooserMethod


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


@register
class Dola(ChooserMethod):
    """Final-layer log-probabilities minus those of the most different early layer (by JSD), only over
    tokens the final layer finds plausible (p >= plausibility x the top probability). As in the
    authors' code (and transformers' removed port), an early layer's raw hidden state goes straight to
    the output head; norm=1 passes it through the model's final norm first. The JSD is the true one
    (summed over the vocabulary; the authors' code takes the mean, which picks the same layer)."""

    name = "dola"
    description = "contrast the final layer with the early layer that differs most (layers: high, low or a number)"
    hidden_states = True
    settings = (
        Setting("layers", "str", "high", "candidate early layers: high, low, or one layer number"),
        Setting("plausibility", "float", 0.1, "keep tokens with p >= this x the top probability; in (0, 1)"),
        Setting("repetition_penalty", "float", 1.2, "above 1 pushes down tokens already in the text"),
        Setting("norm", "int", 0, "1: early layers pass through the final norm before the head (0: as the "
                "authors' code)", 0, 1),
    )

    def check(self, values):
        layers = str(values["layers"])
        if layers not in ("high", "low") and not layers.isdigit():
            raise SpecError(f"DoLa layers='{layers}': write high, low, or one layer number.")
        if not 0 < values["plausibility"] < 1 or values["repetition_penalty"] <= 0:
            raise SpecError("DoLa needs plausibility in (0, 1) and repetition_penalty above 0.")

    def chooser(self, job):
        model, spec = job.loaded.model, job.spec
        candidates = dola_layers(model, str(spec.get("layers")))
        head = model.get_output_embeddings()
        norm = model.model.norm if spec.get("norm") else torch.nn.Identity()
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
