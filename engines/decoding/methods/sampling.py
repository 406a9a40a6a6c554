"""Sampling from the distribution after transformers' logits processors (temperature, top-k, top-p,
min-p, typical, repetition penalties), reproducible by seed."""
from __future__ import annotations

import torch

from engines.config.errors import SpecError
from engines.config.kinds import Setting, register
from engines.decoding.methods import ChooserMethod


@register
class Sampling(ChooserMethod):
    name = "sampling"
    description = ("draw from the distribution after temperature, top-k, top-p, min-p and typical filtering; "
                   "the seed makes it reproducible")
    settings = (
        Setting("temperature", "float", 1.0, "divides the logits; above 0 (greedy is temperature 0)", 0.0),
        Setting("top_k", "int", 0, "keep the k most probable tokens; 0 keeps all", 0),
        Setting("top_p", "float", 1.0, "keep the smallest set with this much probability; in (0, 1], 1 is off"),
        Setting("min_p", "float", 0.0, "drop tokens below min_p x the top probability; in [0, 1)"),
        Setting("typical_p", "float", 1.0, "typical sampling's mass; in (0, 1], 1 is off"),
        Setting("repetition_penalty", "float", 1.0, "above 1 pushes down tokens already in the text"),
        Setting("no_repeat_ngram_size", "int", 0, "never repeat an n-gram of this size; 0 is off", 0),
        Setting("seed", "int", 0, "the random seed"),
    )

    def check(self, values):
        if values["temperature"] <= 0:
            raise SpecError("Sampling needs a temperature above 0; for temperature 0 choose the greedy method.")
        if not 0 < values["top_p"] <= 1:
            raise SpecError(f"top_p={values['top_p']} must be in (0, 1]; 1 switches it off.")
        if not 0 <= values["min_p"] < 1 or not 0 < values["typical_p"] <= 1:
            raise SpecError("min_p must be in [0, 1) and typical_p in (0, 1].")
        if values["repetition_penalty"] <= 0:
            raise SpecError("top_k and no_repeat_ngram_size must be 0 or more, repetition_penalty above 0.")

    def chooser(self, job):
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

        get = job.spec.get
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
