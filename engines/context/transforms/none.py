"""The prompt as built: context, then question."""
from __future__ import annotations

from engines.config.kinds import register
from engines.context.transforms import TransformKind


@register
class Untransformed(TransformKind):
    name = "none"
    description = "the context and question as built"
