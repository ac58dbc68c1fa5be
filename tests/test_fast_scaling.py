"""Fast compound scaling (Dollar, Singh & Girshick, CVPR 2021; docs/REFERENCE.md): the factors
against hand computation and pycls's rule, the names, the matching and the study plan."""

import math

import pytest

from effscale.experiments.plan import plan_models, resolve_config
from effscale.model.names import fast_factors, parse_name
from effscale.model.profile import match_flops, profile
from effscale.reporting import stats


def test_fast_factors_by_hand():
    # s = 4, alpha = 0.8 (dWr): d = 4^0.1, w = 4^0.4, r = 4^0.05
    d, w, r = fast_factors(4.0)
    assert (d, w, r) == pytest.approx((1.148698355, 1.741101127, 1.071773463), rel=1e-9)
    # pycls's scaler, type "d1_w8_g8_r1": d = s^(1/10), w = s^(8/10/2), r = s^(1/10/2)
    assert (d, w, r) == pytest.approx((4 ** 0.1, 4 ** 0.4, 4 ** 0.05))


@pytest.mark.parametrize("a", [1 / 3, 0.5, 0.8, 1.0])
@pytest.mark.parametrize("s", [0.5, 2.0, 4.3, 16.0])
def test_fast_factors_spend_exactly_s(s, a):
    d, w, r = fast_factors(s, a)
    assert d * w * w * r * r == pytest.approx(s, rel=1e-12)


def test_fast_alpha_ends_are_uniform_compound_and_width_only():
    d, w, r = fast_factors(8.0, 1 / 3)  # each dimension spends the same share: 8^(1/3)
    assert (d, w * w, r * r) == pytest.approx((2.0, 2.0, 2.0))
    assert fast_factors(8.0, 1.0) == pytest.approx((1.0, math.sqrt(8.0), 1.0))


def test_fast_names_parse_and_print():
    v = parse_name("b0@fast=4")
    assert (v.depth, v.width) == pytest.approx((4 ** 0.1, 4 ** 0.4))
    assert v.resolution == round(224 * 4 ** 0.05) == 240
    assert str(v) == "b0@fast=4"
    v = parse_name("b0@phi=-2,fast=2,fast_alpha=0.5")
    assert str(v) == "b0@phi=-2,fast=2,fast_alpha=0.5"
    assert v.width == pytest.approx(1.1 ** -2 * 2 ** 0.25)
    assert str(parse_name("b0@fast=1,d=2")) == "b0@d=2"  # fast=1 is no scaling


@pytest.mark.parametrize("name, problem", [
    ("b0@fast_alpha=0.8", "only applies with fast"),
    ("b0@fast=2,fast_alpha=0.2", "[1/3, 1]"),
    ("b0@fast=2,fast_alpha=1.5", "[1/3, 1]"),
    ("b0@fast=0", "must be > 0"),
    ("b0@fast=2,res=64", "give r"),
])
def test_bad_fast_names_say_why(name, problem):
    with pytest.raises(ValueError, match=problem.replace("[", r"\[").replace("]", r"\]")):
        parse_name(name)


@pytest.mark.parametrize("level", [2, 4, 8])
def test_fast_is_matched_to_a_level_and_keeps_its_proportions(level):
    target = profile("b0").macs * level
    m = match_flops("b0", "fast", target)
    assert m.dimension == "fast" and abs(m.ratio - 1) < 0.02, m
    v = parse_name(m.name)
    d, w, r = fast_factors(v.fast)
    assert (v.depth, v.width) == pytest.approx((d, w))
    assert v.resolution == round(224 * r)
    # EfficientNet rounds repeats up (ceil), so the nominal s spends more than s x MACs:
    # matching moves s below the level, never above it
    assert 1 < v.fast <= level


def test_fast_alpha_moves_the_spend_between_dimensions():
    target = profile("b0").macs * 4
    wide = parse_name(match_flops("b0", "fast", target, fast_alpha=1.0).name)
    even = parse_name(match_flops("b0", "fast", target, fast_alpha=1 / 3).name)
    assert wide.resolution == 224 and wide.depth == 1.0  # alpha = 1: width only
    assert even.resolution > 224 and even.depth > 1.0
    with pytest.raises(ValueError, match="fast_alpha"):
        match_flops("b0", "width", target, fast_alpha=0.8)


def test_the_fashion_study_plans_fast_within_two_percent():
    config = resolve_config({"data": "fashion-mnist", "out": "unused"})
    assert config.strategies[-1] == "fast" and config.fast_alpha == 0.8
    models = {m.strategy: m for m in plan_models(config, 10, 1)}
    fast = models["fast"]
    assert abs(fast.ratio - 1) <= 0.02
    assert parse_name(fast.model).fast_alpha == 0.8
    # fast compound is mostly width: its width multiplier is far above its depth's
    assert fast.w > fast.d >= 1 and fast.r >= 1
    other = resolve_config({"data": "fashion-mnist", "fast_alpha": 0.5, "out": "unused"})
    assert parse_name(next(m for m in plan_models(other, 10, 1)
                           if m.strategy == "fast").model).fast_alpha == 0.5
    with pytest.raises(ValueError, match="fast_alpha"):
        resolve_config({"data": "fashion-mnist", "fast_alpha": 0.1})


def test_compound_vs_fast_is_one_more_holm_corrected_pair():
    seeds = {0: 90.0, 1: 91.0, 2: 90.5}
    top1 = {("compound", "4"): seeds,
            **{(s, "4"): {k: v - 0.4 - 0.1 * k for k, v in seeds.items()}
               for s in ("depth", "width", "resolution", "fast")}}
    comparisons = stats.compare_all(top1, ["4"])
    assert [c.other for c in comparisons] == ["depth", "width", "resolution", "fast"]
    assert {c.family for c in comparisons} == {4}
    fast = comparisons[-1]
    assert "fast compound (dWr)" in fast.meaning
    assert "fast compound scaling (dWr)" in stats.conclusion(comparisons)
