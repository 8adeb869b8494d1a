"""Seeds until the answer is clear: which combinations need another seed, with intervals that stay valid
although the number of seeds depended on the results.

Pure functions (numpy and scipy only). A sweep run in rounds calls :func:`next_round` after each round with
every combination's results so far (``{combination: {seed: accuracy}}``, paired by seed); it answers which
combinations get which next seed, and for every comparison why it stopped or goes on. A comparison (each
depth with the group's top one, or each pair the user named) is *resolved* when it is separated, when it is
equivalent within ``Plan.margin`` points (if given), or when its seeds reach ``Plan.max_seeds``.

**The method: an anytime-valid confidence sequence for the paired mean difference.** Seeds are added while
looking at the results, so a fixed-n t interval would be too narrow (stopping when it first excludes 0 makes
a "separation" far more likely than 5%). Instead each comparison uses the sequential t-test's Bayes factor

    BF_n(t) = (1 + n g)^(-1/2) * ((1 + t^2/(n-1)) / (1 + t^2/((n-1)(1 + n g))))^(n/2)

(t the paired t statistic of the n shared seeds; a normal mixture N(0, g) over the standardised difference
and the scale-invariant prior 1/sigma on the unknown spread: Lai 1976, "On confidence sequences"; the "safe
t-test" of Grünwald, de Heide and Koolen; Pérez-Ortiz et al. 2024, "E-statistics, group invariance and
anytime-valid testing"). Under "no difference" it is a non-negative martingale in n whatever the spread, so
by Ville's inequality P(BF_n >= 1/a at *any* n) <= a: ``anytime_p = min(1, 1/BF_n)`` is a p-value valid at
whatever round the sweep stops, and ``{d: BF_n(t(d)) < 1/a}`` (the values not rejected) is a 1-a confidence
sequence (:func:`sequential_interval`), bounded to [-1, 1] for accuracy differences. Multiplicity as in
:func:`cnn_depth.stats.compare_to_best`: Holm's step-down closed test, fed these p-values, so the
family-wise error stays at most ``1 - confidence`` over the rounds and the choice of the top depth.
Equivalence needs every pair's interval at once: it uses the simultaneous level ``1 - alpha / C(k, 2)``
(``1 - alpha / m`` for m named pairs).

**What it assumes:** per comparison, the paired differences of successive seeds are independent draws from
one normal distribution (a seed's effect shared by both sides cancels; the spread is unknown and estimated);
seeds are run in the plan's order for every combination, so shared seeds are a prefix of it. It is valid at
every n, so it is wider than a fixed-n t interval at the same n: that is the price of looking every round.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from itertools import combinations
from typing import Hashable, Mapping, Optional, Sequence

import numpy as np

from . import stats
from .errors import CnnDepthError

SEPARATED, EQUIVALENT, MAX_SEEDS, CONTINUE, TOO_FEW = "separated", "equivalent", "max seeds", "continue", "too few seeds"
METHOD = "anytime t"


@dataclass(frozen=True)
class Plan:
    """What a sweep run in rounds aims at.

    ``min_seeds``: every combination runs at least these before anything stops (2 at least: one seed has no
    spread). ``max_seeds``: no combination runs more. ``confidence``: family-wise, of every verdict of a group
    together. ``margin``: in accuracy points (0.5 = half a percentage point); a comparison whose simultaneous
    interval lies within ±margin is resolved as equivalent; None: only separation or max_seeds resolve.
    ``pairs``: user-named pairs of combinations to compare (Holm over them); None: each with the top one.
    ``seeds``: the order seeds are run in (default 0 .. max_seeds-1). ``scale``: g, the variance of the
    mixture over the standardised difference (4: tuned for 3-10 seeds and differences of 1-3 sd).
    """

    min_seeds: int = 3
    max_seeds: int = 10
    confidence: float = 0.95
    margin: Optional[float] = None
    pairs: Optional[tuple] = None
    seeds: Optional[tuple] = None
    scale: float = 4.0

    def __post_init__(self):
        if not (isinstance(self.min_seeds, int) and isinstance(self.max_seeds, int) and
                2 <= self.min_seeds <= self.max_seeds):
            raise CnnDepthError(f"need 2 <= min_seeds <= max_seeds (whole numbers); got {self.min_seeds}, "
                                f"{self.max_seeds}")
        stats._confidence(self.confidence)
        if self.margin is not None and not (isinstance(self.margin, (int, float)) and self.margin > 0):
            raise CnnDepthError(f"margin is in accuracy points and must be above 0, e.g. 0.5; got {self.margin!r}")
        if self.seeds is not None and len(self.seeds) < self.max_seeds:
            raise CnnDepthError(f"seeds lists {len(self.seeds)} seeds, fewer than max_seeds={self.max_seeds}")
        if not self.scale > 0:
            raise CnnDepthError(f"scale must be above 0; got {self.scale!r}")

    @property
    def order(self) -> tuple:
        return tuple(self.seeds[:self.max_seeds]) if self.seeds is not None else tuple(range(self.max_seeds))


def log_bf(t: float, n: int, g: float) -> float:
    """log of the sequential t-test's Bayes factor for mean 0 (see the module docstring); 0 for n < 2."""
    if n < 2:
        return 0.0
    nu = n - 1
    if math.isinf(t):
        return nu / 2 * math.log1p(n * g)  # its supremum: the data cannot say more at this n
    return -0.5 * math.log1p(n * g) + n / 2 * (math.log1p(t * t / nu) - math.log1p(t * t / (nu * (1 + n * g))))


