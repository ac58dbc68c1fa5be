import math

import pytest

from effscale import model_spec, parse_name
from effscale.model.spec import FAMILY


@pytest.mark.parametrize("name", list(FAMILY))
def test_family_names_parse_to_their_coefficients(name):
    v = parse_name(name)
    assert (v.width, v.depth, v.resolution) == (FAMILY[name].width, FAMILY[name].depth,
                                                 FAMILY[name].resolution)
    assert str(v) == name


def test_explicit_multipliers_apply_to_the_base():
    v = parse_name("b0@d=1.4,w=1.2,r=1.3")
    assert (v.depth, v.width, v.resolution) == (1.4, 1.2, round(224 * 1.3))
    # b3 has depth 1.4 and resolution 300 of its own: multipliers compose with them
    v = parse_name("b3@d=2,res=260")
    assert v.depth == pytest.approx(2.8) and v.resolution == 260


def test_compound_scaling_default_and_overridden_coefficients():
    v = parse_name("b0@phi=2")
    assert v.depth == pytest.approx(1.2 ** 2)
    assert v.width == pytest.approx(1.1 ** 2)
    assert v.resolution == round(224 * 1.15 ** 2)
    v = parse_name("b0@phi=2,alpha=1.3,beta=1.05,gamma=1.2")
    assert (v.depth, v.width) == pytest.approx((1.69, 1.1025))
    assert v.resolution == round(224 * 1.44)


def test_negative_phi_is_smaller_than_b0():
    small, b0 = model_spec("b0@phi=-2"), model_spec("b0")
    assert small.resolution < b0.resolution
    assert small.num_blocks < b0.num_blocks
    assert small.head_channels < b0.head_channels


@pytest.mark.parametrize("name", ["b0@phi=1.5,d=2", "b0@d=2.31", "b2@res=300,w=0.5",
                                  "b0@phi=-4", "b0@phi=1,alpha=1.3,beta=1.05,gamma=1.2"])
def test_canonical_name_round_trips(name):
    v = parse_name(name)
    assert parse_name(str(v)) == v


def test_prefixes_and_case_are_forgiven():
    assert parse_name("EfficientNet_B3") == parse_name("b3")


@pytest.mark.parametrize("name, words", [
    ("b9", "unknown base model 'b9'"),
    ("resnet50", "unknown base"),
    ("b0@x=2", "unknown key 'x'"),
    ("b0@d=0", "d must be > 0"),
    ("b0@w=-1", "w must be > 0"),
    ("b0@d=abc", "d='abc' is not a number"),
    ("b0@d=nan", "must be finite"),
    ("b0@r=2,res=300", "not both"),
    ("b0@alpha=1.3", "only apply with phi"),
    ("b0@d", "is not KEY=VALUE"),
    ("b0@d=1,d=2", "given twice"),
    ("b0@res=30.5", "whole number"),
    ("", "empty model name"),
])
def test_bad_names_raise_value_error_naming_the_problem(name, words):
    with pytest.raises(ValueError, match=words.replace("(", r"\(")):
        model_spec(name)


def test_resolution_too_small_for_a_1x1_final_map():
    with pytest.raises(ValueError, match="too small"):
        model_spec("b0@res=31")
    model_spec("b0@res=32")
    model_spec("b0@res=16", stem_stride=1)  # stride-16 network: 16 px still leave 1x1
    with pytest.raises(ValueError, match="too small"):
        model_spec("b0@phi=-20")  # compound shrinking can get there too
    assert math.isclose(model_spec("b0@phi=-4").resolution, round(224 * 1.15 ** -4))
