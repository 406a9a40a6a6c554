"""Model engine choices that need no weights: dtype and device rules, source resolution errors."""
import time

import pytest
import torch

from engines.config.specs import ModelSpec
from engines.model import loading as models
from engines.model.loading import ModelError, ModelManager, resolve_dtype, resolve_source


def test_auto_dtype_follows_the_cpu_flags(monkeypatch):
    monkeypatch.setattr(models, "cpu_supports_bf16", lambda: True)
    assert resolve_dtype(ModelSpec(), "cpu")[0] == torch.bfloat16
    monkeypatch.setattr(models, "cpu_supports_bf16", lambda: False)
    dtype, reason = resolve_dtype(ModelSpec(), "cpu")
    assert dtype == torch.float32 and "no fast bfloat16" in reason


def test_explicit_dtype_wins():
    assert resolve_dtype(ModelSpec(dtype="fp16"), "cpu")[0] == torch.float16
    assert resolve_dtype(ModelSpec(dtype="fp32"), "cpu")[0] == torch.float32


def test_cpu_flag_detection_matches_proc_cpuinfo():
    flags = open("/proc/cpuinfo").read()
    assert models.cpu_supports_bf16() == ("amx_bf16" in flags or "avx512_bf16" in flags)


def test_unreachable_hub_id_is_explained_quickly():
    started = time.perf_counter()
    with pytest.raises(ModelError, match="Could not fetch the model 'no-such-owner/no-such-model'.*local directory"):
        resolve_source("no-such-owner/no-such-model")
    assert time.perf_counter() - started < 60


def test_directory_without_config_is_explained(tmp_path):
    with pytest.raises(ModelError, match="has no config.json"):
        resolve_source(str(tmp_path))
    with pytest.raises(ModelError, match="neither an existing directory nor a Hub id"):
        resolve_source(str(tmp_path / "missing" / "deeper"))


def test_failed_load_keeps_nothing_half_loaded():
    manager = ModelManager()
    with pytest.raises(ModelError):
        manager.get(ModelSpec(model="no-such-owner/no-such-model"))
    assert manager.loaded is None
