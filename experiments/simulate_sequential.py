"""Seeds until the answer is clear, checked by simulation: synthetic sweeps with known means, run through
``cnn_depth.sequential.next_round`` round by round, against a fixed number of seeds with the same error rate.

    python experiments/simulate_sequential.py            # the table in docs/reports.md (a few minutes)
    python experiments/simulate_sequential.py --quick    # 5x fewer sweeps

Each sweep: accuracy of (depth, seed) = mean[depth] + a seed effect shared by every depth (sd ``seed_sd``)
+ the run's own noise (sd ``noise``), in accuracy points; paired differences then have sd noise*sqrt(2).
Scenarios, from the recorded studies (experiments/*/results): 8 depths with equal means (every separation
is an error); 8 depths with the means of tutorial-depth's `bn` (depths 1-8; paired sd about 1 point); the
named pair DeeperCNN vs SimpleCNN (+0.7 points, paired sd 0.64) and the same pair with no difference.
The sequential rule: Plan(min_seeds=3, max_seeds=10), 95% family-wise. The fixed designs: n seeds for
every depth, fixed-n paired t with the same step-down (cnn_depth.stats.compare_to_best) at 95%; "fixed, same
power" is the fewest seeds whose power is at least the sequential rule's.
"""
from __future__ import annotations

import argparse
import math
import time

import numpy as np

from cnn_depth.sequential import Plan, sweep_rounds
from cnn_depth.stats import compare_to_best, paired_difference

BN = [27.34, 37.54, 44.84, 52.78, 54.26, 56.26, 55.64, 56.34]  # tutorial-depth bn, depths 1-8, mean accuracy


def draws(means, n_max, rng, seed_sd, noise):
    seed_effect = rng.normal(0, seed_sd, n_max)
    table = (np.asarray(means)[None, :] + seed_effect[:, None] + rng.normal(0, noise, (n_max, len(means)))) / 100
    return table  # [seed, combination], fractions


def sequential(means, plan, sims, rng, seed_sd, noise, pairs=None):
    """Per sweep: seeds run per combination, and which comparisons ended separated."""
    seeds, separated = [], []
    for _ in range(sims):
        table = draws(means, plan.max_seeds, rng, seed_sd, noise)
        results, rounds = sweep_rounds(lambda c, s: float(table[s, c]), list(range(len(means))), plan)
        seeds.append([len(results[c]) for c in range(len(means))])
        separated.append({(x.a, x.b): x.status == "separated" for x in rounds[-1].comparisons})
    return np.array(seeds), separated


def fixed(means, n, sims, rng, seed_sd, noise, pairs=None):
    """Per sweep with n seeds each: which comparisons are separated (the same step-down, fixed-n t)."""
    out = []
    for _ in range(sims):
        table = draws(means, n, rng, seed_sd, noise)
        runs = {c: dict(enumerate(table[:, c])) for c in range(len(means))}
        if pairs:
            out.append({p: paired_difference(runs[p[0]], runs[p[1]]).low > 0 or
                        paired_difference(runs[p[0]], runs[p[1]]).high < 0 for p in pairs})
        else:
            v = compare_to_best(runs)
            out.append({(c, x.best_depth): x.verdict in ("below best", "above best on shared seeds")
                        for c, x in v.items() if x.verdict != "best"})
    return out


def any_rate(separated):
    return float(np.mean([any(s.values()) for s in separated]))


def rate_of(separated, key):
    """Share of sweeps where combination ``key[0]`` is separated from the top (whichever it was) or, for a
    named pair, the pair is separated."""
    return float(np.mean([any(v for (a, b), v in s.items() if a == key[0] or (a, b) == key) for s in separated]))


