"""Seeds until the answer is clear, checked by simulation: synthetic sweeps with known means run through
``cnn_depth.sequential`` round by round, against fixed numbers of seeds with the same error rate.

    python experiments/simulate_sequential.py            # the tables in docs/reports.md (a few minutes)
    python experiments/simulate_sequential.py --quick    # 5x fewer sweeps

Accuracy of (depth, seed) = the depth's mean + a seed effect shared by every depth (sd 1 point, which pairing
removes) + the run's own noise; differences are in accuracy points, and delta = difference / sd of a paired
difference. Every design looks after each seed from 3 to 10 (``Plan(min_seeds=3, max_seeds=10)``), 95%:

- group-sequential t (``Plan(method="group-sequential t", shape=...)``): Pocock (shape 0.5), Wang-Tsiatis
  0.25 (the rule's default), O'Brien-Fleming (shape 0);
- anytime t (``Plan(method="anytime t")``): the former rule, a confidence sequence;
- fixed n: n seeds for every depth, the fixed-n paired t (the same Holm step-down in a group,
  ``cnn_depth.stats.compare_to_best``); its power at a difference is exact (the noncentral t), and "fixed,
  same power" is the n (interpolated between whole seeds: a design that runs n or n+1) with the power the
  sequential design reached.

Tables: (1) the |t| each design needs at each look; (2) a named pair at the studies' differences: power and
mean seeds, against the fixed design of the same power; (3) the family-wise error with equal means (a pair,
4 and 8 depths); (4) the recorded studies' groups (degradation's plain, bn and residual at depths 4-20,
tutorial-depth's bn at depths 1-8: their means and per-depth spread); (5) what an unplanned extension of
--max-seeds costs in error rate.
"""
from __future__ import annotations

import argparse
import math
import time

import numpy as np
from scipy import integrate
from scipy import stats as st

from cnn_depth.sequential import ANYTIME, Plan, critical_t, cumulative_t, gs_critical_t, sweep_rounds
from cnn_depth.stats import compare_to_best

DESIGNS = {"Pocock": Plan(shape=0.5), "Wang-Tsiatis 0.25 (the rule)": Plan(), "O'Brien-Fleming": Plan(shape=0.0),
           "anytime t (former rule)": Plan(method=ANYTIME)}
RULE = "Wang-Tsiatis 0.25 (the rule)"
# differences seen in the studies (experiments/*/results), as (label, difference in points, paired sd)
PAIRS = [("DeeperCNN − SimpleCNN, paired sd 1", 0.7, 1.0),
         ("DeeperCNN − SimpleCNN as measured (sd 0.64)", 0.7, 0.64),
         ("3 points at sd 2", 3.0, 2.0),
         ("residual 8 − 20 (3.2 points, sd 1.6)", 3.2, 1.6),
         ("bn 14 − 8 (4.5 points, sd 1.5)", 4.5, 1.5),
         ("bn 4 − 8 (6 points, sd 1.5)", 6.0, 1.5)]
# the studies' groups: mean accuracy per depth and per-depth sd over seeds (points), as recorded
GROUPS = {"degradation plain, depths 4 8 14 20": ([43.13, 44.13, 32.17, 11.27], [1.10, 1.65, 6.60, 2.19]),
          "degradation bn, depths 4 8 14 20": ([49.53, 55.50, 51.00, 43.40], [1.47, 0.61, 1.97, 1.56]),
          "degradation residual, depths 4 8 14 20": ([41.07, 49.70, 52.37, 52.93], [0.65, 1.41, 2.35, 1.70]),
          "tutorial-depth bn, depths 1-8": ([27.34, 37.54, 44.84, 52.78, 54.26, 56.26, 55.64, 56.34], [0.7] * 8)}


def crits(plan: Plan, level: float = 0.95) -> np.ndarray:
    """The |t| a design needs at each look n = min_seeds ... max_seeds."""
    ns = range(plan.min_seeds, plan.max_seeds + 1)
    if plan.method == ANYTIME:
        return np.array([critical_t(n, level, plan.scale) for n in ns])
    return np.array([gs_critical_t(n, level, plan) for n in ns])


def t_paths(delta: float, sims: int, n_max: int, rng) -> np.ndarray:
    """|t| after each of n_max paired differences (N(delta, 1)), per simulated pair; column n-1 is n seeds."""
    return np.abs(cumulative_t(rng.standard_normal((sims, n_max)) + delta))


