"""Seeds until the answer is clear: which combinations need another seed, with intervals that stay valid
although the number of seeds depended on the results.

Pure functions (numpy and scipy only). A sweep run in rounds calls :func:`next_round` after each round with
every combination's results so far (``{combination: {seed: accuracy}}``, paired by seed); it answers which
combinations get which next seed, and for every comparison why it stopped or goes on. A comparison (each
depth with the top one of its group, or each pair the user named) is *resolved* when it is separated, when
it is equivalent within ``Plan.margin`` points (if given), or when its seeds reach ``Plan.max_seeds``.

Seeds are added while looking at the results, so a fixed-n t interval would be too narrow: stopping when
it first excludes 0 makes a "separation" far more likely than 5%. Two methods keep the error rate under
this optional stopping (``Plan.method``):

**group-sequential t** (the rule; :func:`gs_p`, :func:`gs_interval`). The looks are planned: after every
seed from ``min_seeds`` to ``max_seeds``. At look n the paired t statistic's fixed-n two-sided p-value p_n is
turned into a z-score z_n = Φ⁻¹(1 − p_n/2), and a comparison is separated at level a when
z_n ≥ c(a) · (n / max_seeds)^(Δ − 1/2): Wang and Tsiatis's (1987) family of boundaries (Δ = 1/2: Pocock's
constant nominal level; Δ = 0: O'Brien and Fleming's, strict early and lenient late; ``Plan.shape``). c(a)
is chosen so that, with no difference, P(any look crosses) = a. Under normal differences the joint law of
the t statistics does not depend on the unknown spread, so c(a) is exact up to Monte Carlo error: it is
read off :func:`null_maxima`, the maximum over the looks of z_n / w_n on ``NULL_PATHS`` seeded simulated
paths of N(0, 1) differences, computed once per plan. The p-value of a comparison at its current look is
the share of null paths whose maximum reaches its z_n / w_n, plus two Monte Carlo standard errors (so a
simulation that came out low errs on the safe side); P(p ≤ a) ≤ a whatever look the sweep stopped at,
which is all Holm's step-down needs. The interval is Jennison and Turnbull's repeated confidence interval
(mean ± the |t| of the boundary at the look's level × s/√n), which holds at whatever look the sweep
stopped. One scaled family at every level is what Holm needs: each step tests at its own level, and a
p-value valid for every level at once is the boundary family, not one spending function at one level.

**anytime t** (the former rule, kept for folders it chose the seeds of, and selectable as
``Plan(method="anytime t")``): an anytime-valid confidence sequence for the paired mean difference, from the
sequential t-test's Bayes factor

    BF_n(t) = (1 + n g)^(-1/2) * ((1 + t^2/(n-1)) / (1 + t^2/((n-1)(1 + n g))))^(n/2)

(a normal mixture N(0, g) over the standardised difference and the prior 1/sigma on the spread: Lai 1976;
Grünwald, de Heide and Koolen's safe t-test; Pérez-Ortiz et al. 2024). Under no difference it is a
martingale in n whatever the spread, so by Ville's inequality P(BF_n ≥ 1/a at *any* n) ≤ a:
``min(1, 1/BF_n)`` is a p-value valid at any n, with no planned maximum, and wider intervals.

Multiplicity, with either: as :func:`cnn_depth.stats.compare_to_best`, Holm's step-down closed test over
each group's comparisons with its top (named pairs: Holm over the pairs), so the family-wise error of a
group's verdicts stays at most ``1 - confidence`` over the rounds and the choice of the top. Equivalence
needs every pair's interval at once: the simultaneous level ``1 - alpha / C(k, 2)`` (``1 - alpha / m``
for m named pairs).

**What it assumes:** per comparison, the paired differences of successive seeds are independent draws from
one normal distribution (a seed's effect shared by both sides cancels; the spread is unknown and estimated);
seeds are run in the plan's order for every combination, so shared seeds are a prefix of it; and the plan
(``min_seeds``, ``max_seeds``, the method) is fixed before the results are seen. A combination with more
seeds than ``max_seeds`` (reports pooling folders) is judged as if the plan had gone on to its seeds.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from itertools import combinations
from typing import Callable, Hashable, Mapping, Optional, Sequence

import numpy as np
from scipy import special as _sp

from . import stats
from .errors import CnnDepthError

SEPARATED, EQUIVALENT, MAX_SEEDS, CONTINUE, TOO_FEW = "separated", "equivalent", "max seeds", "continue", "too few seeds"
GROUP_SEQUENTIAL, ANYTIME = "group-sequential t", "anytime t"
METHODS = (GROUP_SEQUENTIAL, ANYTIME)
METHOD = GROUP_SEQUENTIAL  # the rule (experiments/simulate_sequential.py compares the two)
SHAPE = 0.25  # Wang-Tsiatis Δ of the boundaries: between Pocock (0.5) and O'Brien-Fleming (0), see docs/reports.md
NULL_PATHS = 1 << 19  # simulated null paths per plan: about 1 s, once per (min_seeds, max_seeds, shape)
NULL_SEED = 2026


@dataclass(frozen=True)
class Plan:
    """What a sweep run in rounds aims at.

    ``min_seeds``: every combination runs at least these before anything stops (2 at least: one seed has no
    spread). ``max_seeds``: no combination runs more. ``confidence``: family-wise, of every verdict of a group
    together. ``margin``: in accuracy points (0.5 = half a percentage point); a comparison whose simultaneous
    interval lies within ±margin is resolved as equivalent; None: only separation or max_seeds resolve.
    ``pairs``: user-named pairs of combinations to compare (Holm over them); None: each with the top one of
    its group. ``seeds``: the order seeds are run in (default 0 .. max_seeds-1). ``method``: ``METHODS``.
    ``shape``: Δ of the group-sequential boundaries (0: O'Brien-Fleming ... 0.5: Pocock). ``scale``: g of the
    anytime method (4: tuned for 3-10 seeds and differences of 1-3 sd). ``grid``: the settings that vary
    between the combinations of a grid (their names), for reports to name its cells; empty for one.
    """

    min_seeds: int = 3
    max_seeds: int = 10
    confidence: float = 0.95
    margin: Optional[float] = None
    pairs: Optional[tuple] = None
    seeds: Optional[tuple] = None
    method: str = METHOD
    shape: float = SHAPE
    scale: float = 4.0
    grid: tuple = ()

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
        if self.method not in METHODS:
            raise CnnDepthError(f"method must be one of {', '.join(METHODS)}; got {self.method!r}")
        if not (isinstance(self.shape, (int, float)) and 0 <= self.shape <= 0.5):
            raise CnnDepthError(f"shape is the boundaries' Δ, from 0 (O'Brien-Fleming) to 0.5 (Pocock); got "
                                f"{self.shape!r}")
        if not self.scale > 0:
            raise CnnDepthError(f"scale must be above 0; got {self.scale!r}")

    @property
    def order(self) -> tuple:
        return tuple(self.seeds[:self.max_seeds]) if self.seeds is not None else tuple(range(self.max_seeds))


def _stat(x: np.ndarray) -> tuple[float, float, float]:
    """n-free summary of differences: mean, s/sqrt(n), and |t| for mean 0 (inf where the spread is 0)."""
    n = len(x)
    mean = stats._mean(x)
    sd = 0.0 if np.all(x == x[0]) else float(np.std(x, ddof=1))
    se = sd / math.sqrt(n)
    t = (0.0 if mean == 0 else math.inf) if se == 0 else abs(mean) / se
    return mean, se, t


def _clean(diffs: Sequence[float]) -> np.ndarray:
    x = np.asarray(diffs, dtype=float)
    return x[~np.isnan(x)]


# ---------------------------------------------------------------------------------------------------------
# The group-sequential t: boundaries at the planned looks, calibrated by a seeded simulation


def _weights(ns, max_seeds: int, shape: float) -> np.ndarray:
    """The boundary's shape at looks ``ns``: z_n is compared with c · (n / max_seeds)^(Δ − 1/2)."""
    return (np.asarray(ns, dtype=float) / max_seeds) ** (shape - 0.5)


def _z(t, n):
    """|t| on n − 1 degrees of freedom as the z-score of its two-sided fixed-n p-value (inf for |t| = inf)."""
    return -_sp.ndtri(_sp.stdtr(np.asarray(n) - 1, -np.abs(t)))


def cumulative_t(x: np.ndarray) -> np.ndarray:
    """The paired t statistic of the first k differences along the last axis of ``x``, for every k (at k = 1,
    with no spread, it is ±inf or nan): one pass of cumulative sums, for simulating whole sweeps at once."""
    k = np.arange(1, x.shape[-1] + 1)
    mean = np.cumsum(x, -1) / k
    var = np.maximum(np.cumsum(x * x, -1) - k * mean * mean, 0.0) / np.maximum(k - 1, 1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return mean / np.sqrt(var / k)


@functools.lru_cache(maxsize=32)
def null_maxima(min_seeds: int, max_seeds: int, shape: float = SHAPE) -> np.ndarray:
    """max over the looks n = min_seeds ... max_seeds of z_n / w_n, sorted, on ``NULL_PATHS`` paths of
    N(0, 1) paired differences (seeded: the same table on every machine). Under no difference the t
    statistics' joint law is the same whatever the spread, so these are the null law of any plan's paths."""
    rng = np.random.default_rng([NULL_SEED, min_seeds, max_seeds])
    ns = np.arange(min_seeds, max_seeds + 1)
    w = _weights(ns, max_seeds, shape)
    chunks, chunk = [], 1 << 16
    for _ in range(NULL_PATHS // chunk):
        t = cumulative_t(rng.standard_normal((chunk, max_seeds)))[:, min_seeds - 1:]
        chunks.append((_z(t, ns) / w).max(1))
    return np.sort(np.concatenate(chunks))


@functools.lru_cache(maxsize=1)
def _tail_bounds(m: int) -> np.ndarray:
    """p-value when k of m null maxima reach the observed one: (k + 1)/(m + 1) plus two Monte Carlo
    standard errors, increasing in k (index k = 0 ... m)."""
    k = np.arange(m + 1)
    p = k / m
    return np.minimum(1.0, (k + 1) / (m + 1) + 2 * np.sqrt(p * (1 - p) / m))


def _looks(plan: Plan, n: int) -> Optional[np.ndarray]:
    """The null maxima of the plan's looks (to ``n`` when a combination has more seeds than the plan's
    maximum); None where ``n`` is before the first look."""
    if n < plan.min_seeds:
        return None
    return null_maxima(plan.min_seeds, max(plan.max_seeds, n), float(plan.shape))


def gs_p(diffs: Sequence[float], plan: Plan = Plan()) -> float:
    """The group-sequential p-value of mean 0 for the paired differences so far (in seed order): valid at
    whichever look the sweep stopped; 1 before ``plan.min_seeds``."""
    x = _clean(diffs)
    table = _looks(plan, len(x))
    if table is None:
        return 1.0
    n = len(x)
    s = float(_z(_stat(x)[2], n)) / float(_weights(n, max(plan.max_seeds, n), plan.shape))
    k = len(table) - int(np.searchsorted(table, s, "left"))  # null paths whose maximum reaches s
    return float(_tail_bounds(len(table))[k])


def gs_critical_t(n: int, level: float, plan: Plan = Plan()) -> float:
    """The |t| the boundary asks for at ``n`` seeds for a two-sided ``level``: the repeated confidence
    interval is the mean ± this × s/√n, and it excludes 0 exactly where :func:`gs_p` ≤ 1 − level. inf
    where nothing can separate (before the first look; a level beyond what the simulation resolves)."""
    table = _looks(plan, n)
    if table is None:
        return math.inf
    m, alpha = len(table), 1 - level
    k = int(np.searchsorted(_tail_bounds(m), alpha * (1 + 1e-12), "right")) - 1  # most paths allowed above
    if k < 0:
        return math.inf
    if k >= m:
        return 0.0
    z = float(table[m - k - 1]) * float(_weights(n, max(plan.max_seeds, n), plan.shape))
    return float(-_sp.stdtrit(n - 1, _sp.ndtr(-z)))


def gs_interval(diffs: Sequence[float], plan: Plan = Plan(), level: Optional[float] = None,
                bounds: tuple = (-1.0, 1.0)) -> tuple[float, float]:
    """Jennison and Turnbull's repeated confidence interval of the mean after ``len(diffs)`` seeds at
    ``level`` (default ``plan.confidence``): valid at whatever look the sweep stopped. ``bounds``: what the
    mean can be; the whole range before the first look."""
    level = plan.confidence if level is None else stats._confidence(level)
    x = _clean(diffs)
    if len(x) < 2:
        return bounds
    mean, se, _ = _stat(x)
    return _around(mean, se, gs_critical_t(len(x), level, plan), bounds)


def _around(mean: float, se: float, crit: float, bounds: tuple) -> tuple[float, float]:
    if math.isinf(crit):
        return bounds
    half = crit * se
    return max(bounds[0], mean - half), min(bounds[1], mean + half)


# ---------------------------------------------------------------------------------------------------------
# The anytime t: a confidence sequence from the sequential t-test's Bayes factor


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


def anytime_p(diffs: Sequence[float], plan: Plan = Plan()) -> float:
    """Two-sided p-value of mean 0 for the paired differences so far, valid at any n (min(1, 1/BF_n)); 1
    with fewer than two."""
    x = _clean(diffs)
    if len(x) < 2:
        return 1.0
    return min(1.0, math.exp(-log_bf(_stat(x)[2], len(x), plan.scale)))


def anytime_interval(diffs: Sequence[float], plan: Plan = Plan(), level: Optional[float] = None,
                     bounds: tuple = (-1.0, 1.0)) -> tuple[float, float]:
    """The anytime method's confidence sequence of the mean after ``len(diffs)`` seeds."""
    level = plan.confidence if level is None else stats._confidence(level)
    x = _clean(diffs)
    if len(x) < 2:
        return bounds
    mean, se, _ = _stat(x)
    crit = critical_t(len(x), level, plan.scale)
    return _around(mean, se, crit, bounds) if se > 0 or math.isinf(crit) else (mean, mean)


# ---------------------------------------------------------------------------------------------------------
# The plan's method


def sequential_p(diffs: Sequence[float], plan: Plan = Plan()) -> float:
    """The plan's p-value of mean 0 for the paired differences so far, valid whatever round the sweep
    stopped at (:func:`gs_p` or :func:`anytime_p`)."""
    return (gs_p if plan.method == GROUP_SEQUENTIAL else anytime_p)(diffs, plan)


def sequential_interval(diffs: Sequence[float], plan: Plan = Plan(), level: Optional[float] = None,
                        bounds: tuple = (-1.0, 1.0)) -> tuple[float, float]:
    """The plan's interval of the mean paired difference after ``len(diffs)`` seeds (in seed order) at
    ``level`` (default ``plan.confidence``): (low, high), valid although the number of seeds depended on the
    data. ``bounds``: what the mean can be ([-1, 1] for a difference of accuracies, [0, 1] for an accuracy);
    with too few seeds for the level, the whole range."""
    return (gs_interval if plan.method == GROUP_SEQUENTIAL else anytime_interval)(diffs, plan, level, bounds)


def sequential_test(plan: Plan = Plan()):
    """A ``test`` for :func:`cnn_depth.stats.compare_to_best`: the plan's p-value and interval."""
    def test(diffs, level):
        low, high = sequential_interval(diffs, plan, level)
        return sequential_p(diffs, plan), low, high, f"{plan.method}, n={len(diffs)}"
    return test


anytime_test = sequential_test  # its former name


def accuracy_sequence(accuracies: Sequence[float], plan: Plan = Plan()) -> stats.Interval:
    """One combination's mean accuracy with the plan's interval at ``plan.confidence`` (bounded to [0, 1])."""
    x = stats._values(accuracies)
    if len(x) == 0:
        return stats.Interval(0, math.nan, math.nan, math.nan, math.nan, "no values: no interval", plan.confidence)
    mean = stats._mean(x)
    if len(x) == 1:
        return stats.Interval(1, mean, math.nan, math.nan, math.nan, "n=1: no interval", plan.confidence)
    low, high = sequential_interval(x, plan, bounds=(0.0, 1.0))
    return stats.Interval(len(x), mean, float(np.std(x, ddof=1)), low, high, f"{plan.method}, n={len(x)}",
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
    ``comparisons``: every comparison with its status; ``stopped``: combination -> why it gets no seed;
    ``tops``: each group's top combination (best mode), ``top`` the only group's."""

    next_seeds: dict
    comparisons: list
    stopped: dict
    done: bool = field(default=False)
    top: Optional[Hashable] = None
    tops: dict = field(default_factory=dict)


def _accs(results: Mapping[Hashable, Mapping]) -> dict:
    return {c: {s: float(a) for s, a in r.items() if a is not None and not math.isnan(float(a))}
            for c, r in results.items()}


def _next_seed(plan: Plan, ran) -> Optional[Hashable]:
    return next((s for s in plan.order if s not in ran), None)


def _diffs(accs: dict, a, b) -> np.ndarray:
    return np.array([accs[a][s] - accs[b][s] for s in accs[a] if s in accs[b]], dtype=float)


def _groups(results: Mapping, group: Optional[Callable]) -> dict:
    """group -> its combinations, in the order of ``results``."""
    out: dict = {}
    for c in results:
        out.setdefault(group(c) if group is not None else None, []).append(c)
    return out


def compare(results: Mapping[Hashable, Mapping], plan: Plan = Plan(), group: Optional[Callable] = None,
            name: Callable = str) -> tuple[list, dict]:
    """Every comparison of the plan on the results so far, with its status; and each group's top
    combination (best mode; empty with named pairs).

    ``group``: combination -> its group (a grid's combination of settings: its depths are compared with
    their own top, Holm within the group); default one group. ``name``: a combination as the reasons name it.
    """
    accs = _accs(results)
    ran = {c: len(r) for c, r in results.items()}
    alpha, m_pct = 1 - plan.confidence, None if plan.margin is None else plan.margin / 100
    test = sequential_test(plan)
    pairs, sep, sim_levels, tops = [], {}, {}, {}
    if plan.pairs is None:
        for g, members in _groups(results, group).items():
            verdicts = stats.compare_to_best({c: accs[c] for c in members}, plan.confidence, test)
            if not verdicts:
                continue
            top = tops[g] = next(v.best_depth for v in verdicts.values())
            k = len(verdicts)
            for c, v in verdicts.items():
                if c != top:
                    pairs.append((c, top))
                    sep[(c, top)] = (v.verdict in (stats.BELOW, stats.ABOVE), v.p_adjusted, v.diff_low, v.diff_high)
                    sim_levels[(c, top)] = 1 - alpha / max(1, k * (k - 1) / 2)
    else:
        pairs = [tuple(p) for p in plan.pairs]
        unknown = [c for p in pairs for c in p if c not in results]
        if unknown:
            raise CnnDepthError(f"pairs name {unknown[0]!r}, not one of the combinations {list(results)}")
        diffs = {p: _diffs(accs, *p) for p in pairs}
        pv = {p: (sequential_p(d, plan) if len(d) >= 2 else math.nan) for p, d in diffs.items()}
        m = len(pairs)
        steps = stats.step_down(pv, m + 1, alpha, divisors=[float(m - i) for i in range(m)])
        for p, (separated, p_adj, div) in steps.items():
            low, high = sequential_interval(diffs[p], plan, 1 - alpha / div)
            sep[p] = (separated, p_adj, low, high)
            sim_levels[p] = 1 - alpha / m
    out = []
    for a, b in pairs:
        d = _diffs(accs, a, b)
        separated, p_adj, low, high = sep[(a, b)]
        sim_low, sim_high = sequential_interval(d, plan, sim_levels[(a, b)])
        mean = stats._mean(d) if len(d) else math.nan
        at_max = max(ran.get(a, 0), ran.get(b, 0)) >= plan.max_seeds or \
            _next_seed(plan, results[a]) is None or _next_seed(plan, results[b]) is None
        if len(d) >= 2 and separated:
            status, why = SEPARATED, (f"separated: {name(a)} {'below' if mean < 0 else 'above'} {name(b)} "
                                      f"(adjusted p {p_adj:.3g})")
        elif len(d) >= 2 and m_pct is not None and -m_pct < sim_low and sim_high < m_pct:
            status, why = EQUIVALENT, (f"equivalent: {name(a)} − {name(b)} within ±{plan.margin:g} points "
                                       f"[{sim_low * 100:+.2f}, {sim_high * 100:+.2f}]")
        elif at_max:
            status, why = MAX_SEEDS, f"max seeds: {len(d)} shared seeds and not resolved"
        else:
            status, why = CONTINUE, f"not resolved after {len(d)} shared seeds"
        out.append(Comparison(a, b, len(d), mean, low, high, p_adj, sim_low, sim_high, status, why))
    return out, tops


def next_round(results: Mapping[Hashable, Mapping], plan: Plan = Plan(), group: Optional[Callable] = None,
               name: Callable = str) -> Round:
    """Which combinations get another seed, and why every other one stopped.

    ``results``: ``{combination: {seed: accuracy}}`` for every combination of the sweep (an empty dict for one
    that has not run; NaN for a failed run, which counts as run and pairs with nothing). First every
    combination runs ``plan.min_seeds`` seeds; then a combination gets its next seed (the first of
    ``plan.order`` it has not run) while it is in a comparison that is not resolved (:func:`compare`; with
    ``group``, each depth is compared with the top of its own group). Done when no combination needs one.
    ``name``: a combination as the reasons name it.
    """
    if not results:
        raise CnnDepthError("give every combination's results so far, e.g. {2: {0: 0.41}, 4: {0: 0.52}}")
    short = {c: _next_seed(plan, r) for c, r in results.items() if len(r) < plan.min_seeds}
    short = {c: s for c, s in short.items() if s is not None}
    if short:
        return Round(short, [], {c: "has its first seeds" for c in results if c not in short}, False)
    comps, tops = compare(results, plan, group, name)
    need = {c for x in comps if x.status == CONTINUE for c in (x.a, x.b)}
    next_seeds = {c: _next_seed(plan, results[c]) for c in results if c in need}
    next_seeds = {c: s for c, s in next_seeds.items() if s is not None}
    stopped = {}
    for c in results:
        if c in next_seeds:
            continue
        mine = [x for x in comps if c in (x.a, x.b)]
        stopped[c] = "; ".join(x.reason if c == x.a else f"vs {name(x.a)}: {x.reason}" for x in mine) or \
            "in no comparison"
    top = next(iter(tops.values())) if len(tops) == 1 else None
    return Round(next_seeds, comps, stopped, not next_seeds, top, tops)


def sweep_rounds(draw, combinations_: Sequence[Hashable], plan: Plan = Plan(),
                 group: Optional[Callable] = None) -> tuple[dict, list]:
    """Run :func:`next_round` to its end with ``draw(combination, seed) -> accuracy`` (a simulation, or a
    driver's training run): returns the results and the rounds' answers."""
    results = {c: {} for c in combinations_}
    rounds = []
    while True:
        r = next_round(results, plan, group)
        rounds.append(r)
        if r.done:
            return results, rounds
        for c, s in r.next_seeds.items():
            results[c][s] = draw(c, s)


def all_pairs(items: Sequence[Hashable]) -> tuple:
    """Every pair of ``items``, for ``Plan(pairs=...)``."""
    return tuple(combinations(items, 2))


def _cell(c):
    """A combination as sweep.json keeps it (a grid's cell ``(name, depth)`` as a list) and back."""
    return list(c) if isinstance(c, tuple) else c


def plan_record(plan: Plan) -> dict:
    """``plan`` as sweep.json keeps it (each ``--seeds auto`` invocation's ``plan``), for :func:`plan_from_record`."""
    return dict(method=plan.method, min_seeds=plan.min_seeds, max_seeds=plan.max_seeds, confidence=plan.confidence,
                margin=plan.margin, pairs=None if plan.pairs is None else [[_cell(c) for c in p] for p in plan.pairs],
                seeds=None if plan.seeds is None else list(plan.seeds), shape=plan.shape, scale=plan.scale,
                grid=list(plan.grid), null_paths=NULL_PATHS, null_seed=NULL_SEED)


def plan_from_record(record) -> Plan:
    """The :class:`Plan` a sweep.json recorded (:func:`plan_record`); a record without a method is the anytime
    method's (the only one before); a damaged one is one line."""
    try:
        pairs = record.get("pairs")
        seeds = record.get("seeds")
        return Plan(min_seeds=record["min_seeds"], max_seeds=record["max_seeds"],
                    confidence=record.get("confidence", 0.95), margin=record.get("margin"),
                    pairs=None if pairs is None else tuple(tuple(tuple(c) if isinstance(c, list) else c for c in p)
                                                           for p in pairs),
                    seeds=None if seeds is None else tuple(seeds), method=record.get("method", ANYTIME),
                    shape=record.get("shape", SHAPE), scale=record.get("scale", 4.0),
                    grid=tuple(record.get("grid") or ()))
    except (AttributeError, KeyError, TypeError) as e:
        raise CnnDepthError(f"the plan in sweep.json is not what a --seeds auto sweep wrote ({type(e).__name__}: "
                            f"{e}); put back what the sweep wrote") from e


def cell_name(c) -> str:
    """A combination as the rule's lines name it: a depth (``20``), or a grid's cell (``residual:20``)."""
    return f"{c[0]}:{c[1]}" if isinstance(c, tuple) else str(c)


def boundary_words(plan: Plan) -> str:
    """The method in a few words: ``group-sequential t, Wang-Tsiatis Δ=0.25 boundaries at seeds 3-10``."""
    if plan.method == ANYTIME:
        return "anytime t"
    kind = {0.5: "Pocock", 0.0: "O'Brien-Fleming"}.get(float(plan.shape), f"Wang-Tsiatis Δ={plan.shape:g}")
    return f"{GROUP_SEQUENTIAL}, {kind} boundaries at seeds {plan.min_seeds}-{plan.max_seeds}"


def describe(plan: Plan) -> str:
    """The rule in words, for the ``sweep:`` line and the summary's ``seeds_rule`` column, e.g.
    ``seeds until the answer is clear: 3-10 per depth, each depth with the best, no equivalence margin, 95%
    family-wise; group-sequential t, Wang-Tsiatis Δ=0.25 boundaries at seeds 3-10``; in a grid ``... per
    combination and depth, each depth with the best of its combination, ... 95% family-wise per
    combination; ...``."""
    if plan.pairs is not None:
        what = "; ".join(f"{'' if plan.grid else 'depth '}{cell_name(a)} vs {'' if plan.grid else 'depth '}"
                         f"{cell_name(b)}" for a, b in plan.pairs)
    else:
        what = "each depth with the best of its combination" if plan.grid else "each depth with the best"
    margin = f"equivalent within ±{plan.margin:g} points" if plan.margin is not None else "no equivalence margin"
    per = " per combination" if plan.grid and plan.pairs is None else ""
    return (f"seeds until the answer is clear: {plan.min_seeds}-{plan.max_seeds} per "
            f"{'combination and depth' if plan.grid else 'depth'}, {what}, {margin}, "
            f"{plan.confidence * 100:g}% family-wise{per}; {boundary_words(plan)}")


ANYTIME_WORDS = ("anytime-valid t (Lai's confidence sequence): the sequential t-test's Bayes factor (a normal "
                 "mixture over the standardised difference, prior 1/sigma on the spread) stays below 1/alpha at "
                 "every round with probability 1 - alpha (Ville), so these intervals hold at whatever round the "
                 "sweep stopped, with no planned maximum, and are wider than fixed-n t intervals; they assume "
                 "independent seeds, normal accuracies and paired differences with an unknown spread, and seeds "
                 "run in the same order at every depth")
GS_WORDS = ("group-sequential t: at every planned look (each seed from --min-seeds to --max-seeds) the paired t's "
            f"fixed-n p-value is held against the boundaries named above, their level set on {NULL_PATHS:,} "
            f"simulated sweeps with no difference (seed {NULL_SEED}; the Monte Carlo error added to every "
            "p-value), so a separation is claimed with probability at most alpha whatever round the sweep "
            "stopped at; the intervals are repeated confidence intervals (Jennison & Turnbull) at the stopping "
            "look, around the plain mean; they assume independent seeds, normal paired differences with an "
            "unknown spread, seeds run in the same order at every depth, and a plan fixed before the results "
            "(a higher --max-seeds later is judged with the longer plan's boundaries at every look)")


def method_words(rule) -> str:
    """The method and what it assumes, for the report's footnote, from a :class:`Plan` or the ``seeds_rule``
    it wrote."""
    method = rule.method if isinstance(rule, Plan) else ANYTIME if ANYTIME in str(rule) else GROUP_SEQUENTIAL
    return ANYTIME_WORDS if method == ANYTIME else GS_WORDS
