"""GPU figures through the lab's own loader and engine, on Llama-shaped models with random weights built
from a config (a GPU machine may have no Hub access): prefill tokens/s, decode tokens/s after a long
prompt against the bound the device's memory bandwidth sets, every visibility mask against eager
attention, the attention capture's memory, and the sweep engine's speedup. Prints one JSON line.

Run: python -m bench.gpu [--shapes 1b,8b] [--quants none,8bit,nf4] [--smoke] [--json]
`--smoke` runs the same path on a tiny shape and short prompts, on whatever device there is (CI: the CPU),
decoding with the GPU's steps (a static cache and a compiled forward) there too.
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import psutil
import torch

from bench.decode import _never_stop as never_stop
from bench.prefill import best_seconds
from bench.sweep import compare
from engines.attention.function import AttentionCapture
from engines.config.kinds import entries, lookup
from engines.config.specs import MaskSpec, ModelSpec, RopeSpec
from engines.context.masks import segment_ids, visible
from engines.context.run import run_state
from engines.decoding.cache import static_decoding
from engines.decoding.generation import stream_tokens
from engines.model.loading import MANAGER
from engines.studies.sweeps import SweepSpec, depth_grid

LLAMA = {"rope_parameters": {"rope_type": "default", "rope_theta": 500000.0}, "max_position_embeddings": 131072,
         "num_key_value_heads": 8, "head_dim": 64}
SHAPES = {  # Llama 3.2 1B and Llama 3.1 8B, and a tiny one for --smoke
    "1b": dict(LLAMA, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
               tie_word_embeddings=True),
    "8b": dict(LLAMA, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
               head_dim=128, tie_word_embeddings=False),
    "tiny": dict(LLAMA, hidden_size=256, intermediate_size=512, num_hidden_layers=4, num_attention_heads=8,
                 num_key_value_heads=2, head_dim=32, tie_word_embeddings=True),
}
VOCAB = 128256
ESSAYS = Path(__file__).resolve().parents[1] / "assets" / "essays"


def tokenizer_dir(target: Path) -> Path:
    """A byte-level BPE tokenizer trained here on the lab's essays (no Hub needed), saved in `target`."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=2048, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tokenizer.train_from_iterator([p.read_text() for p in sorted(ESSAYS.glob("*.txt"))], trainer)
    PreTrainedTokenizerFast(tokenizer_object=tokenizer).save_pretrained(target)
    return target


def random_model_dir(shape: str, device: str, target: Path) -> Path:
    """A Llama of `shape` with random weights, initialized on `device` in bf16 and saved with a tokenizer."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    config = LlamaConfig(vocab_size=VOCAB, **SHAPES[shape])
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model.save_pretrained(target)
    del model
    empty_cache(device)
    return tokenizer_dir(target)


def empty_cache(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.empty_cache()


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def device_seconds(run, device: str, repeats: int = 2) -> float:
    """bench.prefill's best time of `run`, each timing ending when the device has finished its work."""
    synchronize(device)
    return best_seconds(lambda: (run(), synchronize(device)), repeats)


def bandwidth_bytes_per_s(device: str, megabytes: int) -> float:
    """Memory bandwidth measured by copying a buffer (each byte read once and written once)."""
    source = torch.empty(megabytes * 2**20, dtype=torch.uint8, device=device)
    target = torch.empty_like(source)
    target.copy_(source)
    return 2 * source.numel() / device_seconds(lambda: target.copy_(source), device, repeats=5)


def random_ids(length: int) -> torch.Tensor:
    return torch.randint(10, 2000, (1, length), generator=torch.Generator().manual_seed(length))


def prefill_seconds(loaded, length: int, implementation: str) -> float:
    """One prefill of `length` tokens with the given attention implementation (the lab's or stock sdpa)."""
    model, ids = loaded.model, random_ids(length).to(loaded.device)
    model.set_attn_implementation(implementation)
    try:
        with torch.inference_mode():
            return device_seconds(lambda: model(input_ids=ids, logits_to_keep=1), loaded.device)
    finally:
        model.set_attn_implementation("lab_sdpa")


def decode_tokens_per_s(loaded, prompt: int, tokens: int) -> float:
    """New tokens per second after a `prompt`-token prompt, through the lab's token loop (first token excluded)."""
    ids = random_ids(prompt)
    list(stream_tokens(loaded, ids, 4, choose=never_stop))  # compiles the step for this cache size
    times = [time.perf_counter() for _ in stream_tokens(loaded, ids, tokens, choose=never_stop)]
    return (len(times) - 1) / (times[-1] - times[0])


