"""The gallery: one card per phenomenon from the papers behind the lab, each with a result the lab
measured and stored (assets/gallery/NAME.json, shown with no model work) and a live rerun sized for
the machine. Cards are data (assets/gallery/cards.json); a study kind is one function below, built
from the same engines the tabs use (no gradio here)."""
from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from engines.attention.function import AttentionCapture
from engines.attention.views import (
    answer_span,
    layer_labels,
    question_positions,
    retrieval_scores,
    span_mass,
    stacked,
    step_attention,
    top_heads,
)
from engines.config.paths import ASSETS
from engines.config.policy import check_model, limits
from engines.config.specs import DecodingSpec, MaskSpec, RopeSpec, RunConfig, SpecError, TransformSpec
from engines.context.run import prose_stream, token_nll
from engines.decoding.generation import encode, format_prompt
from engines.model.loading import MANAGER, LoadedModel
from engines.probes.runner import masking_effect, max_prompt_tokens, run_free, run_probe
from engines.probes.tasks import ProbeSpec, build_probe, get_task
from engines.studies.conflicts import conflict_summary, knob_curve, run_conflicts
from engines.studies.knob import find_knob
from engines.studies.sift import MAX_CALLS, SiftResult, equivalent, problems, query_of, run_sift
from engines.studies.sweep_stats import by_depth
from engines.studies.sweeps import SweepSpec, build_cells, check_cells, run_sweep

GALLERY = ASSETS / "gallery"


@dataclass(frozen=True)
class Card:
    """A phenomenon: its paper and claim, the study that shows it and its settings (`gpu` overrides
    them on a GPU, where the full size runs), and where the embedded model differs from the paper."""

    name: str
    title: str
    paper: str
    claim: str
    study: str
    settings: dict
    tab: str
    differs: str
    gpu: dict = dataclasses.field(default_factory=dict)

    def sized(self, device: str) -> dict:
        return self.settings | (self.gpu if device == "cuda" else {})

    @property
    def stored_path(self) -> Path:
        return GALLERY / f"{self.name}.json"

    def stored(self) -> dict | None:
        """The stored result: {"data", "seconds", "device", "model", "built"}, or None before a build."""
        return json.loads(self.stored_path.read_text()) if self.stored_path.exists() else None


def cards() -> list[Card]:
    return [Card(**entry) for entry in json.loads((GALLERY / "cards.json").read_text())["cards"]]


def card_named(name: str) -> Card:
    found = {card.name: card for card in cards()}
    if name not in found:
        raise SpecError(f"Unknown gallery card '{name}'. Available: {', '.join(found)}.")
    return found[name]


@dataclass(frozen=True)
class Step:
    """Progress of a study: `done` of `total` units, and the result so far (rendered as it grows)."""

    done: int
    total: int
    data: dict


def configured(base: RunConfig, setting: dict) -> RunConfig:
    """`base` with a setting's RoPE, mask, decoding method, context transform and new-token budget, where
    it names them."""
    changes = {"rope": RopeSpec.parse(setting["rope"]) if "rope" in setting else None,
               "mask": MaskSpec.parse(setting["mask"]) if "mask" in setting else None,
               "decoding": DecodingSpec.parse(setting["method"]) if "method" in setting else None,
               "transform": TransformSpec.parse(setting["transform"]) if "transform" in setting else None,
               "max_new_tokens": setting.get("max_new_tokens")}
    return dataclasses.replace(base, **{k: v for k, v in changes.items() if v is not None})


def grid_study(loaded: LoadedModel, base: RunConfig, s: dict, should_stop) -> Iterator[Step]:
    """Task probes over variants (settings, tasks or builder params) x lengths x depths x seeds, each
    variant's cells run with prefix sharing as a sweep does."""
    variants = s.get("variants") or [{"label": s["task"]}]
    per_variant = len(s["lengths"]) * len(s["depths"]) * len(s["seeds"])
    check_cells(per_variant * len(variants), f"This card's grid of {per_variant * len(variants)} cells")
    rows: list[dict] = []
    for variant in variants:
        task = variant.get("task", s["task"])
        config = configured(base, {"max_new_tokens": get_task(task).max_new_tokens} | variant)
        spec = SweepSpec(task, tuple(s["lengths"]), tuple(s["depths"]), tuple(s["seeds"]),
                         params=s.get("params", {}) | variant.get("params", {}))
        cells = build_cells(loaded.tokenizer, spec, config.chat_template, max_tokens=max_prompt_tokens(loaded),
                            transform=config.transform)
        for result in run_sweep(loaded, spec, cells, should_stop, config):
            rows.append(result.row() | {"variant": variant["label"]})
            yield Step(len(rows), per_variant * len(variants), {"rows": rows, **_axes(s, variants)})


