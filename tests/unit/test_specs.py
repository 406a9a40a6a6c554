import pytest

from engines.config.specs import ModelSpec, RopeSpec, RunConfig, SpecError, TransformSpec


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


@pytest.mark.parametrize("rope, transform", [("yarn:2,layer_type=global", "jrt:times=3"), ("nope:layers=0-5", "sandwich")])
def test_layer_types_and_transforms_round_trip_and_older_records_read_the_same(rope, transform):
    config = RunConfig(rope=RopeSpec.parse(rope), transform=TransformSpec.parse(transform))
    assert RunConfig.from_dict(config.to_dict()) == config
    assert RopeSpec.parse(config.rope.label) == config.rope and TransformSpec.parse(config.transform.label) == config.transform
    plain = RunConfig().to_dict()  # what a record written before either setting existed holds
    assert "transform" not in plain and "layer_type" not in plain["rope"] and RunConfig.from_dict(plain) == RunConfig()


@pytest.mark.parametrize("text, words", [("yarn:2,layer_type=middle", "not one of all, global, local"),
                                         ("nope:layers=5-2", "from a lower to a higher layer"),
                                         ("nope:layers=x", "must be all, one layer A or a range A-B")])
def test_bad_layer_settings_say_what_to_change(text, words):
    with pytest.raises(SpecError, match=words):
        RopeSpec.parse(text)


def test_an_unknown_transform_lists_the_known_ones():
    known = "none, jrt, reorder, sandwich, structurize"
    with pytest.raises(SpecError, match=f"Unknown context transform 'twice'. Available: {known}"):
        TransformSpec.parse("twice")


def test_the_knob_is_logged_only_when_on_and_kept_within_its_range():
    from engines.config.specs import RunConfig

    assert "knob" not in RunConfig().to_dict() and RunConfig.from_dict(RunConfig(knob=-2).to_dict()).knob == -2.0
    for wrong in (10.5, float("nan"), "2", True):
        with pytest.raises(SpecError, match="The knob must be a number from -10 to 10"):
            RunConfig(knob=wrong)
