"""Paired comparisons of compound scaling against each single dimension (and against fast
compound scaling, Dollar et al. 2021), and the conclusion sentence computed from them. Pure functions of numbers: no files, no torch.

Pairing is by seed: run s of the compound model and run s of the depth-only model share the
data order and initial RNG stream, so their difference cancels much of the seed-to-seed
noise (a paired t-test on the per-seed differences, scipy.stats.ttest_rel).

One study asks several questions at once (compound against three dimensions at every level),
so its verdicts use Holm-Bonferroni adjusted p-values: the chance that *any* of the family's
"significant" differences is a fluke stays below ALPHA. The raw p is reported beside it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from ..io.records import parse_level

ALPHA = 0.05  # significance level of every test and the 95% confidence intervals


def mean_std(values) -> tuple[float | None, float | None, int]:
    """Mean, sample standard deviation (ddof=1; None with one value) and n."""
    values = [float(v) for v in values if v is not None]
    n = len(values)
    if n == 0:
        return None, None, 0
    mean = sum(values) / n
    if n < 2:
        return mean, None, 1
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)), n


@dataclass(frozen=True)
class Comparison:
    level: str
    other: str                 # the single dimension (or "fast") compared against compound
    n: int                     # number of seeds present in both
    compound_mean: float | None
    other_mean: float | None
    diff: float | None         # mean of (compound - other) over paired seeds, in points
    ci_low: float | None       # 95% CI of that mean difference
    ci_high: float | None
    p: float | None            # two-sided paired t-test
    verdict: str               # "better", "worse", "no significant difference", "untested"
    p_adj: float | None = None  # Holm-adjusted across the study's family; verdicts use it
    family: int = 1            # how many tested comparisons the adjustment covered

    @property
    def meaning(self) -> str:
        """The comparison in words."""
        if self.verdict == "untested":
            if self.n == 0:
                return f"{self.other}: no paired runs to compare"
            return (f"compound {_signed(self.diff)} points vs {against(self.other)} from one "
                    f"seed: cannot be tested (n=1, no error bars)")
        ci = f"95% CI [{self.ci_low:+.2f}, {self.ci_high:+.2f}]"
        effect = (f"compound {_signed(self.diff)} points vs {against(self.other)} ({ci}, "
                  f"n={self.n})")
        if self.verdict == "no significant difference":
            return (f"{effect}; {self._p_text()}: not significant, the seeds do not separate "
                    f"them" + (" once the family of comparisons is accounted for"
                               if self.p < ALPHA <= self.p_adj else ""))
        return f"{effect}; {self._p_text()}: compound is {self.verdict}"

    def _p_text(self) -> str:
        if self.family == 1:
            return f"p={format_p(self.p)}"
        return (f"p={format_p(self.p)}, Holm-adjusted over {self.family} comparisons "
                f"{format_p(self.p_adj)}")


def against(other: str) -> str:
    """How a comparison names what compound scaling is compared with."""
    return "fast compound (dWr)" if other == "fast" else f"{other}-only"


def format_pm(mean: float | None, std: float | None, n: int, unit: str = "") -> str:
    """'90.12 ± 0.30' (with `unit` after each number and n when unit is given), '90.12 (n=1,
    no error bar)', or 'not run': how every table shows a mean over seeds."""
    if mean is None:
        return "not run"
    if std is None:
        return f"{mean:.2f}{unit} (n=1, no error bar)"
    return f"{mean:.2f} ± {std:.2f}{unit}" + (f" (n={n})" if unit else "")


def _signed(x: float | None) -> str:
    return "n/a" if x is None else f"{x:+.2f}"


def format_wall(seconds: float | None) -> str:
    """A study's or search's wall time; None when the sitting that trained its runs was cut
    off before it could record one."""
    if seconds is None:
        return "not recorded (the sitting that trained the runs was cut off)"
    return f"{seconds:.0f} s"


def format_p(p: float | None) -> str:
    if p is None:
        return "n/a"
    return "<0.001" if p < 0.001 else f"{p:.3f}"


# runs record top-1 to 2 decimals: a difference of two such numbers is off by up to 0.01,
# two differences by up to 0.02 from each other
ROUNDING = 0.02 + 1e-9


