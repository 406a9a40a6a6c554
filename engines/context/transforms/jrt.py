"""Just Read Twice (Arora et al. 2024, Just read twice: closing the recall gap for recurrent language
models): the context given more than once before the question, so that on a second reading every
token can be read knowing what the rest holds."""
from __future__ import annotations

from engines.config.kinds import Setting, register
from engines.context.transforms import TransformKind


@register
class JustReadTwice(TransformKind):
    name = "jrt"
    description = "Just Read Twice: the context repeated before the question"
    settings = (Setting("times", "int", 2, "how many times the context is given", 2, 4),)

    def apply(self, spec, context, question):
        return "\n\n".join([context] * spec.get("times")), question