def _axes(s: dict, variants: list[dict]) -> dict:
    return {"lengths": s["lengths"], "depths": s["depths"], "variants": [v["label"] for v in variants]}


def models_study(loaded: LoadedModel, base: RunConfig, s: dict, should_stop) -> Iterator[Step]:
    """The same grid on each model (lengths in each model's own tokens, the needle at the same depth of
    the same text), then one far needle with the question's attention captured: the mass on the needle
    per layer, which on a model with local and global layers only the global ones can reach. The model
    the panel chose runs last, so it is the one left loaded."""
    names = s["models"]
    for name in names:
        check_model(name)  # a public Space serves only the models its operator lists
    per_model = len(s["lengths"]) * len(s["depths"]) * len(s["seeds"])
    check_cells(per_model * len(names), f"This card's grid of {per_model * len(names)} cells")
    data: dict = {"rows": [], "layer_mass": {}, "lengths": s["lengths"], "depths": s["depths"], "variants": names}
    total = (per_model + 1) * len(names)
    for name in sorted(names, key=lambda n: n == loaded.spec.model):
        model = MANAGER.get(dataclasses.replace(loaded.spec, model=name))
        config = dataclasses.replace(base, model=model.spec, max_new_tokens=get_task(s["task"]).max_new_tokens)
        spec = SweepSpec(s["task"], tuple(s["lengths"]), tuple(s["depths"]), tuple(s["seeds"]))
        cells = build_cells(model.tokenizer, spec, config.chat_template, max_tokens=max_prompt_tokens(model),
                            transform=config.transform)
        for result in run_sweep(model, spec, cells, should_stop, config):
            data["rows"] = data["rows"] + [result.row() | {"variant": name}]
            yield Step(len(data["rows"]) + len(data["layer_mass"]), total, data)
        instance = build_probe(model.tokenizer, ProbeSpec(s["task"], seed=s["seeds"][0], **s["far"]),
                               config.chat_template, max_tokens=max_prompt_tokens(model))
        capture = AttentionCapture(question_positions(model.tokenizer, instance.prompt, instance.question),
                                   new_tokens=False)
        *_, outcome = run_probe(model, instance, "generate", config, should_stop, capture=capture)
        per_head = span_mass(stacked(capture), instance.needle_token_spans)
        data["layer_mass"] = data["layer_mass"] | {name: {
            "mass": [round(sum(heads) / len(heads), 5) for heads in per_head],
            "layers": layer_labels(model.model.config), "found": outcome.score.correct,
            "needle_distance": instance.prompt_tokens - instance.needle_token_spans[0][1]}}
        yield Step(len(data["rows"]) + len(data["layer_mass"]), total, data)


def nll_study(loaded: LoadedModel, base: RunConfig, s: dict, should_stop) -> Iterator[Step]:
    """Per-token NLL over one prose stream under each setting (the StreamingLLM picture)."""
    if s["tokens"] > max_prompt_tokens(loaded):
        raise SpecError(f"This card's stream has {s['tokens']:,} tokens; this model and the free memory allow at most "
                        f"{max_prompt_tokens(loaded):,} here.")
    ids = prose_stream(loaded.tokenizer, s["tokens"]).to(loaded.device)
    curves: dict[str, list[float]] = {}
    for setting in s["settings"]:
        if should_stop():
            return
        config = configured(base, setting)
        curves[setting["label"]] = [round(nll, 3) for nll in token_nll(loaded.model, ids, config.rope, config.mask)]
        yield Step(len(curves), len(s["settings"]), {"curves": curves})