def ci(p, n):
    half = 1.96 * math.sqrt(max(p * (1 - p), 1e-12) / n)
    return f"{p:.3f} ± {half:.3f}"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--seed", type=int, default=2026)
    args = ap.parse_args(argv)
    rng = np.random.default_rng(args.seed)
    f = 5 if args.quick else 1
    plan = Plan(min_seeds=3, max_seeds=10)
    started = time.time()
    print(f"seed {args.seed}; Plan(min_seeds=3, max_seeds=10, confidence=0.95, scale=4); seed effect sd 1 point")
    rows = []

    # 1. eight equal depths: family-wise error
    sims = 1000 // f
    s, sep = sequential([50.0] * 8, plan, sims, rng, 1.0, 1.0)
    fx = fixed([50.0] * 8, 10, sims, rng, 1.0, 1.0)
    rows.append(("8 equal depths (noise 1 pt)", sims, f"any separation (FWER): {ci(any_rate(sep), sims)}",
                 f"{s.mean():.2f}", f"10: FWER {ci(any_rate(fx), sims)}", f"{s.sum(1).mean():.1f} vs 80"))

    # 2. tutorial-depth bn means, noise 0.7 points per run (paired sd about 1 point)
    sims = 300 // f
    s, sep = sequential(BN, plan, sims, rng, 1.0, 0.7)
    per = {d: rate_of(sep, (d,)) for d in range(8)}
    fx10 = fixed(BN, 10, sims, rng, 1.0, 0.7)
    per10 = {d: rate_of(fx10, (d,)) for d in range(8)}
    seeds = " ".join(f"{m:.1f}" for m in s.mean(0))
    rows.append(("bn depths 1-8 (study means, noise 0.7 pt)", sims,
                 "separated from the top, depths 1-8: " + " ".join(f"{per[d]:.2f}" for d in range(8)),
                 f"{s.mean():.2f} (per depth {seeds})",
                 "10: " + " ".join(f"{per10[d]:.2f}" for d in range(8)), f"{s.sum(1).mean():.1f} vs 80"))
    for n in range(3, 11):  # the fewest fixed seeds that separate depths 1-5 as often
        fxn = fixed(BN, n, sims, rng, 1.0, 0.7)
        if all(rate_of(fxn, (d,)) >= per[d] - 0.02 for d in range(5)):
            rows.append(("  fixed, same power (depths 1-5)", sims, " ".join(f"{rate_of(fxn, (d,)):.2f}" for d in range(8)),
                         "", f"{n}", f"{8 * n}"))
            break

    # 3. a named pair: DeeperCNN vs SimpleCNN (+0.7 points, paired sd 0.64: noise 0.45 per run), and no difference
    pair = Plan(min_seeds=3, max_seeds=10, pairs=((1, 0),))
    for label, delta, sims in (("named pair, no difference", 0.0, 4000 // f),
                               ("named pair +0.7 pt (DeeperCNN vs SimpleCNN)", 0.7, 4000 // f),
                               ("named pair +2 pt", 2.0, 4000 // f)):
        s, sep = sequential([56.8, 56.8 + delta], pair, sims, rng, 1.0, 0.45)
        p = rate_of(sep, (1, 0))
        n_same = next((n for n in range(3, 31)
                       if rate_of(fixed([56.8, 56.8 + delta], n, min(sims, 2000), rng, 1.0, 0.45, [(1, 0)]), (1, 0))
                       >= p), None) if delta else None
        fx = fixed([56.8, 56.8 + delta], 10, sims, rng, 1.0, 0.45, [(1, 0)])
        rows.append((label, sims, f"separated: {ci(p, sims)}", f"{s.mean():.2f}",
                     f"10: {ci(rate_of(fx, (1, 0)), sims)}" + (f"; same power: {n_same}" if delta else ""), ""))

    print("| scenario | sweeps | sequential rule: how often separated | seeds per combination (mean) | "
          "fixed design: seeds, how often separated | runs per sweep (sequential vs fixed 10) |")
    print("|---|--:|---|---|---|---|")
    for r in rows:
        print("| " + " | ".join(str(c) for c in r) + " |")
    print(f"\n{time.time() - started:.0f} s")


if __name__ == "__main__":
    main()
