"""Structurization (Liu et al. 2024, Enhancing LLM's Cognition via Structurization): the context rewritten
as a scope line, numbered sections and numbered points, so the model reads an outline instead of running
text. The paper's rewriter is a trained model (StruXGPT) that also writes each section's aspect; this
splitter is rule-based: a point per sentence, kept word for word; a section per document (titled by its
own title) and per `points` sentences (or lines) of anything else."""
from __future__ import annotations

import re

from engines.config.kinds import Setting, register
from engines.context.transforms import TransformKind
from engines.probes.haystack import split_sentences

TITLE = re.compile(r"^(?:Document \[\d+\])?\(Title: ([^)]*)\)")


@register
class Structurize(TransformKind):
    name = "structurize"
    description = "the context as numbered sections and points (a rule-based splitter)"
    settings = (Setting("points", "int", 5, "most sentences in a section of running text", 1, 100),)

    def apply(self, spec, context, question):
        sections: list[tuple[str, list[str]]] = []  # heading, points
        titled = False  # whether the last section is a document
        for line in context.splitlines():
            title = TITLE.match(line.strip())
            for index, sentence in enumerate(split_sentences(line)):
                if not sections or (index == 0 and (title or titled)) or len(sections[-1][1]) == spec.get("points"):
                    sections.append((title.group(1) if title else f"Part {len(sections) + 1}", []))
                    titled = bool(title)
                sections[-1][1].append(sentence)
        lines = [f"The context in {len(sections)} numbered sections of numbered points."]
        for number, (heading, points) in enumerate(sections, 1):
            lines += [f"{number}. {heading}"] + [f"{number}.{k}. {point}" for k, point in enumerate(points, 1)]
        return "\n".join(lines), question
