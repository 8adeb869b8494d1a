"""How sure a report can be: intervals of accuracy over seeds, paired comparisons of depths, the best depth.

Pure functions over plain numbers (numpy and scipy only), so ``reports.py`` can state for every number how
much it can be trusted:

- :func:`mean_interval`: mean accuracy over seeds with a Student-t interval (two seeds or more);
- :func:`wilson_interval`: one seed, where the only uncertainty we can state is that of the validation images;
- :func:`paired_difference`: depth a − depth b over the seeds both ran, and rliable's probability of improvement;
- :func:`compare_to_best` and :func:`best_note`: which depths the seeds can and cannot tell apart, corrected
  for the best depth having been picked from the same seeds (:func:`step_down`, a Holm step-down closed test).

Accuracies are fractions in [0, 1]; NaN stands for a run without one (failed, diverged) and is dropped, so
every ``n`` counts only the runs that have a number.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Hashable, Iterable, Mapping, Optional, Union

import numpy as np
from scipy import special as _sp
from scipy import stats as _st

from .errors import CnnDepthError

if TYPE_CHECKING:
    import pandas as pd

# seed -> accuracy: a dict, or a pandas Series indexed by seed
Runs = Union[Mapping[Hashable, float], "pd.Series"]

BEST, TIED, BELOW, ABOVE, TOO_FEW = ("best", "tied with best", "below best", "above best on shared seeds",
                                     "too few seeds")
VERDICTS = (BEST, TIED, BELOW, ABOVE, TOO_FEW)
NAN = math.nan


@dataclass(frozen=True)
class Interval:
    """A mean (or proportion) with a two-sided interval; NaN bounds where none can be stated.

    ``n`` counts what the interval rests on: seeds for a t interval, validation images for a Wilson one.
    ``std`` is the spread over seeds (ddof=1): NaN with fewer than two, and for a Wilson interval.
    """

    n: int
    mean: float
    std: float
    low: float
    high: float
    method: str  # a short label for tables: "t, n=5", "Wilson, 1 seed, 1000 images", "n=1: no interval"
    confidence: float = 0.95


@dataclass(frozen=True)
class PairedDifference:
    """a − b over the seeds both have: mean, spread and t interval of the differences; and P(a > b) over
    every run of a against every run of b (``n_a`` × ``n_b`` pairs)."""

    n_pairs: int
    mean: float
    std: float
    low: float
    high: float
    prob_improvement: float
    n_a: int
    n_b: int
    method: str
    confidence: float = 0.95


@dataclass(frozen=True)
class Verdict:
    """One depth against the best depth of its group (see :func:`compare_to_best`).

    The ``diff_*`` fields are this depth − the best over their shared seeds; NaN for the best itself.
    ``tied_mean`` marks every depth whose mean equals the best mean (the best included) when there are two.
    """

    depth: Hashable
    best_depth: Hashable
    verdict: str  # one of VERDICTS
    runs: int  # seeds with an accuracy
    mean: float
    n_pairs: int  # seeds shared with the best (for the best itself: its runs)
    diff_mean: float
    diff_low: float
    diff_high: float
    prob_improvement: float  # P(this depth > best), rliable's definition
    tied_mean: bool
    method: str
    confidence: float = 0.95  # family-wise, of every verdict of the group together
    level: float = NAN  # the two-sided confidence of this depth's diff interval (its step of the step-down)
    p_adjusted: float = NAN  # step-down adjusted p-value: the verdict separates where it is <= 1 - confidence


def _confidence(confidence: float) -> float:
    try:
        c = float(confidence)
    except (TypeError, ValueError):
        c = math.nan
    if not 0 < c < 1:  # NaN fails this too
        raise CnnDepthError(f"confidence must be between 0 and 1, e.g. 0.95; got {confidence!r}")
    return c


def _number(v) -> float:
    try:
        x = float(v)
    except (TypeError, ValueError):
        raise CnnDepthError(f"accuracy {v!r} is not a number; give accuracies as numbers (NaN for none)") from None
    if math.isinf(x):
        raise CnnDepthError(f"accuracy {v!r} is not finite; give accuracies as numbers (NaN for none)")
    return x


def _values(values: Iterable[float]) -> np.ndarray:
    """The numbers in ``values`` without NaN (a run with no accuracy is not a run to average)."""
    x = np.array([_number(v) for v in values], dtype=float)
    return x[~np.isnan(x)]


def _runs(runs: Optional[Runs]) -> dict:
    """seed -> accuracy without NaN, from a dict or a Series indexed by seed."""
    if runs is None:
        return {}
    if not hasattr(runs, "items"):
        raise CnnDepthError(f"give runs as seed -> accuracy (a dict or a Series indexed by seed), not "
                            f"{type(runs).__name__}")
    out = {}
    for seed, acc in runs.items():
        if seed in out:
            raise CnnDepthError(f"seed {seed!r} appears twice; give one accuracy per seed")
        out[seed] = _number(acc)
    return {s: x for s, x in out.items() if not math.isnan(x)}


def _pct(confidence: float, digits: int = 6) -> str:
    return f"{round(confidence * 100, digits):g}%"


def _count(name: str, v) -> int:
    # a CSV column of counts reads as float where any row lacks one: 1000.0 is still 1000 images
    whole = isinstance(v, (int, np.integer)) or (isinstance(v, (float, np.floating)) and float(v).is_integer())
    if isinstance(v, bool) or not whole:
        raise CnnDepthError(f"{name} must be a whole number of images; got {v!r}")
    return int(v)


def mean_interval(values: Iterable[float], confidence: float = 0.95) -> Interval:
    """Mean of ``values`` (NaN dropped) with a two-sided Student-t interval of the mean.

    With fewer than two values there is no spread to build an interval from: NaN bounds, and ``method``
    says why. Identical values give the degenerate interval [mean, mean].
    """
    c = _confidence(confidence)
    x = _values(values)
    n = len(x)
    if n == 0:
        return Interval(0, NAN, NAN, NAN, NAN, "no values: no interval", c)
    # identical values: take one as it is, so the interval is exactly [v, v] and not [v ± rounding]
    same = bool(np.all(x == x[0]))
    mean = float(x[0]) if same else float(np.mean(x))
    if n == 1:
        return Interval(1, mean, NAN, NAN, NAN, "n=1: no interval", c)
    std = 0.0 if same else float(np.std(x, ddof=1))
    if std == 0:  # scipy's t.interval warns on scale 0; the interval is a point
        low = high = mean
    else:
        low, high = (float(b) for b in _st.t.interval(c, n - 1, loc=mean, scale=std / math.sqrt(n)))
    return Interval(n, mean, std, low, high, f"t, n={n}", c)


def correct_count(accuracy: float, total: int, tol: float = 1e-6) -> int:
    """The number of correct images behind ``accuracy`` on ``total`` validation images.

    ``accuracy`` must be k/total up to float noise (``tol``; fastai computes accuracy in float32): anything
    else means the image count is wrong, which is refused rather than rounded away.
    """
    total = _count("total", total)
    if total < 1:
        raise CnnDepthError(f"total must be at least 1 validation image; got {total}")
    a = _number(accuracy)
    if math.isnan(a) or not 0 <= a <= 1:
        raise CnnDepthError(f"accuracy must be a fraction between 0 and 1; got {accuracy!r}")
    k = int(round(a * total))
    # never looser than a quarter step between neighbouring counts, so the nearest k is the only match
    if abs(a - k / total) > min(tol, 0.25 / total):
        raise CnnDepthError(f"accuracy {a!r} is not a count out of {total} images (nearest: {k}/{total} = "
                            f"{k / total:.6g}); give the number of validation images the accuracy was measured on")
    return k


def wilson_interval(correct: int, total: int, confidence: float = 0.95) -> Interval:
    """Wilson score interval of the proportion ``correct``/``total``: for one seed, the uncertainty that
    comes from the number of validation images alone (not from training noise, which one seed cannot show).

    ``total`` 0 gives NaN throughout. ``std`` is NaN: with one seed there is no spread over seeds.
    """
    c = _confidence(confidence)
    correct, total = _count("correct", correct), _count("total", total)
    if total < 0 or not 0 <= correct <= total:
        raise CnnDepthError(f"need 0 <= correct <= total; got correct={correct}, total={total}")
    if total == 0:
        return Interval(0, NAN, NAN, NAN, NAN, "Wilson, no images: no interval", c)
    ci = _st.binomtest(correct, total).proportion_ci(confidence_level=c, method="wilson")
    return Interval(total, correct / total, NAN, float(ci.low), float(ci.high),
                    f"Wilson, 1 seed, {total} images", c)


def accuracy_interval(accuracies: Iterable[float], valid_images: Optional[int] = None,
                      confidence: float = 0.95) -> Interval:
    """The interval a report should print for one depth: t over seeds with two or more; with exactly one
    seed and a known validation set size, Wilson over its images; otherwise none (NaN bounds)."""
    x = _values(accuracies)
    if len(x) == 1 and valid_images is not None:
        return wilson_interval(correct_count(x[0], valid_images), valid_images, confidence)
    return mean_interval(x, confidence)


def probability_of_improvement(a: Iterable[float], b: Iterable[float]) -> float:
    """P(a > b) as in rliable (Agarwal et al. 2021): over every pair (run of a, run of b), the share where a
    is higher, a tie counting one half; the Mann-Whitney U statistic of a over ``len(a) * len(b)``.

    NaN when either side has no run.
    """
    x, y = _values(a), _values(b)
    if len(x) == 0 or len(y) == 0:
        return NAN
    # the U statistic counted directly (what scipy's mannwhitneyu returns, without its overhead)
    return float(np.sum(x[:, None] > y[None, :]) + 0.5 * np.sum(x[:, None] == y[None, :])) / (len(x) * len(y))


def paired_difference(a: Runs, b: Runs, confidence: float = 0.95) -> PairedDifference:
    """a − b paired by seed (the seeds both have), with its t interval, and P(a > b) over all their runs.

    Pairing by seed removes what a seed does to both (same data order, same initial weights) from the
    comparison. Fewer than two shared seeds: NaN bounds. Identical differences: the interval [d, d].
    """
    c = _confidence(confidence)
    ra, rb = _runs(a), _runs(b)
    shared = [s for s in ra if s in rb]
    iv = mean_interval([ra[s] - rb[s] for s in shared], c)
    n = len(shared)
    method = (f"paired t, n={n}" if n >= 2 else "1 shared seed: no interval" if n == 1
              else "no shared seeds: no interval")
    return PairedDifference(n, iv.mean, iv.std, iv.low, iv.high,
                            probability_of_improvement(ra.values(), rb.values()), len(ra), len(rb), method, c)


def _mean(x) -> float:
    """The mean as :func:`mean_interval` gives it (identical values: that value, exactly)."""
    x = np.asarray(x, dtype=float)
    return float(x[0]) if np.all(x == x[0]) else float(np.mean(x))


def step_divisors(k: int) -> list[float]:
    """The step-down's divisors of ``1 - confidence`` for a group of ``k`` depths compared with its top one:
    ``(k-1)(k-s+1)/2`` at step s = 1 ... k-1, from every pair of depths (``k(k-1)/2``) down to the k-1
    comparisons with the top. For k = 2, [1] (one plain comparison); k = 8: 28, 24.5, 21, ..., 7.

    Why: a depth is `below best` when its interval with the top excludes 0, the top being chosen from the
    same seeds. The claims to protect are "depth i is below the best" for every truly best depth; with all
    depths equal every depth is best, and any separated pair is an error, so the first step must hold for
    every pair (Bonferroni over k(k-1)/2). This is Holm's step-down over the k hypotheses "depth i is a best",
    each tested by its one-sided comparison with the top at (k-1) times its p-value (Bonferroni over the
    k-1 depths that could beat it): a closed test, so the family-wise error is at most ``1 - confidence``
    whatever the means and whichever depth came out on top.
    """
    return [(k - 1) * (k - s + 1) / 2 for s in range(1, k)]


def step_down(pvalues: Mapping[Hashable, float], k: int, alpha: float, divisors: Optional[list] = None) -> dict:
    """Holm's step-down over the comparisons of k-1 depths with the top one (see :func:`step_divisors`), or
    with ``divisors`` given, over any family (plain Holm over m named comparisons: m, m-1, ..., 1).

    ``pvalues``: two-sided p-values of each comparison (NaN: no test, never separated). Returns
    ``{key: (separated, adjusted p, divisor)}``: ``divisor`` is the step at which the comparison was
    separated, or for those not separated the step where the procedure stopped, so that the interval at
    two-sided confidence ``1 - alpha / divisor`` excludes 0 exactly where ``separated``.
    """
    divisors = divisors or step_divisors(k)
    order = sorted(pvalues, key=lambda key: (1.0 if math.isnan(pvalues[key]) else pvalues[key]))
    out, running, stopped = {}, 0.0, None
    for step, key in enumerate(order):
        p = 1.0 if math.isnan(pvalues[key]) else pvalues[key]
        div = divisors[min(step, len(divisors) - 1)]
        running = max(running, min(1.0, div * p))
        if stopped is None and running > alpha:
            stopped = div
        out[key] = (stopped is None, running, div if stopped is None else stopped)
    return out


def paired_t_test(diffs: np.ndarray, level: float) -> tuple[float, float, float, str]:
    """Fixed-n paired t on the differences: (two-sided p of mean 0, low, high at ``level``, method)."""
    n = len(diffs)
    same = bool(np.all(diffs == diffs[0]))
    mean = float(diffs[0]) if same else float(np.mean(diffs))
    std = 0.0 if same else float(np.std(diffs, ddof=1))
    if std == 0:  # a point, exactly (see mean_interval)
        return (1.0 if mean == 0 else 0.0), mean, mean, f"paired t, n={n}"
    se = std / math.sqrt(n)
    half = float(_sp.stdtrit(n - 1, 0.5 + level / 2)) * se  # scipy.special: t.ppf and t.sf without overhead
    return float(2 * _sp.stdtr(n - 1, -abs(mean) / se)), mean - half, mean + half, f"paired t, n={n}"


def compare_to_best(groups: Mapping[Hashable, Runs], confidence: float = 0.95, test=None) -> dict:
    """Each depth against the best one (highest mean accuracy), as ``{depth: Verdict}`` in depth order,
    corrected for the best having been picked from the same seeds.

    Every other depth is compared with the top one on the seeds both ran (paired by seed); the comparisons
    go through :func:`step_down` (Holm's step-down closed test, :func:`step_divisors`), so that the chance
    of *any* wrong verdict in the group (calling a truly best depth below best, or above) is at most
    ``1 - confidence``. Each depth's interval (``diff_low``, ``diff_high``) is at the confidence of its step
    (``level``, e.g. 0.9982 for the first of 8 depths): it excludes 0 exactly where the verdict separates.

    Verdicts: ``"best"``; ``"tied with best"`` (not separated); ``"below best"`` (separated, below);
    ``"too few seeds"`` (under two shared seeds: no interval); and, when the seeds differ between depths,
    ``"above best on shared seeds"`` (separated, above: the order depends on which seeds ran). Equal best
    means: the lowest depth is the best, ``tied_mean`` says so. Depths without a single accuracy are left out.

    ``test``: ``f(diffs, level) -> (two-sided p, low, high, method)`` for one comparison's paired differences
    (in seed order); default :func:`paired_t_test`. :mod:`cnn_depth.sequential` passes an anytime-valid one.
    """
    c = _confidence(confidence)
    test = test or paired_t_test
    runs = {d: r for d, r in ((d, _runs(groups[d])) for d in sorted(groups)) if r}
    if not runs:
        return {}
    means = {d: _mean(list(r.values())) for d, r in runs.items()}
    top = max(means.values())
    # a mean that differs from the top by rounding alone (another summation order) is the same mean
    tied = [d for d, m in means.items() if math.isclose(m, top, rel_tol=1e-12, abs_tol=1e-12)]
    best = tied[0]
    k, alpha = len(runs), 1 - c
    diffs, pvals = {}, {}
    for d, r in runs.items():
        if d != best:
            shared = [s for s in r if s in runs[best]]
            diffs[d] = np.array([r[s] - runs[best][s] for s in shared], dtype=float)
            pvals[d] = test(diffs[d], c)[0] if len(shared) >= 2 else NAN
    steps = step_down(pvals, k, alpha) if pvals else {}
    out = {}
    for d, r in runs.items():
        is_tied = len(tied) > 1 and d in tied
        if d == best:
            out[d] = Verdict(d, best, BEST, len(r), means[d], len(r), NAN, NAN, NAN, NAN, is_tied,
                             "highest mean", c)
            continue
        separated, p_adj, div = steps[d]
        x = diffs[d]
        level = 1 - alpha / div
        pi = probability_of_improvement(r.values(), runs[best].values())
        if len(x) < 2:
            mean = float(x[0]) if len(x) else NAN
            method = "1 shared seed: no interval" if len(x) == 1 else "no shared seeds: no interval"
            out[d] = Verdict(d, best, TOO_FEW, len(r), means[d], len(x), mean, NAN, NAN, pi, is_tied, method, c,
                             NAN, NAN)
            continue
        _, low, high, method = test(x, level)
        mean = _mean(x)
        verdict = (BELOW if mean < 0 else ABOVE) if separated else TIED
        out[d] = Verdict(d, best, verdict, len(r), means[d], len(x), mean, low, high, pi, is_tied,
                         f"{method}, {_pct(level, 4)}, Holm step-down over {k - 1}", c, level, p_adj)
    return out


def _join(items) -> str:
    items = [str(i) for i in items]
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _seeds(ns) -> str:
    lo, hi = min(ns), max(ns)
    if lo != hi:
        return f"{lo}-{hi} shared seeds"
    return "no shared seeds" if lo == 0 else "1 seed" if lo == 1 else f"{lo} seeds"


def _depths(ds) -> str:
    return ("depth " if len(ds) == 1 else "depths ") + _join(ds)


def best_note(verdicts: Mapping[Hashable, Verdict]) -> str:
    """One honest line on a group's best depth, from :func:`compare_to_best`'s verdicts, e.g.
    ``"3 seeds: not enough to separate depths 3 and 4"`` or
    ``"depth 4 best: above every other depth (5 seeds, paired t, 95% family-wise, Holm step-down)"``."""
    if not verdicts:
        return "no finished runs: nothing to compare"
    best = next(v for v in verdicts.values() if v.verdict == BEST)
    others = [v for v in verdicts.values() if v.verdict != BEST]
    if not others:
        return f"depth {best.depth} only ({_seeds([best.runs])}): no other depth to compare"
    tied = [v.depth for v in verdicts.values() if v.tied_mean]
    prefix = f"{_depths(tied)} tie on mean accuracy ({best.mean:.4f}), {best.depth} taken as best; " if tied else ""
    unsep = [v for v in others if v.verdict in (TIED, TOO_FEW)]
    above = [v for v in others if v.verdict == ABOVE]
    below = [v.depth for v in others if v.verdict == BELOW]
    if not unsep and not above:
        test = "paired t" if all(v.method.startswith("paired t") for v in others) else others[0].method.split(",")[0]
        return (f"{prefix}depth {best.depth} best: above every other depth "
                f"({_seeds([v.n_pairs for v in others])}, {test}, {_pct(best.confidence)} family-wise, "
                f"Holm step-down)")
    clauses = []
    if unsep:
        clauses.append(f"{_seeds([v.n_pairs for v in unsep])}: not enough to separate "
                       f"{_depths(sorted([best.depth] + [v.depth for v in unsep]))}")
    if above:
        clauses.append(f"{_depths([v.depth for v in above])} above depth {best.depth} on the seeds both ran "
                       f"though below it in mean: the order depends on the seeds")
    if below:
        clauses.append(f"{_depths(below)} below best")
    return prefix + "; ".join(clauses)
