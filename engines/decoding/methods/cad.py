"""Context-aware decoding (Shi et al. 2023) and AdaCAD (Wang et al. 2024): contrast the logits with
the context against those without it."""
from __future__ import annotations

import torch

from engines.config.errors import SpecError
from engines.config.kinds import Setting, register
from engines.decoding.generation import encode, jsd, top_tokens
from engines.decoding.methods import ChooserMethod


def cad_chooser(loaded, plain_ids: torch.Tensor, alpha: float | None):
    """A second KV cache runs the prompt without the context; the chosen token maximises
    (1+a) z(y|c,x) - a z(y|x). `alpha` None is AdaCAD: a = JSD of the two distributions."""
    from engines.decoding.cache import new_cache

    cache, state = new_cache(), {"next": plain_ids.to(loaded.device)}
    tokenizer = loaded.tokenizer

    def choose(logits, outputs, ids):
        plain = loaded.model(input_ids=state["next"], cache=cache, use_cache=True, logits_to_keep=1).logits[0, -1]
        a = jsd(logits, plain) if alpha is None else alpha
        combined = (1 + a) * logits.float() - a * plain.float()
        token = int(combined.argmax())
        state["next"] = torch.tensor([[token]], device=loaded.device)
        return token, combined, {"alpha": round(a, 5), "with_context": top_tokens(tokenizer, logits),
                                 "without_context": top_tokens(tokenizer, plain)}

    return choose


@register
class ContextAware(ChooserMethod):
    name = "cad"
    description = ("context-aware decoding: (1+alpha) x logits with the context - alpha x logits without it "
                   "(two passes per token)")
    needs_plain_prompt = True
    supports_capture = False  # the second pass would be captured too
    supports_shared_positions = False
    settings = (Setting("alpha", "float", 1.0, "how strongly the context counts; 0 is plain decoding"),)

    def check(self, values):
        if values["alpha"] < 0:
            raise SpecError(f"alpha={values['alpha']} is negative: use 0 (plain decoding) or more (1 for "
                            "knowledge conflicts, 0.5 for summaries).")

    def chooser(self, job):
        return cad_chooser(job.loaded, encode(job.loaded.tokenizer, job.plain_prompt), job.spec.get("alpha"))


@register
class AdaptiveContextAware(ChooserMethod):
    name = "adacad"
    description = "context-aware decoding with alpha at each step = JSD(p(.|context) || p(.|no context))"
    needs_plain_prompt = True
    supports_capture = False
    supports_shared_positions = False

    def chooser(self, job):
        return cad_chooser(job.loaded, encode(job.loaded.tokenizer, job.plain_prompt), None)
