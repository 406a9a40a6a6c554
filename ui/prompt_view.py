"""The prompt as a person reads it: needles, distractors and the gold document marked, and after a
capture every token shaded by the attention it received, its text and weight on hover. Every piece of
prompt text is escaped here (it may hold a visitor's upload); long prompts show the start, the end
and the marked places."""
from __future__ import annotations

import html

MARKED = {"needle": "#d62728", "gold": "#2ca02c", "distractor": "#ff7f0e"}
SHOW_ALL_CHARS = 12_000
AROUND_MARK = 400
ENDS = 800


def shown_ranges(length: int, spans: list[dict]) -> list[tuple[int, int]]:
    """Character ranges to show: everything when short; else the ends and the marked spans with margins."""
    if length <= SHOW_ALL_CHARS:
        return [(0, length)]
    wanted = [(0, ENDS), (length - ENDS, length)] + [
        (max(0, s["char_start"] - AROUND_MARK), min(length, s["char_end"] + AROUND_MARK))
        for s in spans if s["kind"] in MARKED]
    merged: list[list[int]] = []
    for start, end in sorted(wanted):
        if merged and start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    return [(start, end) for start, end in merged]


def _kind_at(spans: list[dict], start: int, end: int) -> dict | None:
    return next((s for s in spans if s["kind"] in MARKED and s["char_start"] < end and start < s["char_end"]), None)


def _pieces(prompt: str, spans: list[dict], offsets: list[tuple[int, int]] | None) -> list[tuple[int, int, int | None]]:
    """(char start, char end, token index or None): the prompt cut at tokens when shading, else at marks."""
    if offsets:
        return [(start, end, index) for index, (start, end) in enumerate(offsets) if end > start]
    cuts = sorted({0, len(prompt)} | {c for s in spans if s["kind"] in MARKED for c in (s["char_start"], s["char_end"])})
    return [(a, b, None) for a, b in zip(cuts, cuts[1:]) if b > a]


def highlighted(prompt: str, spans: list[dict], weights: list[float] | None = None,
                offsets: list[tuple[int, int]] | None = None) -> str:
    """HTML of the prompt; `weights` (one per token, with the tokens' character `offsets`) shade it."""
    top = max(weights) if weights else 0.0
    parts, ranges = [], shown_ranges(len(prompt), spans)
    pieces = _pieces(prompt, spans, offsets if weights else None)
    for number, (first, last) in enumerate(ranges):
        if number:
            parts.append(f'<span class="prompt-gap">[... {first - ranges[number - 1][1]:,} characters not shown '
                         "...]</span>")
        for start, end, index in pieces:
            if end <= first or start >= last:
                continue
            text = html.escape(prompt[max(start, first):min(end, last)])
            mark = _kind_at(spans, start, end)
            style, title = [], []
            if mark:
                style.append(f"border-bottom:3px solid {MARKED[mark['kind']]}")
                title.append(f"{mark['kind']}: {mark['label']}")
            if index is not None and index < len(weights):
                share = weights[index] / top if top else 0.0
                style.append(f"background:rgba(255,127,14,{share:.2f})")
                title.append(f"token {index} {prompt[start:end]!r}: attention {weights[index]:.4f}")
            if style:
                parts.append(f'<span style="{";".join(style)}" title="{html.escape(" | ".join(title))}">{text}</span>')
            else:
                parts.append(text)
    legend = " ".join(f'<span style="border-bottom:3px solid {colour}">{kind}</span>' for kind, colour in MARKED.items()
                      if any(s["kind"] == kind for s in spans))
    shading = " Shading: attention of the question's rows (mean over layers and heads); hover a token." if weights else ""
    return (f'<div class="prompt-view"><div class="prompt-legend">{legend}{shading}</div>'
            f'<pre class="prompt-text">{"".join(parts)}</pre></div>')


def token_offsets(tokenizer, prompt: str) -> list[tuple[int, int]]:
    """Each prompt token's character range, as the lab's encoding cuts the prompt."""
    return [tuple(pair) for pair in tokenizer(prompt, add_special_tokens=False,
                                              return_offsets_mapping=True)["offset_mapping"]]


def token_texts(tokenizer, ids: list[int]) -> list[str]:
    """Each token's text (for hover labels)."""
    return [tokenizer.decode([token]) for token in ids]