def paired_comparison(level: str, other: str, compound: dict, single: dict,
                      alpha: float = ALPHA) -> Comparison:
    """compound and single map seed -> top-1 (%). Only seeds present in both are paired."""
    seeds = sorted(set(compound) & set(single))
    seeds = [s for s in seeds if compound[s] is not None and single[s] is not None]
    a = [float(compound[s]) for s in seeds]
    b = [float(single[s]) for s in seeds]
    n = len(seeds)
    c_mean, o_mean = mean_std(a)[0], mean_std(b)[0]
    diffs = [x - y for x, y in zip(a, b)]
    diff, sd, _ = mean_std(diffs)
    if n < 2:
        return Comparison(level, other, n, c_mean, o_mean, diff, None, None, None, "untested")
    if max(diffs) - min(diffs) <= ROUNDING:
        # the same difference on every seed (top-1 moves in steps of 100 / val images, so
        # with few seeds this happens; what spread there is comes from rounding): the t
        # statistic is then infinite, 0/0 or made of round-off, and says nothing. The exact
        # sign test does: n differences of one sign have two-sided p = 2 / 2^n (0.5 at 2
        # seeds, 0.03 at 6); the interval is the point itself
        p = 1.0 if abs(diff) <= ROUNDING else min(1.0, 2.0 * 0.5 ** n)
        low = high = diff
    else:
        from scipy import stats
        p = float(stats.ttest_rel(a, b).pvalue)
        half = float(stats.t.ppf(1 - alpha / 2, n - 1)) * sd / math.sqrt(n)
        low, high = diff - half, diff + half
    return _judged(Comparison(level, other, n, c_mean, o_mean, diff, low, high, p, "", p),
                   alpha)


def _judged(c: Comparison, alpha: float) -> Comparison:
    """The verdict from the adjusted p and the sign of the difference."""
    if c.p_adj < alpha and c.diff > 0:
        verdict = "better"
    elif c.p_adj < alpha and c.diff < 0:
        verdict = "worse"
    else:
        verdict = "no significant difference"
    return replace(c, verdict=verdict)


