import pytest

from engines.config.specs import ModelSpec, RunConfig, SpecError


def test_run_config_round_trips_through_dict():
    config = RunConfig(model=ModelSpec(model="some/model", quant="4bit", quant_4bit_type="fp4",
                                       double_quant=False, dtype="fp32"),
                       chat_template=False, max_new_tokens=7)
    assert RunConfig.from_dict(config.to_dict()) == config
    assert RunConfig.from_dict(config.to_dict()).to_dict() == config.to_dict()


@pytest.mark.parametrize("kwargs, words", [
    ({"quant": "3bit"}, "Unknown quantization '3bit'"),
    ({"dtype": "int8"}, "Unknown dtype 'int8'"),
    ({"model": "  "}, "Give a model"),
    ({"device": "tpu"}, "Unknown device"),
])
def test_bad_model_settings_say_what_to_change(kwargs, words):
    with pytest.raises(SpecError, match=words):
        ModelSpec(**kwargs)


@pytest.mark.parametrize("tokens", [0, -3, 5000, 2.5])
def test_new_token_budget_is_checked(tokens):
    with pytest.raises(SpecError, match="Max new tokens"):
        RunConfig(max_new_tokens=tokens)


def test_unknown_fields_in_a_stored_config_are_rejected():
    with pytest.raises(SpecError, match="Unknown RunConfig field"):
        RunConfig.from_dict({"model": {}, "temperature": 3})
    with pytest.raises(SpecError, match="must be given as an object"):
        RunConfig.from_dict({"model": "smollm"})
