"""The paired comparisons' family-wise correction (Holm-Bonferroni), against hand computation,
and what it does to the study's conclusion."""

import pytest
import scipy.stats

from effscale.reporting import stats


def test_holm_matches_hand_computation():
    # sorted 0.01, 0.03, 0.04 -> x3, x2, x1 = 0.03, 0.06, 0.04 -> running max 0.03, 0.06, 0.06
    assert stats.holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert stats.holm([0.5, 0.9]) == [1.0, 1.0]          # capped at 1
    assert stats.holm([0.02]) == [0.02]                  # a family of one is not adjusted
    assert stats.holm([]) == []


def _family(diffs_per_dimension):
    """top1 for compound and each single dimension at level 2, 3 seeds, compound ahead of
    each dimension by the given per-seed differences."""
    top1 = {("compound", "2"): {s: 90.0 for s in range(3)}}
    for other, diffs in diffs_per_dimension.items():
        top1[(other, "2")] = {s: 90.0 - d for s, d in enumerate(diffs)}
    return top1


def test_marginal_p_values_that_pass_one_by_one_no_longer_count_as_support():
    marginal = {o: (1.0, 1.5, 2.0) for o in ("depth", "width", "resolution")}  # p ~ 0.035
    alone = stats.paired_comparison("2", "depth", {s: 90.0 for s in range(3)},
                                    {s: 90.0 - d for s, d in enumerate(marginal["depth"])})
    assert 0.02 < alone.p < stats.ALPHA and alone.verdict == "better"
    family = stats.compare_all(_family(marginal), ["2"])
    assert [c.p for c in family] == pytest.approx([alone.p] * 3)
    assert [c.p_adj for c in family] == pytest.approx([3 * alone.p] * 3)
    assert {c.verdict for c in family} == {"no significant difference"}
    text = stats.conclusion(family)
    assert "neither confirm nor refute" in text and "Holm-Bonferroni" in text
    assert "support" not in text.replace("neither confirm", "")
    # the effect size leads each sentence, the p-values follow it
    line = family[0].meaning
    assert line.index("+1.50 points") < line.index("95% CI") < line.index("p=")
    assert "Holm-adjusted over 3 comparisons" in line


def test_clear_differences_survive_the_correction_and_flip_with_the_numbers():
    clear = {o: (2.0, 2.1, 2.2) for o in ("depth", "width", "resolution")}  # p ~ 0.001
    up = stats.compare_all(_family(clear), ["2"])
    assert {c.verdict for c in up} == {"better"} and max(c.p_adj for c in up) < 0.01
    assert "supports the paper's claim" in stats.conclusion(up)
    flipped = {o: tuple(-d for d in ds) for o, ds in clear.items()}
    down = stats.compare_all(_family(flipped), ["2"])
    assert {c.verdict for c in down} == {"worse"}
    assert "contradicts the paper's claim" in stats.conclusion(down)


def test_wall_time_not_recorded_is_said_not_zero():
    """A study whose training sitting was cut off has no wall time: the report says so instead
    of failing or printing 0 s."""
    from effscale.reporting.stats import format_wall
    assert format_wall(6580.4) == "6580 s"
    assert format_wall(None).startswith("not recorded")


def test_identical_differences_fall_back_to_the_exact_sign_test():
    # top-1 on 64 val images moves in steps of 1.5625: two seeds can differ by exactly the
    # same amount, which a t-test cannot judge (zero variance); it used to count as p = 0
    two = stats.paired_comparison("4", "width", {0: 21.875, 1: 23.4375}, {0: 20.3125, 1: 21.875})
    assert two.p == 0.5 and two.verdict == "no significant difference"
    assert two.ci_low == two.ci_high == pytest.approx(1.5625)
    # as the runs record them (2 decimals): 1.57 and 1.56 are the same step, not a t of 156
    rounded = stats.paired_comparison("4", "width", {0: 21.88, 1: 23.44}, {0: 20.31, 1: 21.88})
    assert rounded.p == 0.5 and rounded.verdict == "no significant difference"
    spread = stats.paired_comparison("4", "width", {0: 21.88, 1: 23.44}, {0: 20.31, 1: 20.31})
    t_test = scipy.stats.ttest_rel([21.88, 23.44], [20.31, 20.31])
    assert spread.p == pytest.approx(float(t_test.pvalue))  # a real spread: the t-test
    six = stats.paired_comparison("4", "width", {s: 80.0 + s for s in range(6)},
                                  {s: 79.0 + s for s in range(6)})
    assert six.p == pytest.approx(2 / 2 ** 6) and six.verdict == "better"  # 0.03125 < 0.05
    same = stats.paired_comparison("4", "width", {0: 50.0, 1: 60.0}, {0: 50.0, 1: 60.0})
    assert same.p == 1.0 and same.verdict == "no significant difference"


def test_models_at_chance_get_no_verdict():
    assert "No verdict: every model is at chance" in stats.at_chance(27.0, 4)  # chance 25%
    assert stats.at_chance(31.0, 4) is None and stats.at_chance(None, 4) is None
    assert stats.at_chance(14.9, 10) is not None and stats.at_chance(15.1, 10) is None