def holm(pvalues: list[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values, in the input order (Holm 1979).

    The k-th smallest of m p-values is multiplied by m - k + 1; a running maximum keeps the
    adjusted values in the order of the raw ones, and they are capped at 1."""
    m = len(pvalues)
    order = sorted(range(m), key=lambda i: pvalues[i])
    adjusted, running = [0.0] * m, 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * pvalues[i]))
        adjusted[i] = running
    return adjusted


def compare_all(top1: dict, levels: list[str],
                singles=("depth", "width", "resolution", "fast"),
                alpha: float = ALPHA) -> list[Comparison]:
    """top1 maps (strategy, level) -> {seed: top-1}; one Comparison per level and other
    strategy where both compound and it were run, judged as one Holm-adjusted family."""
    out = []
    for level in levels:
        if ("compound", level) not in top1:
            continue
        for other in singles:
            if (other, level) in top1:
                out.append(paired_comparison(level, other, top1[("compound", level)],
                                             top1[(other, level)], alpha))
    tested = [i for i, c in enumerate(out) if c.p is not None]
    for i, p_adj in zip(tested, holm([out[i].p for i in tested])):
        out[i] = _judged(replace(out[i], p_adj=p_adj, family=len(tested)), alpha)
    return out


CHANCE_MARGIN = 5.0  # top-1 points above chance below which a model has learned nothing useful


def at_chance(best_top1: float | None, num_classes: int) -> str | None:
    """Why there is no verdict when even the best model is within CHANCE_MARGIN points of
    chance (100 / classes %): its differences to the others are noise; else None."""
    chance = 100.0 / num_classes
    if best_top1 is None or best_top1 > chance + CHANCE_MARGIN:
        return None
    return (f"No verdict: every model is at chance (best mean top-1 {best_top1:.2f}%, chance "
            f"{chance:.1f}% for {num_classes} classes): none of them learned, so their "
            f"differences are noise. Train longer, or check the data and its labels.")


def conclusion(comparisons: list[Comparison]) -> str:
    """One paragraph that says what the comparisons show, built only from their numbers."""
    if not comparisons:
        return ("No conclusion: the study has no level where compound scaling and a single "
                "dimension were both trained.")
    tested = [c for c in comparisons if c.verdict != "untested"]
    where = lambda c: f"{c.other} at {_level(c.level)}"  # noqa: E731
    if not tested:
        wins = [c for c in comparisons if c.diff is not None and c.diff > 0]
        return (f"With one seed per model nothing can be tested: compound scaling scored "
                f"higher in {len(wins)} of {len(comparisons)} matched-FLOPs comparisons, but "
                f"without repeated seeds a difference of this size may be noise. Run with "
                f"--seeds 2 or more.")
    better = [c for c in tested if c.verdict == "better"]
    worse = [c for c in tested if c.verdict == "worse"]
    same = [c for c in tested if c.verdict == "no significant difference"]
    singles = [c for c in tested if c.other != "fast"]
    fast = [c for c in tested if c.other == "fast"]
    n_seeds = sorted({c.n for c in tested})
    seeds = f"{n_seeds[0]}" if len(n_seeds) == 1 else f"{n_seeds[0]}-{n_seeds[-1]}"
    gains = []
    if singles:
        gains.append(f"to single-dimension scaling is "
                     f"{sum(c.diff for c in singles) / len(singles):+.2f} top-1 points")
    if fast:
        gains.append(f"to fast compound scaling (dWr) "
                     f"{sum(c.diff for c in fast) / len(fast):+.2f}")
    head = (f"Over {len(tested)} paired comparisons at matched FLOPs ({seeds} seeds each), "
            f"compound scaling's mean difference {' and '.join(gains)}. ")
    others = "other" if fast else "single-dimension"
    if len(better) == len(tested):
        verdict = (f"Compound scaling was significantly better than every {others} "
                   "strategy at every level: this supports the paper's claim (Table 7).")
    elif len(worse) == len(tested):
        verdict = (f"Compound scaling was significantly worse than every {others} "
                   "strategy at every level: this contradicts the paper's claim (Table 7).")
    elif not better and not worse:
        verdict = (f"No difference is significant at p<{ALPHA:g}{_corrected(tested)}: on this dataset and budget the "
                   "runs neither confirm nor refute the paper's claim that compound scaling "
                   "beats single-dimension scaling; more seeds or epochs would narrow the "
                   "intervals.")
    elif better and not worse:
        verdict = (f"Compound scaling was significantly better than "
                   f"{_join(map(where, better))}, and not significantly different from "
                   f"{_join(map(where, same))}: partial support for the paper's claim.")
    elif worse and not better:
        verdict = (f"Compound scaling was significantly worse than "
                   f"{_join(map(where, worse))}, and not significantly different from "
                   f"{_join(map(where, same))}: no support for the paper's claim here.")
    else:
        verdict = (f"Mixed: compound scaling was significantly better than "
                   f"{_join(map(where, better))} but worse than {_join(map(where, worse))}"
                   + (f" (no significant difference from {_join(map(where, same))})"
                      if same else "") + ".")
    untested = len(comparisons) - len(tested)
    tail = f" {untested} comparison(s) had fewer than 2 paired seeds and were not tested." \
        if untested else ""
    return head + verdict + tail


def _corrected(tested: list[Comparison]) -> str:
    marginal = [c for c in tested if c.p < ALPHA <= c.p_adj]
    if tested[0].family == 1:
        return ""
    return (f" after the Holm-Bonferroni correction for {tested[0].family} comparisons"
            + (f" ({len(marginal)} would pass alone at p<{ALPHA:g}, which a family of "
               f"{tested[0].family} tests produces by chance too often to count)"
               if marginal else ""))


def _level(label: str) -> str:
    kind, value = parse_level(label)
    return f"phi={value:g}" if kind == "phi" else f"{value:g}x MACs"


def _join(items) -> str:
    items = list(items)
    if len(items) <= 1:
        return "".join(items)
    return ", ".join(items[:-1]) + " and " + items[-1]
