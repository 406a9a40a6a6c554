"""What a deployment allows: public mode from the environment, the operator's caps and model list."""
import pytest

from engines.config.errors import SpecError
from engines.config.policy import PRIVATE, PUBLIC_CPU, limits, public_mode
from engines.config.specs import DecodingSpec, ModelSpec, RunConfig


@pytest.fixture()
def public(monkeypatch):
    for name in ("SPACE_ID", "CONTEXT_LAB_PUBLIC", "CONTEXT_LAB_MODELS", "SPACES_ZERO_GPU"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("CONTEXT_LAB_PUBLIC", "1")
    return monkeypatch


def test_public_mode_follows_the_space_and_the_operator(monkeypatch):
    monkeypatch.delenv("CONTEXT_LAB_PUBLIC", raising=False)
    monkeypatch.delenv("SPACE_ID", raising=False)
    assert not public_mode() and limits() == PRIVATE
    monkeypatch.setenv("SPACE_ID", "someone/context-lab")
    assert public_mode()
    monkeypatch.setenv("CONTEXT_LAB_PUBLIC", "0")
    assert not public_mode()


def test_caps_have_defaults_and_operator_settings(public):
    assert limits() == PUBLIC_CPU  # this machine has no GPU
    public.setenv("CONTEXT_LAB_MAX_PROMPT_TOKENS", "2048")
    public.setenv("CONTEXT_LAB_MAX_SWEEP_CELLS", "0")
    assert limits().prompt_tokens == 2048 and limits().sweep_cells == 1  # never below one
    public.setenv("CONTEXT_LAB_MAX_BEAMS", "many")
    with pytest.raises(SpecError, match="CONTEXT_LAB_MAX_BEAMS='many' is not a whole number"):
        limits()


@pytest.mark.parametrize("config, words", [
    (RunConfig(max_new_tokens=257), "Max new tokens is 257; .* at most 256"),
    (RunConfig(decoding=DecodingSpec.parse("beam:num_beams=5")), "keeps 5 num_beams; .* at most 4"),
    (RunConfig(decoding=DecodingSpec.parse("contrastive:top_k=9")), "keeps 9 top_k"),
    (RunConfig(model=ModelSpec(model="someone/other")), "serves only smollm2-135m-instruct"),
    (RunConfig(model=ModelSpec(model="/srv/models/x")), "serves only"),
])
def test_a_public_run_stays_within_the_caps(public, config, words):
    with pytest.raises(SpecError, match=words):
        limits().check_run(config)


def test_the_operator_chooses_the_models_and_sampling_is_not_a_beam(public):
    public.setenv("CONTEXT_LAB_MODELS", "smollm2-135m-instruct, someone/other")
    limits().check_run(RunConfig(model=ModelSpec(model="someone/other"),
                                 decoding=DecodingSpec.parse("sampling:top_k=50")))
    limits().check_calls(3 * 11, 256)
    with pytest.raises(SpecError, match="up to 44 model calls"):
        limits().check_calls(4 * 11, 256)