def critical_t(n: int, level: float, g: float) -> float:
    """The |t| at which BF_n reaches 1/(1-level): the half-width of the confidence sequence is this times
    s/sqrt(n). inf where no t can reach it at this n (too few seeds for that confidence)."""
    if n < 2:
        return math.inf
    c, target = 1 + n * g, -math.log1p(-level)  # log 1/alpha
    k = math.exp((2 * target + math.log(c)) / n)
    if k >= c:
        return math.inf
    return math.sqrt((n - 1) * (k - 1) / (1 - k / c))


def _stat(x: np.ndarray) -> tuple[float, float, float]:
    """n-free summary of differences: mean, s/sqrt(n), and t for mean 0 (inf where the spread is 0)."""
    n = len(x)
    mean = stats._mean(x)
    sd = 0.0 if np.all(x == x[0]) else float(np.std(x, ddof=1))
    se = sd / math.sqrt(n)
    t = (0.0 if mean == 0 else math.inf) if se == 0 else abs(mean) / se
    return mean, se, t


def anytime_p(diffs: Sequence[float], plan: Plan = Plan()) -> float:
    """Two-sided p-value of mean 0 for the paired differences so far, valid at whichever round a sweep stops
    (min(1, 1/BF_n)); 1 with fewer than two."""
    x = np.asarray(diffs, dtype=float)
    x = x[~np.isnan(x)]
    if len(x) < 2:
        return 1.0
    return min(1.0, math.exp(-log_bf(_stat(x)[2], len(x), plan.scale)))


def sequential_interval(diffs: Sequence[float], plan: Plan = Plan(), level: Optional[float] = None,
                        bounds: tuple = (-1.0, 1.0)) -> tuple[float, float]:
    """The confidence sequence of the mean paired difference after ``len(diffs)`` seeds (in seed order), at
    ``level`` (default ``plan.confidence``): (low, high), valid although the number of seeds depended on the
    data. ``bounds``: what the mean can be ([-1, 1] for a difference of accuracies, [0, 1] for an accuracy);
    with too few seeds for the level, the whole range."""
    level = plan.confidence if level is None else stats._confidence(level)
    x = np.asarray(diffs, dtype=float)
    x = x[~np.isnan(x)]
    if len(x) < 2:
        return bounds
    mean, se, _ = _stat(x)
    half = critical_t(len(x), level, plan.scale) * se if se > 0 else (0.0 if critical_t(len(x), level, plan.scale)
                                                                         < math.inf else math.inf)
    return max(bounds[0], mean - half), min(bounds[1], mean + half)


def anytime_test(plan: Plan = Plan()):
    """A ``test`` for :func:`cnn_depth.stats.compare_to_best`: the anytime p-value and confidence sequence."""
    def test(diffs, level):
        low, high = sequential_interval(diffs, plan, level)
        return anytime_p(diffs, plan), low, high, f"{METHOD}, n={len(diffs)}"
    return test


def accuracy_sequence(accuracies: Sequence[float], plan: Plan = Plan()) -> stats.Interval:
    """One combination's mean accuracy with its confidence sequence at ``plan.confidence`` (bounded to [0, 1])."""
    x = stats._values(accuracies)
    if len(x) == 0:
        return stats.Interval(0, math.nan, math.nan, math.nan, math.nan, "no values: no interval", plan.confidence)
    mean = stats._mean(x)
    if len(x) == 1:
        return stats.Interval(1, mean, math.nan, math.nan, math.nan, "n=1: no interval", plan.confidence)
    low, high = sequential_interval(x, plan, bounds=(0.0, 1.0))
    return stats.Interval(len(x), mean, float(np.std(x, ddof=1)), low, high, f"{METHOD}, n={len(x)}",
                          plan.confidence)


