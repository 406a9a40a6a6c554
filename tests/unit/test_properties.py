"""Property-based tests: any input to the setting parsers, the CLI parser and the haystack builder
yields a result or a clear error, never a crash."""
import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cli import build_parser, parse_params
from engines.config.specs import DecodingSpec, MaskSpec, RopeSpec, SpecError
from engines.probes.haystack import HaystackError

TEXT = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=40)
SETTING = st.builds(lambda kind, pairs: kind + (":" + ",".join(pairs) if pairs else ""),
                    st.sampled_from(["default", "linear", "yarn", "ntk", "giraffe", "sinks", "causal",
                                     "sliding_window", "lambda", "segments", "pine", "x"]),
                    st.lists(st.one_of(st.from_regex(r"[a-z_]{1,8}=-?[0-9]{1,4}(\.[0-9])?", fullmatch=True),
                                       st.from_regex(r"-?[0-9]{1,3}(\.[0-9]{1,2})?", fullmatch=True), TEXT),
                             max_size=3))


@given(st.one_of(SETTING, TEXT))
def test_rope_setting_parses_or_says_what_to_change(text):
    try:
        spec = RopeSpec.parse(text)
    except SpecError as exc:
        assert str(exc).endswith(".") and len(str(exc)) > 20
    else:
        assert RopeSpec.from_dict(spec.to_dict()) == spec and 0 < spec.factor <= 64


@given(st.one_of(SETTING, TEXT))
def test_mask_setting_parses_or_says_what_to_change(text):
    try:
        spec = MaskSpec.parse(text)
    except SpecError as exc:
        assert str(exc).endswith(".") and len(str(exc)) > 20
    else:
        assert MaskSpec.from_dict(spec.to_dict()) == spec


DECODING = st.builds(lambda method, pairs: method + (":" + ",".join(pairs) if pairs else ""),
                     st.sampled_from(["greedy", "sampling", "beam", "diverse_beam", "contrastive", "dola", "cad",
                                      "adacad", "icn", "x"]),
                     st.lists(st.one_of(st.builds("{}={}".format, st.sampled_from(
                         ["temperature", "top_p", "top_k", "num_beams", "num_beam_groups", "alpha", "layers",
                          "penalty_alpha", "seed", "answers", "zz"]), st.one_of(
                         st.integers(-5, 40).map(str), st.floats(-2, 3).map(str), st.just("nan"), st.just("1e999"), TEXT)), TEXT),
                         max_size=3))


@given(st.one_of(DECODING, TEXT))
def test_decoding_setting_parses_or_says_what_to_change(text):
    try:
        spec = DecodingSpec.parse(text)
    except SpecError as exc:
        assert str(exc).endswith(".") and len(str(exc)) > 20
    else:
        assert DecodingSpec.from_dict(spec.to_dict()) == spec
        assert DecodingSpec.parse(spec.label) == spec


@given(st.lists(TEXT, max_size=4))
def test_builder_settings_parse_or_say_what_to_change(pairs):
    try:
        params = parse_params(pairs)
    except SpecError as exc:
        assert "key=value" in str(exc)
    else:
        assert len(params) <= len(pairs)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(argv=st.lists(st.one_of(st.sampled_from(["probe", "sweep", "tasks", "--task", "passkey", "--length", "--depth",
                                                "--json", "--rope", "--mask", "--seeds", "--lengths", "-1", "50",
                                                "1e9", "nan", "--quant", "8bit", "--b", "decode", "--method", "--param",
                                                "beam:num_beams=3", "--conflicts"]), TEXT), max_size=8))
def test_cli_parser_parses_or_exits_with_code_2(argv, capsys):
    try:
        build_parser().parse_args(argv)
    except SystemExit as exc:
        assert exc.code in (0, 2)
        if exc.code == 2:
            lines = capsys.readouterr().err.strip().splitlines()
            assert len(lines) == 1 and lines[0].startswith("error:")
    capsys.readouterr()


@pytest.mark.model
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(task=st.sampled_from(["passkey", "niah_multikey_2", "litm_qa", "nt_threading", "cwe", "vt", "custom"]),
       length=st.integers(-5, 3000), depth=st.one_of(st.floats(-20, 120), st.just(float("nan"))), seed=st.integers(-3, 10**6),
       haystack=st.sampled_from([None, "noise", "prose", "kv", "documents", "upload", "lava"]))
def test_haystack_builder_builds_or_says_what_to_change(tokenizer, task, length, depth, seed, haystack):
    from engines.probes.tasks import ProbeSpec, build_probe

    try:
        probe = build_probe(tokenizer, ProbeSpec(task, length, depth, seed, haystack))
    except HaystackError as exc:
        assert re.search(r"[a-z]", str(exc)) and str(exc).rstrip().endswith((".", ")"))
    else:
        assert abs(probe.prompt_tokens - length) <= max(0.01 * length, 45)  # coarse units at tiny lengths
