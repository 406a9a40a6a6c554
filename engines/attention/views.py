"""Numbers drawn from an AttentionCapture for the attention views (pure tensor maths, no UI).

The capture holds, per layer, [heads, rows, keys] for prompt rows and [heads, keys] per new token.
"""
from __future__ import annotations

import zlib

import torch

from engines.attention.function import AttentionCapture


def question_positions(tokenizer, prompt: str, question: str) -> list[int]:
    """Positions of the tokens that hold the question in the built prompt, found by characters (its
    last occurrence: the question follows the context) through the tokenizer's offset mapping, so the
    chat template's tokens and any answer prefix after it are never counted."""
    start = prompt.rfind(question.strip())
    if not question.strip() or start < 0:
        raise ValueError("The question does not occur in the prompt.")
    end = start + len(question.strip())
    offsets = tokenizer(prompt, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    return [i for i, (a, b) in enumerate(offsets) if a < end and b > start]


def stacked(capture: AttentionCapture, source: str = "question") -> torch.Tensor:
    """[layers, heads, keys]: the mean over the question rows, or over the generated tokens so far
    (every layer recorded; the step still being written is left out)."""
    layers = sorted(capture.prompt)
    steps = [step for step in list(capture.steps) if len(step) == len(layers)]
    if source == "answer" and steps:
        keys = min(t.shape[-1] for step in steps for t in step.values())
        return torch.stack([torch.stack([step[layer][:, :keys] for step in steps]).mean(0) for layer in layers])
    return torch.stack([capture.prompt[layer].mean(dim=1) for layer in layers])


def context_profile(matrix: torch.Tensor, layer: int | None = None, head: int | None = None,
                    reduce: str = "mean") -> list[float]:
    """Attention over key positions for one layer/head, or reduced (mean or max) over them."""
    chosen = matrix if layer is None else matrix[layer:layer + 1]
    chosen = chosen if head is None else chosen[:, head:head + 1]
    flat = chosen.reshape(-1, chosen.shape[-1])
    return (flat.max(dim=0).values if reduce == "max" else flat.mean(dim=0)).tolist()


def span_mass(matrix: torch.Tensor, spans: list[tuple[int, int]]) -> list[list[float]]:
    """[layers][heads] attention mass on the union of the token spans (e.g. the needles)."""
    keep = torch.zeros(matrix.shape[-1], dtype=torch.bool)
    for start, end in spans:
        keep[start:min(end, matrix.shape[-1])] = True
    return matrix[..., keep].sum(dim=-1).tolist()


def retrieval_scores(steps: list[torch.Tensor], generated: list[int], prompt_ids: list[int],
                     span: tuple[int, int]) -> torch.Tensor:
    """Copy-paste retrieval score of every head for one test ([layers, heads]).

    steps[t] is [layers, heads, keys], the attention of the query that produced generated[t]. A head
    earns 1/|span| at a step when its top-1 key lies inside the needle's answer span and the token
    there is the token just generated."""
    start, end = span
    scores = torch.zeros(steps[0].shape[:2])
    for attention, token in zip(steps, generated):
        top = attention.argmax(dim=-1)  # [layers, heads]
        inside = (top >= start) & (top < end)
        copies = torch.tensor(prompt_ids, device=top.device)[top.clamp(max=len(prompt_ids) - 1)] == token
        scores += (inside & copies).float() / (end - start)
    return scores


def step_attention(capture: AttentionCapture) -> list[torch.Tensor]:
    """[layers, heads, keys] per decode step (the query fed at that step), cut to the prompt's keys."""
    layers = sorted(capture.prompt)
    keys = min(t.shape[-1] for step in capture.steps for t in step.values()) if capture.steps else 0
    return [torch.stack([step[layer][:, :keys] for layer in layers]) for step in capture.steps]


def layer_position(matrix: torch.Tensor, bins: int = 64) -> list[list[float]]:
    """[layers][bins]: attention mass per layer (mean over heads) in equal-width position bins."""
    per_layer = matrix.mean(dim=1)  # [layers, keys]
    edges = torch.linspace(0, per_layer.shape[-1], bins + 1).long()
    return [[float(row[edges[b]:edges[b + 1]].sum()) for b in range(bins)] for row in per_layer]


def segment_mass(matrix: torch.Tensor, spans: list[dict], sinks: int = 4) -> dict[str, float]:
    """Mass (mean over layers and heads) on the sinks, each needle or document, the haystack by
    deciles, and everything else (template and question)."""
    profile = matrix.mean(dim=(0, 1))
    taken = torch.zeros(profile.shape[0], dtype=torch.bool)
    out = {f"first {sinks} (sinks)": float(profile[:sinks].sum())}
    taken[:sinks] = True
    for span in spans:
        if span["kind"] in ("needle", "gold", "distractor", "document"):
            part = slice(span["token_start"], span["token_end"])
            out[f"{span['kind']}: {span['label']}"] = float(profile[part][~taken[part]].sum())
            taken[part] = True
    hay = next((s for s in spans if s["kind"] == "haystack"), None)
    if hay is not None:
        edges = torch.linspace(hay["token_start"], hay["token_end"], 11).long()
        for decile in range(10):
            part = slice(int(edges[decile]), int(edges[decile + 1]))
            out[f"haystack {10 * decile}-{10 * decile + 10}%"] = float(profile[part][~taken[part]].sum())
            taken[part] = True
    out["rest (template, question)"] = float(profile[~taken].sum())
    return out


def pack(matrix: torch.Tensor) -> dict:
    """A capture matrix as compressed float16 bytes (about 2 bytes per value before compression)."""
    return {"shape": list(matrix.shape), "data": zlib.compress(matrix.half().contiguous().numpy().tobytes(), 1)}


def unpack(packed: dict) -> torch.Tensor:
    data = bytearray(zlib.decompress(packed["data"]))
    return torch.frombuffer(data, dtype=torch.float16).reshape(packed["shape"]).float()


def answer_span(tokenizer, prompt_ids: list[int], answer: str) -> tuple[int, int] | None:
    """Token positions [start, end) of the first place in the prompt whose tokens spell `answer`."""
    for start in range(len(prompt_ids)):
        if not answer.startswith(tokenizer.decode(prompt_ids[start:start + 1]).strip()[:1] or "\0"):
            continue
        for end in range(start + 1, min(start + 64, len(prompt_ids)) + 1):
            text = tokenizer.decode(prompt_ids[start:end]).strip()
            if text == answer:
                return start, end
            if not answer.startswith(text):
                break
    return None


def top_heads(scores: list[list[float]], count: int) -> list[tuple[int, int]]:
    """The (layer, head) pairs of the `count` highest scores (at most all heads but one)."""
    flat = torch.tensor(scores).flatten()
    count = max(1, min(count, flat.numel() - 1))
    return [divmod(i, len(scores[0])) for i in torch.topk(flat, count).indices.tolist()]


def capture_views(capture: AttentionCapture, instance, layers: list[str] | None = None) -> dict:
    """What the attention views of a probe show, small enough to log: the question rows' attention
    over the context (mean over layers and heads), the layer x head mass on the needles, the layer x
    position map, the mass per segment and, on models with local and global layers, their labels."""
    matrix = stacked(capture)
    return {"profile": context_profile(matrix), "needle_mass": span_mass(matrix, instance.needle_token_spans),
            "layer_position": layer_position(matrix), "segments": segment_mass(matrix, list(instance.spans)),
            "rows": capture.positions, "captured_bytes": capture.bytes, "layers": layers}


def layer_labels(config) -> list[str] | None:
    """'5 global', '6 local', ... for a model whose layers mix full attention and a sliding window
    (Gemma 3, Qwen2 with sliding layers); None when every layer is alike."""
    types = getattr(config, "layer_types", None)
    if not types or len(set(types)) == 1:
        return None
    return [f"{i} {'local' if t == 'sliding_attention' else 'global'}" for i, t in enumerate(types)]