# ---------------------------------------------------------------------------------------------------------
# The rule: which combinations get another seed


@dataclass(frozen=True)
class Comparison:
    """a − b over their shared seeds: mean, the step-down interval and p-value (separation), the
    simultaneous interval (equivalence), and whether it is resolved."""

    a: Hashable
    b: Hashable
    n: int
    mean: float
    low: float
    high: float
    p_adjusted: float
    sim_low: float
    sim_high: float
    status: str  # SEPARATED, EQUIVALENT, MAX_SEEDS, CONTINUE
    reason: str


@dataclass(frozen=True)
class Round:
    """:func:`next_round`'s answer. ``next_seeds``: combination -> the seed it runs next (empty: done);
    ``comparisons``: every comparison with its status; ``stopped``: combination -> why it gets no seed."""

    next_seeds: dict
    comparisons: list
    stopped: dict
    done: bool = field(default=False)
    top: Optional[Hashable] = None


def _accs(results: Mapping[Hashable, Mapping]) -> dict:
    return {c: {s: float(a) for s, a in r.items() if a is not None and not math.isnan(float(a))}
            for c, r in results.items()}


def _next_seed(plan: Plan, ran) -> Optional[Hashable]:
    return next((s for s in plan.order if s not in ran), None)


def compare(results: Mapping[Hashable, Mapping], plan: Plan = Plan()) -> tuple[list, Optional[Hashable]]:
    """Every comparison of the plan on the results so far, with its status; and the top combination (best
    mode) or None (named pairs)."""
    accs = _accs(results)
    ran = {c: len(r) for c, r in results.items()}
    alpha, m_pct = 1 - plan.confidence, None if plan.margin is None else plan.margin / 100
    test = anytime_test(plan)
    if plan.pairs is None:
        verdicts = stats.compare_to_best({c: r for c, r in accs.items()}, plan.confidence, test)
        if not verdicts:
            return [], None
        top = next(v.best_depth for v in verdicts.values())
        pairs = [(c, top) for c in verdicts if c != top]
        sim_level = 1 - alpha / max(1, len(verdicts) * (len(verdicts) - 1) / 2)
        sep = {c: (v.verdict in (stats.BELOW, stats.ABOVE), v.p_adjusted, v.diff_low, v.diff_high)
               for c, v in verdicts.items() if c != top}
    else:
        top = None
        pairs = [tuple(p) for p in plan.pairs]
        unknown = [c for p in pairs for c in p if c not in results]
        if unknown:
            raise CnnDepthError(f"pairs name {unknown[0]!r}, not one of the combinations {list(results)}")
        sim_level = 1 - alpha / len(pairs)
        diffs = {p: _diffs(accs, *p) for p in pairs}
        pv = {p: (anytime_p(d, plan) if len(d) >= 2 else math.nan) for p, d in diffs.items()}
        m = len(pairs)
        steps = stats.step_down(pv, m + 1, alpha, divisors=[float(m - i) for i in range(m)])
        sep = {}
        for p, (separated, p_adj, div) in steps.items():
            low, high = sequential_interval(diffs[p], plan, 1 - alpha / div)
            sep[p] = (separated, p_adj, low, high)
    out = []
    for a, b in pairs:
        d = _diffs(accs, a, b)
        key = a if plan.pairs is None else (a, b)
        separated, p_adj, low, high = sep[key]
        sim_low, sim_high = sequential_interval(d, plan, sim_level)
        mean = stats._mean(d) if len(d) else math.nan
        at_max = max(ran.get(a, 0), ran.get(b, 0)) >= plan.max_seeds or \
            _next_seed(plan, results[a]) is None or _next_seed(plan, results[b]) is None
        if len(d) >= 2 and separated:
            status, why = SEPARATED, f"separated: {a} {'below' if mean < 0 else 'above'} {b} (adjusted p {p_adj:.3g})"
        elif len(d) >= 2 and m_pct is not None and -m_pct < sim_low and sim_high < m_pct:
            status, why = EQUIVALENT, (f"equivalent: {a} − {b} within ±{plan.margin:g} points "
                                       f"[{sim_low * 100:+.2f}, {sim_high * 100:+.2f}]")
        elif at_max:
            status, why = MAX_SEEDS, f"max seeds: {len(d)} shared seeds and not resolved"
        else:
            status, why = CONTINUE, f"not resolved after {len(d)} shared seeds"
        out.append(Comparison(a, b, len(d), mean, low, high, p_adj, sim_low, sim_high, status, why))
    return out, top