def pair_design(plan: Plan, t: np.ndarray) -> tuple[float, float]:
    """Power and mean seeds of a design on |t| paths: it stops at the first look whose |t| reaches its
    boundary, else at max_seeds."""
    c = crits(plan)
    cross = t[:, plan.min_seeds - 1:plan.max_seeds] >= c
    hit = cross.any(1)
    first = np.where(hit, cross.argmax(1) + plan.min_seeds, plan.max_seeds)
    return float(hit.mean()), float(first.mean())


def fixed_power(delta: float, n: int, alpha: float = 0.05) -> float:
    """Power of the two-sided fixed-n paired t at standardised difference delta (the noncentral t, by
    integrating over the sample variance)."""
    tc, df, nc = st.t.ppf(1 - alpha / 2, n - 1), n - 1, delta * math.sqrt(n)
    f = lambda v: st.chi2.pdf(v, df) * (st.norm.sf(tc * math.sqrt(v / df) - nc)  # noqa: E731
                                        + st.norm.cdf(-tc * math.sqrt(v / df) - nc))
    return integrate.quad(f, 0, np.inf, limit=200)[0]


CAP = 0.99  # above this, "the same power" is matched at 0.99 (which favours the fixed design)


def fixed_same_power(delta: float, power: float) -> float:
    """The fixed n (interpolated between whole seeds) whose power is ``power`` (at most ``CAP``: a power of
    0.9999 needs many more seeds than 0.99 and says nothing about practice)."""
    power, before = min(power, CAP), None
    for n in range(2, 200):
        p = fixed_power(delta, n)
        if p >= power:
            return float(n) if before is None else n - 1 + (power - before) / (p - before)
        before = p
    return math.inf


def draws(means, sds, n_max, rng, seed_sd=1.0):
    """accuracy table [seed, combination] as fractions."""
    seed = rng.normal(0, seed_sd, (n_max, 1))
    return (np.asarray(means)[None, :] + seed + rng.normal(0, 1, (n_max, len(means))) * np.asarray(sds)) / 100


def rule_sweeps(means, sds, plan, sims, rng):
    """Per sweep of the rule (cnn_depth.sequential.sweep_rounds): seeds per combination, and per comparison
    whether it ended separated."""
    seeds, separated = [], []
    for _ in range(sims):
        table = draws(means, sds, plan.max_seeds, rng)
        results, rounds = sweep_rounds(lambda c, s: float(table[s, c]), list(range(len(means))), plan)
        seeds.append([len(results[c]) for c in range(len(means))])
        separated.append({x.a: x.status == "separated" for x in rounds[-1].comparisons})
    return np.array(seeds), separated


def fixed_sweeps(means, sds, n, sims, rng):
    """Per sweep with n seeds each: which depths the fixed-n step-down separates from the top."""
    out = []
    for _ in range(sims):
        table = draws(means, sds, n, rng)
        v = compare_to_best({c: dict(enumerate(table[:, c])) for c in range(len(means))})
        out.append({c: x.verdict in ("below best", "above best on shared seeds") for c, x in v.items()
                    if x.verdict != "best"})
    return out


def rate(separated, c):
    return float(np.mean([s.get(c, False) for s in separated]))


def any_rate(separated):
    return float(np.mean([any(s.values()) for s in separated]))


def pm(p, n):
    return f"{p:.3f} ± {1.96 * math.sqrt(max(p * (1 - p), 1e-12) / n):.3f}"