def kv_bytes(config, length: int, element: int) -> int:
    """The KV cache a decoding step reads after `length` tokens."""
    return 2 * config.num_hidden_layers * config.num_key_value_heads * config.head_dim * length * element


def unread_embedding_bytes(model) -> int:
    """A step reads one row of an input embedding that is not also the output layer; the rest of it stays unread."""
    embedding = model.get_input_embeddings().weight
    if embedding is model.get_output_embeddings().weight:
        return 0
    return embedding.numel() * embedding.element_size()


def visibility_kinds(trained: int) -> list[MaskSpec]:
    """Every mask kind whose rule is which keys a query sees, at which positions (no key turned further,
    re-weighted or re-scored), with its default settings for a model trained on `trained` tokens: eager
    attention under the same bool mask and positions is their reference. The others (APE, PINE in full,
    Lambda and clip beyond their window) are checked against their methods written out in the tests."""
    specs = []
    for name in entries("mask"):
        kind = lookup("mask", name)
        windowed = {"window": trained} if any(setting.name == "window" for setting in kind.settings) else {}
        spec = kind.resolved(MaskSpec(name, windowed), trained)
        moves_keys = kind.blockwise and kind.far_rotation(spec, torch.arange(2), torch.arange(2), 2, 1) != (None, None)
        if not (kind.scores_itself or kind.document_weighting(spec) is not None or moves_keys):
            specs.append(spec)
    return specs