def heads_study(loaded: LoadedModel, base: RunConfig, s: dict, should_stop) -> Iterator[Step]:
    """Retrieval scores of every head on a probe whose answer is copied from the haystack, then the
    probe with the top heads masked and with as many random heads masked."""
    instance = build_probe(loaded.tokenizer, ProbeSpec(**s["probe"]), base.chat_template,
                           max_tokens=max_prompt_tokens(loaded))
    config = configured(base, {"max_new_tokens": instance.max_new_tokens})
    capture = AttentionCapture([instance.prompt_tokens - 1])
    *_, outcome = run_probe(loaded, instance, "generate", config, should_stop, capture=capture)
    prompt_ids = encode(loaded.tokenizer, instance.prompt)[0].tolist()
    span = answer_span(loaded.tokenizer, prompt_ids, instance.expected[0])
    generated = [event.token_id for event in outcome.generation.tokens]
    if span is None or len(generated) < 2:
        raise SpecError("The answer was not copied from the haystack, so no head can be scored; choose "
                        "another seed or a shorter length.")
    scores = retrieval_scores(step_attention(capture), generated[1:], prompt_ids, span).tolist()
    data = {"scores": scores, "rows": []}
    yield Step(1, 4, data)
    for row in masking_effect(loaded, instance, config, top_heads(scores, s["heads"]), s.get("seed", 0), should_stop):
        data = data | {"rows": data["rows"] + [row]}
        yield Step(1 + len(data["rows"]), 4, data)


def conflicts_study(loaded: LoadedModel, base: RunConfig, s: dict, should_stop) -> Iterator[Step]:
    """Decoding methods on knowledge conflicts: the share of answers that follow the context."""
    methods = [DecodingSpec.parse(m) for m in s["methods"]]
    rows: list[dict] = []
    for row in run_conflicts(loaded, configured(base, s), methods, should_stop, s["items"]):
        rows.append(row)
        yield Step(len(rows), len(methods) * s["items"], {"summary": conflict_summary(rows), "rows": rows})


def knob_study(loaded: LoadedModel, base: RunConfig, s: dict, should_stop) -> Iterator[Step]:
    """The conflict set at each knob value: the share of answers that follow the context against the knob."""
    rows: list[dict] = []
    for row in knob_curve(loaded, configured(base, s), s["knobs"], should_stop, s["items"]):
        rows.append(row)
        yield Step(len(rows), len(s["knobs"]) * s["items"], {"summary": conflict_summary(rows, by="knob"), "rows": rows,
                                                             "layer": find_knob(loaded).layer})


def decode_study(loaded: LoadedModel, base: RunConfig, s: dict, should_stop) -> Iterator[Step]:
    """One question answered by several decoding methods: each method's answers and their diversity."""
    prompt = format_prompt(loaded.tokenizer, s.get("context", ""), s["question"], base.chat_template,
                           transform=base.transform)
    runs: list[dict] = []
    for method in s["methods"]:
        *_, result = run_free(loaded, prompt, configured(base, {"method": method} | s), should_stop)
        details = result.details
        beams = [{"text": b["text"], "score": b["score"]} for b in details.get("beams", [])]
        runs.append({"method": method, "text": result.text, "beams": beams, "diversity": details.get("diversity"),
                     "seconds": result.seconds})
        yield Step(len(runs), len(s["methods"]), {"runs": runs})


def sift_study(loaded: LoadedModel, base: RunConfig, s: dict, should_stop) -> Iterator[Step]:
    """A word problem through SIFT, stage by stage, against its gold answer."""
    limits().check_calls(MAX_CALLS, s["budget"])
    problem = problems()[s["problem"]]
    stages: list[dict] = []
    for item in run_sift(loaded, query_of("", problem["question"]), configured(base, s), s["budget"], should_stop):
        if isinstance(item, SiftResult):
            result = item.to_dict() | {"gold": problem["answer"], "correct": equivalent(item.answer, problem["answer"]),
                                       "baseline_correct": equivalent(item.baseline_answer, problem["answer"])}
            yield Step(1, 1, result)
        else:
            stages.append(item.to_dict())
            yield Step(0, 1, {"stages": stages, "gold": problem["answer"]})