def table(head, rows):
    print("| " + " | ".join(head) + " |")
    print("|" + "|".join("---" for _ in head) + "|")
    for r in rows:
        print("| " + " | ".join(str(c) for c in r) + " |")
    print()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="5x fewer sweeps")
    ap.add_argument("--seed", type=int, default=2026)
    args = ap.parse_args(argv)
    rng = np.random.default_rng(args.seed)
    f = 5 if args.quick else 1
    started = time.time()
    print(f"seed {args.seed}; looks at 3-10 seeds, 95%; seed effect sd 1 point (cancels in pairs)\n")

    print("(1) |t| needed to separate at each look (two-sided, 95%; one comparison)\n")
    table(["design", *[f"n={n}" for n in range(3, 11)]],
          [(name, *[f"{c:.2f}" if math.isfinite(c) else "never" for c in crits(p)]) for name, p in DESIGNS.items()]
          + [("fixed n (t at 97.5%)", *[f"{st.t.ppf(0.975, n - 1):.2f}" for n in range(3, 11)])])

    print("(2) a named pair at the studies' differences: power, mean seeds, and the fixed design of the same "
          "power\n")
    sims = 200_000 // f
    rows = []
    for label, diff, sd in PAIRS:
        delta = diff / sd
        t = t_paths(delta, sims, 10, rng)
        for name, plan in DESIGNS.items():
            power, seeds = pair_design(plan, t)
            same = fixed_same_power(delta, power)
            rows.append((f"{label}: delta {delta:.2f}", name, f"{power:.3f}", f"{seeds:.2f}", f"{same:.2f}",
                         f"{seeds / same:.2f}"))
        rows.append((f"{label}: delta {delta:.2f}", "fixed 10 seeds", f"{fixed_power(delta, 10):.3f}", "10", "10",
                     "1.00"))
    table(["difference", "design", "power", "mean seeds", f"fixed n, same power (at most {CAP})", "seeds / fixed"],
          rows)
    # the rule itself (next_round, named pair) agrees with the vectorised boundaries above
    check = 2000 // f
    plan = Plan(pairs=((1, 0),))
    seeds, sep = rule_sweeps([56.8, 57.5], [0.45, 0.45], plan, check, rng)
    print(f"the rule through next_round, {check} sweeps of the pair +0.7 points at paired sd 0.64: separated "
          f"{pm(rate(sep, 1), check)}, mean seeds {seeds.mean():.2f} (the vectorised row above: delta 1.09)\n")

    print("(3) family-wise error with equal means (every separation is an error)\n")
    rows = []
    for label, k, sims in (("named pair", 2, 4000 // f), ("4 depths", 4, 2000 // f), ("8 depths", 8, 1000 // f)):
        for name in (RULE, "anytime t (former rule)"):
            base = DESIGNS[name]
            plan = Plan(method=base.method, shape=base.shape, pairs=((1, 0),) if k == 2 else None)
            seeds, sep = rule_sweeps([50.0] * k, [1.0] * k, plan, sims, rng)
            rows.append((label, sims, name, pm(any_rate(sep), sims), f"{seeds.mean():.2f}"))
        fx = fixed_sweeps([50.0] * k, [1.0] * k, 10, sims, rng)
        rows.append((label, sims, "fixed 10 seeds", pm(any_rate(fx), sims), "10"))
        t = t_paths(0.0, sims * 10, 10, rng)  # peeking: a fixed-n 95% t at every look, stop at the first
        peek = (t[:, 2:] > st.t.ppf(0.975, np.arange(3, 11) - 1)).any(1).mean() if k == 2 else math.nan
        if k == 2:
            rows.append((label, sims * 10, "fixed-n t at every look (peeking)", pm(peek, sims * 10), ""))
    table(["equal means", "sweeps", "design", "some separation (FWER)", "mean seeds"], rows)

    print("(4) the studies' groups (each depth with the best, Holm): how often each depth is separated from "
          "the top, and the runs spent\n")
    rows = []
    for label, (means, sds) in GROUPS.items():
        sims = (300 if len(means) > 4 else 600) // f
        k = len(means)
        for name, plan in DESIGNS.items():
            seeds, sep = rule_sweeps(means, sds, plan, sims, rng)
            per = [rate(sep, c) for c in range(k)]
            runs = seeds.sum(1).mean()
            for n in range(3, 21):  # the fewest fixed seeds that separate each depth as often (within 0.02)
                fx = fixed_sweeps(means, sds, n, sims, rng)
                if all(rate(fx, c) >= p - 0.02 for c, p in enumerate(per)):
                    break
            rows.append((label, name, " ".join(f"{p:.2f}" for p in per), " ".join(f"{s:.1f}" for s in seeds.mean(0)),
                         f"{runs:.1f}", f"{n} ({k * n} runs)", f"{runs / (k * n):.2f}"))
    table(["group", "design", "separated from the top, per depth", "seeds per depth (mean)", "runs (mean)",
           "fixed seeds, as powerful", "runs / fixed"], rows)

    print("(5) an unplanned extension: a named pair with no difference, run to 10 seeds, and where not "
          "separated extended to 20 (judged with the 3-20 plan's boundaries at the end)\n")
    sims = 200_000 // f
    t = t_paths(0.0, sims, 20, rng)
    p10, p20 = Plan(), Plan(max_seeds=20)
    first = (t[:, 2:10] >= crits(p10)).any(1)
    c20 = crits(p20)
    later = (t[:, 2:20] >= c20).any(1)
    table(["procedure", "separated (error rate)"],
          [("3-10 plan alone", pm(first.mean(), sims)), ("3-20 plan alone", pm(later.mean(), sims)),
           ("3-10, then 3-20 where not separated", pm((first | later).mean(), sims))])
    print(f"{time.time() - started:.0f} s")


if __name__ == "__main__":
    main()