def mask_differences(shape: str, device: str, length: int) -> dict[str, float]:
    """Per visibility mask kind: the largest logit difference between the lab's attention under the mask and
    eager attention under the same bool mask and positions, on a two-layer fp32 model of `shape`, over
    `length` tokens made of a prefix, eight documents and a question (windows sized to a quarter of it)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=4096, **dict(SHAPES[shape], num_hidden_layers=2))
    torch.manual_seed(1)
    with torch.device(device):
        model = LlamaForCausalLM(config).eval()
    model.set_attn_implementation("lab_sdpa")
    ids = (random_ids(length) % 4096).to(device)
    size = length // 10
    spans = [{"kind": "document", "token_start": size * (1 + i), "token_end": size * (2 + i)} for i in range(8)]
    segments = segment_ids(length, spans)
    q, k = torch.arange(length)[:, None], torch.arange(length)[None, :]
    differences = {}
    with torch.inference_mode():
        for spec in visibility_kinds(length // 4):
            with run_state(model, RopeSpec(), spec, spans, length) as positions:
                positions = None if positions is None else positions[None].to(device)
                ours = model(input_ids=ids, position_ids=positions).logits
            seen = visible(spec, q, k, segments)
            additive = torch.zeros(seen.shape).masked_fill(~seen, float("-inf"))[None, None].to(device)
            model.set_attn_implementation("eager")
            eager = model(input_ids=ids, attention_mask=additive, position_ids=positions).logits
            model.set_attn_implementation("lab_sdpa")
            differences[spec.label] = float((ours - eager).abs().max())
    return differences


def capture_memory(loaded, length: int) -> dict[str, float]:
    """The attention capture of the last 32 rows in every layer and head over a `length`-token prefill: what it
    holds, and the memory the prefill took above what was allocated before (peak on a GPU, resident growth on a
    CPU, where freed memory is reused and the figure is rough)."""
    ids, device = random_ids(length).to(loaded.device), loaded.device
    capture = AttentionCapture(list(range(length - 32, length)), new_tokens=False)
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    else:
        before = psutil.Process().memory_info().rss
    with torch.inference_mode(), run_state(loaded.model, RopeSpec(), MaskSpec(), capture=capture):
        loaded.model(input_ids=ids, logits_to_keep=1)
    after = torch.cuda.max_memory_allocated() if device.startswith("cuda") else psutil.Process().memory_info().rss
    return {"tokens": length, "held_mb": round(capture.bytes / 2**20, 2), "prefill_peak_mb": round((after - before) / 2**20, 1)}


def measure(directory: Path, shape: str, quant: str, sizes: dict, bandwidth: float) -> dict:
    four_bit = quant in ("nf4", "fp4")
    loaded = MANAGER.get(ModelSpec(model=str(directory), quant="4bit" if four_bit else quant,
                                   quant_4bit_type=quant if four_bit else "nf4"))
    config, device = loaded.model.config, loaded.device
    element = torch.finfo(loaded.dtype).bits // 8
    row = {"shape": shape, "quant": quant, "dtype": loaded.dtype_name, "footprint_mb": round(loaded.footprint_bytes / 2**20),
           "load_seconds": round(loaded.load_seconds, 1), "prefill_tokens_per_s": {}, "lab_attention_overhead": {}}
    for length in sizes["prefill"]:
        lab = prefill_seconds(loaded, length, "lab_sdpa")
        stock = prefill_seconds(loaded, length, "sdpa")
        row["prefill_tokens_per_s"][str(length)] = round(length / lab)
        row["lab_attention_overhead"][str(length)] = round(lab / stock - 1, 3)
    prompt = sizes["decode_prompt"]
    row["decode_steps"] = static_decoding(device)
    row["decode_tokens_per_s"] = round(decode_tokens_per_s(loaded, prompt, sizes["decode_tokens"]), 1)
    chosen = os.environ.get("CONTEXT_LAB_STATIC_DECODE")
    os.environ["CONTEXT_LAB_STATIC_DECODE"] = "dynamic"  # the growing cache, for comparison
    try:
        row["decode_dynamic_tokens_per_s"] = round(decode_tokens_per_s(loaded, prompt, sizes["decode_tokens"]), 1)
    finally:
        os.environ.pop("CONTEXT_LAB_STATIC_DECODE")
        if chosen is not None:
            os.environ["CONTEXT_LAB_STATIC_DECODE"] = chosen
    step_bytes = loaded.footprint_bytes + kv_bytes(config, prompt, element) - unread_embedding_bytes(loaded.model)
    row["decode_bound_tokens_per_s"] = round(bandwidth / step_bytes, 1)
    row["decode_fraction_of_bound"] = round(row["decode_tokens_per_s"] / row["decode_bound_tokens_per_s"], 3)
    return row


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--shapes", default="1b,8b")
    parser.add_argument("--quants", default="none,8bit,nf4")
    parser.add_argument("--smoke", action="store_true", help="a tiny shape and short prompts (CI, on the CPU)")
    parser.add_argument("--json", action="store_true", help="print only the JSON line")
    args = parser.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.smoke:  # the steps a GPU runs (static cache, compiled), on whatever device there is
        os.environ.setdefault("CONTEXT_LAB_STATIC_DECODE", "compiled")
    shapes = ["tiny"] if args.smoke else args.shapes.split(",")
    sizes = ({"prefill": [256, 1024], "decode_prompt": 512, "decode_tokens": 16, "masks": 256, "capture": 1024,
              "sweep": (200, 400)} if args.smoke else
             {"prefill": [8192, 32768], "decode_prompt": 8192, "decode_tokens": 128, "masks": 1024, "capture": 32768,
              "sweep": (2000, 4000, 8000)})
    say = (lambda *a: None) if args.json else (lambda *a: print(*a, flush=True))
    bandwidth = bandwidth_bytes_per_s(device, 64 if args.smoke else 2048)
    found = {"device": torch.cuda.get_device_name() if device == "cuda" else f"cpu ({os.cpu_count()} cores)",
             "bandwidth_gb_s": round(bandwidth / 1e9, 1), "models": []}
    say(f"device {found['device']}, copy bandwidth {found['bandwidth_gb_s']} GB/s")
    with tempfile.TemporaryDirectory() as scratch:
        for shape in shapes:
            directory = random_model_dir(shape, device, Path(scratch) / shape)
            for quant in args.quants.split(","):
                row = measure(directory, shape, quant, sizes, bandwidth)
                say(json.dumps(row))
                found["models"].append(row)
                if len(found["models"]) == 1:  # the first model: capture memory and the sweep engine
                    found["capture"] = capture_memory(MANAGER.loaded, sizes["capture"])
                    grid = SweepSpec("passkey", sizes["sweep"], depth_grid(3))
                    compare(MANAGER.loaded, grid)  # compiles the steps for the grid's cache sizes
                    sweep = compare(MANAGER.loaded, grid)
                    found["sweep_speedup"] = round(sweep["plain_seconds"] / sweep["shared_seconds"], 2)
                    found["sweep_answers_agree"] = not sweep["disagree"]
                MANAGER.unload()
                torch._dynamo.reset()  # the compiled steps hold the model they were compiled for
            empty_cache(device)
    differences = mask_differences(shapes[0], device, sizes["masks"])
    first = found["models"][0]
    found.update({"prefill_tokens_per_s": first["prefill_tokens_per_s"],
                  "decode_tokens_per_s": first["decode_tokens_per_s"],
                  "decode_bound_tokens_per_s": first["decode_bound_tokens_per_s"],
                  "mask_max_diff": differences, "masks_equal_eager": max(differences.values()) < 1e-4})
    print(json.dumps(found))


if __name__ == "__main__":
    main()