def _mass_by_kind(far: dict) -> str:
    """The question's mean attention mass on the far needle per layer, local and global layers apart."""
    kinds: dict[str, list[float]] = {}
    for index, mass in enumerate(far["mass"]):
        kind = far["layers"][index].split()[-1] if far["layers"] else "global"
        kinds.setdefault(kind, []).append(mass)
    found = "found" if far["found"] else "missed"
    return found + ", mass on it per layer " + ", ".join(
        f"{sum(v) / len(v):.4f} in {len(v)} {kind} layers" for kind, v in sorted(kinds.items()))


STUDIES: dict[str, Callable[..., Iterator[Step]]] = {
    "grid": grid_study, "models": models_study, "nll": nll_study, "heads": heads_study, "conflicts": conflicts_study,
    "knob": knob_study, "decode": decode_study, "sift": sift_study}


def run_card(loaded: LoadedModel, card: Card, base: RunConfig,
             should_stop: Callable[[], bool] = lambda: False) -> Iterator[Step]:
    """The card's study on `loaded` (its size chosen by the device), from `base`'s template and model."""
    yield from STUDIES[card.study](loaded, base, card.sized(loaded.device), should_stop)


def stored_record(data: dict, seconds: float, loaded: LoadedModel) -> dict:
    return {"data": data, "seconds": round(seconds, 1), "device": loaded.device,
            "model": loaded.provenance(), "built": time.strftime("%Y-%m-%d")}


def result_sentence(card: Card, data: dict) -> str:
    """What the stored (or live) result shows, in one sentence computed from it."""
    if card.study == "grid":
        rows = data["rows"]
        parts = []
        for variant in data["variants"]:
            mine = [r for r in rows if r["variant"] == variant]
            if mine:
                parts.append(f"{variant} {sum(r['score'] for r in mine) / len(mine):.0%}")
        text = "Mean score: " + ", ".join(parts)
        if len(data["depths"]) > 2 and rows:
            curve = by_depth([r for r in rows if r["variant"] == data["variants"][0]], value="score")
            text += (f"; {data['variants'][0]} by depth "
                     + " / ".join(f"{d:g}%: {v:.0%}" for d, v in sorted(curve.items())))
        return text + f" ({len(rows)} probes)."
    if card.study == "models":
        found = []
        for name in data["variants"]:
            by_length = {}
            for row in data["rows"]:
                if row["variant"] == name:
                    by_length.setdefault(row["length"], []).append(row["score"])
            if by_length:
                found.append(f"{name} " + ", ".join(f"{length:,}: {sum(v) / len(v):.0%}"
                                                     for length, v in sorted(by_length.items())))
        return ("Found, by prompt length: " + "; ".join(found) + f" ({len(data['rows'])} probes)." + "".join(
            f" Needle {far['needle_distance']:,} tokens back, {name}: {_mass_by_kind(far)}."
            for name in data["variants"] if (far := data["layer_mass"].get(name))))
    if card.study == "nll":
        means = {label: sum(c[-len(c) // 4:]) / max(1, len(c) // 4) for label, c in data["curves"].items()}
        return "Mean NLL over the last quarter of the stream: " + ", ".join(f"{k} {v:.2f}" for k, v in means.items()) + "."
    if card.study == "heads":
        return "Answers: " + "; ".join(f"{r['setting']}: {'found' if r['correct'] else 'missed'} "
                                       f"(gold log p {r['gold_logprob']:.2f})" for r in data["rows"]) + "."
    if card.study == "conflicts":
        return "Answers following the context: " + ", ".join(
            f"{row['method']} {row['follows_context']:.0%}" for row in data["summary"]) + "."
    if card.study == "knob":
        return f"Answers following the context, by knob (layer {data['layer']}): " + ", ".join(
            f"{row['knob']:g}: {row['follows_context']:.0%}" for row in data["summary"]) + "; following memory: " + ", ".join(
            f"{row['knob']:g}: {row['follows_memory']:.0%}" for row in data["summary"]) + "."
    if card.study == "decode":
        return "Distinct bigrams among the beams: " + ", ".join(
            f"{run['method']} {run['diversity']['distinct_2']:.2f}" for run in data["runs"] if run["diversity"]) + "."
    verdict = "right" if data.get("correct") else "wrong"
    return (f"SIFT answered {data.get('answer')!s} ({verdict}; gold {data['gold']}, resolved at "
            f"{data.get('resolved_at')}); the question alone gave {data.get('baseline_answer')!s}.")