def _diffs(accs: dict, a, b) -> np.ndarray:
    return np.array([accs[a][s] - accs[b][s] for s in accs[a] if s in accs[b]], dtype=float)


def next_round(results: Mapping[Hashable, Mapping], plan: Plan = Plan()) -> Round:
    """Which combinations get another seed, and why every other one stopped.

    ``results``: ``{combination: {seed: accuracy}}`` for every combination of the sweep (an empty dict for one
    that has not run; NaN for a failed run, which counts as run and pairs with nothing). First every
    combination runs ``plan.min_seeds`` seeds; then a combination gets its next seed (the first of
    ``plan.order`` it has not run) while it is in a comparison that is not resolved (:func:`compare`). Done
    when no combination needs one.
    """
    if not results:
        raise CnnDepthError("give every combination's results so far, e.g. {2: {0: 0.41}, 4: {0: 0.52}}")
    short = {c: _next_seed(plan, r) for c, r in results.items() if len(r) < plan.min_seeds}
    short = {c: s for c, s in short.items() if s is not None}
    if short:
        return Round(short, [], {c: "has its first seeds" for c in results if c not in short}, False)
    comps, top = compare(results, plan)
    need = {c for x in comps if x.status == CONTINUE for c in (x.a, x.b)}
    next_seeds = {c: _next_seed(plan, results[c]) for c in results if c in need}
    next_seeds = {c: s for c, s in next_seeds.items() if s is not None}
    stopped = {}
    for c in results:
        if c in next_seeds:
            continue
        mine = [x for x in comps if c in (x.a, x.b)]
        stopped[c] = "; ".join(x.reason if c == x.a else f"vs {x.a}: {x.reason}" for x in mine) or \
            "in no comparison"
    return Round(next_seeds, comps, stopped, not next_seeds, top)


def sweep_rounds(draw, combinations_: Sequence[Hashable], plan: Plan = Plan()) -> tuple[dict, list]:
    """Run :func:`next_round` to its end with ``draw(combination, seed) -> accuracy`` (a simulation, or a
    driver's training run): returns the results and the rounds' answers."""
    results = {c: {} for c in combinations_}
    rounds = []
    while True:
        r = next_round(results, plan)
        rounds.append(r)
        if r.done:
            return results, rounds
        for c, s in r.next_seeds.items():
            results[c][s] = draw(c, s)


def all_pairs(items: Sequence[Hashable]) -> tuple:
    """Every pair of ``items``, for ``Plan(pairs=...)``."""
    return tuple(combinations(items, 2))


def plan_record(plan: Plan) -> dict:
    """``plan`` as sweep.json keeps it (each ``--seeds auto`` invocation's ``plan``), for :func:`plan_from_record`."""
    return dict(method=METHOD, min_seeds=plan.min_seeds, max_seeds=plan.max_seeds, confidence=plan.confidence,
                margin=plan.margin, pairs=None if plan.pairs is None else [list(p) for p in plan.pairs],
                seeds=None if plan.seeds is None else list(plan.seeds), scale=plan.scale)


def plan_from_record(record) -> Plan:
    """The :class:`Plan` a sweep.json recorded (:func:`plan_record`); a damaged one is one line."""
    try:
        pairs = record.get("pairs")
        seeds = record.get("seeds")
        return Plan(min_seeds=record["min_seeds"], max_seeds=record["max_seeds"],
                    confidence=record.get("confidence", 0.95), margin=record.get("margin"),
                    pairs=None if pairs is None else tuple(tuple(p) for p in pairs),
                    seeds=None if seeds is None else tuple(seeds), scale=record.get("scale", 4.0))
    except (AttributeError, KeyError, TypeError) as e:
        raise CnnDepthError(f"the plan in sweep.json is not what a --seeds auto sweep wrote ({type(e).__name__}: "
                            f"{e}); put back what the sweep wrote") from e


def describe(plan: Plan) -> str:
    """The rule in words, for the ``sweep:`` line and the summary's ``seeds_rule`` column, e.g.
    ``seeds until the answer is clear: 3-10 per depth, each depth with the best, no equivalence margin``."""
    what = ("each depth with the best" if plan.pairs is None else
            "; ".join(f"depth {a} vs depth {b}" for a, b in plan.pairs))
    margin = f"equivalent within ±{plan.margin:g} points" if plan.margin is not None else "no equivalence margin"
    return (f"seeds until the answer is clear: {plan.min_seeds}-{plan.max_seeds} per depth, {what}, {margin}, "
            f"{plan.confidence * 100:g}% family-wise")
