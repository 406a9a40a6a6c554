"""NoPE (Kazemnejad et al. 2023, The Impact of Positional Encoding on Length Generalization in
Transformers): layers with no positional encoding at all. Here an ablation of a trained RoPE model:
the chosen layers take their queries and keys unrotated, the other layers keep the model's own RoPE.
The paper trains models without positions from the start; turning rotation off in a model trained
with it measures how much those layers lean on it."""
from __future__ import annotations

from engines.config.errors import SpecError
from engines.config.kinds import Setting, register
from engines.context.rope import RopeKind, default_inv_freq


def layer_range(text: str, count: int | None) -> list[int]:
    """'all', 'A' or 'A-B' (inclusive) as layer indices; checked against `count` layers when given."""
    text = str(text).strip()
    if text == "all":
        if count is None:
            return []
        return list(range(count))
    low, _, high = text.partition("-")
    try:
        first, last = int(low), int(high or low)
    except ValueError:
        raise SpecError(f"RoPE 'nope': layers={text!r} must be all, one layer A or a range A-B, e.g. 0-29.") from None
    if not 0 <= first <= last:
        raise SpecError(f"RoPE 'nope': layers={text} must run from a lower to a higher layer, from 0.")
    if count is not None and last >= count:
        raise SpecError(f"RoPE 'nope': layers={text} goes past this model's last layer, {count - 1}.")
    return list(range(first, last + 1))


@register
class NoPE(RopeKind):
    name = "nope"
    description = "no rotation in the chosen layers (queries and keys as they are); the others keep the model's RoPE"
    settings = (Setting("layers", "str", "all", "the layers left unrotated: all, one layer A, or a range A-B"),)

    def check(self, values):
        layer_range(values["layers"], None)

    def frequencies(self, spec, base, dim, trained, seq_len):
        return default_inv_freq(base, dim), 1.0

    def unrotated(self, spec, layers: int) -> list[int]:
        return layer_range(spec.get("layers"), layers)
