"""NoPE as an ablation (`nope:layers=A-B`): the chosen layers take their queries and keys unrotated.
Checked on tiny random-weight Llama models against what no positions must mean (a one-layer model's
last output cannot depend on the order of the tokens before it) and against stock transformers with
the rotation taken out of one layer by hand, and on the embedded model through the CLI."""
import json
import subprocess
import sys

import pytest
import torch
from conftest import ROOT
from transformers import LlamaConfig, LlamaForCausalLM

from engines.config.errors import SpecError
from engines.config.specs import MaskSpec, ModelSpec, RopeSpec
from engines.context.run import run_state
from engines.model.loading import MANAGER

pytestmark = pytest.mark.model


def tiny_llama(path, tokenizer, layers: int):
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=layers,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
                         tie_word_embeddings=True)
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return MANAGER.get(ModelSpec(model=str(path), dtype="fp32"))


def last_logits(loaded, ids, rope: str, mask: str = "causal") -> torch.Tensor:
    with torch.inference_mode(), run_state(loaded.model, RopeSpec.parse(rope), MaskSpec.parse(mask)):
        return loaded.model(input_ids=ids).logits[0, -1]


def test_without_rotation_the_order_before_the_last_token_does_not_matter(tmp_path, tokenizer):
    loaded = tiny_llama(tmp_path, tokenizer, 1)
    ids = torch.randint(100, 5000, (1, 300), generator=torch.Generator().manual_seed(1))
    shuffled = torch.cat([ids[:, :-1][:, torch.randperm(299, generator=torch.Generator().manual_seed(2))],
                          ids[:, -1:]], dim=1)
    assert torch.allclose(last_logits(loaded, ids, "nope"), last_logits(loaded, shuffled, "nope"), atol=1e-4)
    assert not torch.allclose(last_logits(loaded, ids, "default"), last_logits(loaded, shuffled, "default"), atol=1e-3)
    # a window mask's re-indexed sinks move keys by rotating them: in an unrotated layer that moves nothing
    assert torch.allclose(last_logits(loaded, ids, "nope", "sinks:n_sink=4,window=64,reindex=1"),
                          last_logits(loaded, ids, "nope", "sinks:n_sink=4,window=64"), atol=1e-4)


def test_one_unrotated_layer_equals_transformers_with_that_layers_rotation_removed(tmp_path, tokenizer):
    loaded = tiny_llama(tmp_path, tokenizer, 2)
    ids = torch.randint(100, 5000, (1, 400), generator=torch.Generator().manual_seed(3))
    stock = LlamaForCausalLM.from_pretrained(tmp_path, attn_implementation="eager", dtype=torch.float32).eval()

    def identity_rotation(module, args, kwargs):
        cos, sin = kwargs["position_embeddings"]
        return args, kwargs | {"position_embeddings": (torch.ones_like(cos), torch.zeros_like(sin))}

    stock.model.layers[1].self_attn.register_forward_pre_hook(identity_rotation, with_kwargs=True)
    with torch.inference_mode():
        reference = stock(input_ids=ids).logits[0, -1]
    assert torch.allclose(last_logits(loaded, ids, "nope:layers=1"), reference, atol=2e-4)
    assert not torch.allclose(last_logits(loaded, ids, "default"), reference, atol=1e-3)
    with pytest.raises(SpecError, match="past this model's last layer, 1"):
        last_logits(loaded, ids, "nope:layers=0-2")


def test_cli_unrotated_layers_move_the_gold_logprob(embedded):
    logprobs = {}
    for rope in ("default", "nope:layers=0-29"):
        done = subprocess.run([sys.executable, str(ROOT / "app.py"), "probe", "--task", "passkey", "--length", "800",
                               "--score", "logprob", "--rope", rope, "--json"], capture_output=True, text=True,
                              timeout=300)
        assert done.returncode == 0, done.stderr
        logprobs[rope] = json.loads(done.stdout)["logprob"]
    assert logprobs["nope:layers=0-29"] < logprobs["default"] - 5
