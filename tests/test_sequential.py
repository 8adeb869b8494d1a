"""Seeds until the answer is clear (cnn_depth.sequential): the confidence sequence by hand, the rule's
mechanics, and its error rate under optional stopping by simulation (seeded, a few seconds)."""
import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats as st

from cnn_depth import CnnDepthError
from cnn_depth.sequential import (Plan, anytime_p, critical_t, log_bf, next_round, sequential_interval,
                                  sweep_rounds)

pytestmark = pytest.mark.filterwarnings("error")


def test_bayes_factor_matches_its_integral_and_the_interval_inverts_it():
    # BF = ∫∫ N(x; δσ, σ²) N(δ; 0, g) / σ dδ dσ over ∫ N(x; 0, σ²) / σ dσ, integrated numerically
    from scipy import integrate
    x, g = np.array([0.3, 1.1, -0.2, 0.8]), 0.7
    lik = lambda mu, s: np.prod(st.norm.pdf(x, mu, s))  # noqa: E731
    h0 = integrate.quad(lambda s: lik(0, s) / s, 0, np.inf)[0]
    h1 = integrate.dblquad(lambda d, s: lik(d * s, s) * st.norm.pdf(d, 0, math.sqrt(g)) / s, 0, 50, -20, 20)[0]
    t = x.mean() / (x.std(ddof=1) / 2)
    assert math.exp(log_bf(t, 4, g)) == pytest.approx(h1 / h0, rel=1e-6)
    for n in (4, 5, 10):
        c = critical_t(n, 0.95, 4.0)
        assert log_bf(c, n, 4.0) == pytest.approx(math.log(20))
        assert c > st.t.ppf(0.975, n - 1)  # wider than the fixed-n t: the price of looking every round
    # 2 or 3 seeds can never reach 1/0.05 = 20 (the largest BF: (1 + n g)^((n-1)/2) = 3 and 13)
    assert critical_t(2, 0.95, 4.0) == critical_t(3, 0.95, 4.0) == math.inf
    d = [0.01, 0.02, 0.015, 0.03, 0.01]
    low, high = sequential_interval(d)
    half = critical_t(5, 0.95, 4.0) * np.std(d, ddof=1) / math.sqrt(5)
    assert (low, high) == (pytest.approx(np.mean(d) - half), pytest.approx(np.mean(d) + half))
    assert (low > 0) == (anytime_p(d) <= 0.05)
    assert sequential_interval([0.1, 0.2]) == (-1.0, 1.0)  # too few seeds for 95%: the whole range


def null_pair_sweeps(sims, rng):
    """Named pair with no difference, seed effect sd 1 point, run noise 0.45 points (the studies' scale)."""
    plan = Plan(min_seeds=3, max_seeds=10, pairs=((1, 0),))
    separated, naive = 0, 0
    for _ in range(sims):
        table = (56.8 + rng.normal(0, 1, (10, 1)) + rng.normal(0, 0.45, (10, 2))) / 100
        _, rounds = sweep_rounds(lambda c, s: float(table[s, c]), [0, 1], plan)
        separated += rounds[-1].comparisons[0].status == "separated"
        # the same looks with a fixed-n 95% t test, stopping at the first separation
        d = table[:, 1] - table[:, 0]
        naive += any(abs(d[:n].mean()) / (d[:n].std(ddof=1) / math.sqrt(n)) > st.t.ppf(0.975, n - 1)
                     for n in range(3, 11))
    return separated / sims, naive / sims


def test_no_difference_is_separated_in_at_most_5_percent_of_sweeps_whenever_it_stops():
    rate, naive = null_pair_sweeps(500, np.random.default_rng(21))
    assert rate <= 0.05 + 3 * math.sqrt(0.05 * 0.95 / 500), rate
    assert naive > 0.10, naive  # peeking with fixed-n intervals: the error this method exists to prevent


def test_eight_equal_depths_no_separation_and_a_real_difference_stops_early():
    rng = np.random.default_rng(5)
    plan = Plan(min_seeds=3, max_seeds=10)
    wrong = 0
    for _ in range(60):
        table = (50 + rng.normal(0, 1, (10, 1)) + rng.normal(0, 1, (10, 8))) / 100
        _, rounds = sweep_rounds(lambda c, s: float(table[s, c]), range(8), plan)
        wrong += any(x.status == "separated" for x in rounds[-1].comparisons)
    assert wrong <= 3  # 5% of 60 is 3 (the script's 1,000 sweeps: 0 when this was written)
    # +2 points on paired sd 0.64: separated in every sweep, on fewer than 10 seeds
    pair = Plan(min_seeds=3, max_seeds=10, pairs=((1, 0),))
    seeds = []
    for _ in range(100):
        table = (56.8 + np.array([0, 2.0]) + rng.normal(0, 1, (10, 1)) + rng.normal(0, 0.45, (10, 2))) / 100
        results, rounds = sweep_rounds(lambda c, s: float(table[s, c]), [0, 1], pair)
        assert rounds[-1].comparisons[0].status == "separated"
        seeds.append(len(results[0]))
    assert 4 <= np.mean(seeds) < 6, np.mean(seeds)


def test_the_rule_runs_min_seeds_first_then_only_what_is_unresolved():
    plan = Plan(min_seeds=3, max_seeds=5, margin=1.0)
    r = next_round({2: {}, 4: {0: 0.5}, 8: {0: 0.6, 1: 0.6, 2: 0.6}}, plan)
    assert r.next_seeds == {2: 0, 4: 1} and not r.done and r.stopped == {8: "has its first seeds"}
    # depth 2 far below, 4 and 8 close: 2 stops (separated), 4 and 8 go on with seed 3... until max seeds
    res = {2: {0: .30, 1: .31, 2: .29}, 4: {0: .55, 1: .57, 2: .54}, 8: {0: .56, 1: .55, 2: .57}}
    r = next_round(res, plan)
    # 3 seeds cannot separate anything at 1 - 0.05/3: every depth gets seed 3
    assert r.top == 8 and r.next_seeds == {2: 3, 4: 3, 8: 3}
    res = {d: {**v, 3: v[0] + 0.001, 4: v[1] - 0.001} for d, v in res.items()}
    r = next_round(res, plan)
    assert r.done and r.next_seeds == {}
    status = {x.a: x.status for x in r.comparisons}
    assert status == {2: "separated", 4: "max seeds"}
    assert r.stopped[2].startswith("separated: 2 below 8") and r.stopped[4].startswith("max seeds")
    # equivalence: identical up to 0.1 point over 5 seeds, margin 1 point
    same = {0: {s: .5 + .01 * s for s in range(5)}, 1: {s: .5 + .01 * s + (.001 if s % 2 else -.001)
                                                         for s in range(5)}}
    r = next_round(same, Plan(min_seeds=3, max_seeds=10, margin=1.0, pairs=((1, 0),)))
    assert r.done and r.comparisons[0].status == "equivalent" and -0.01 < r.comparisons[0].sim_low
    assert next_round(same, Plan(min_seeds=3, max_seeds=10, pairs=((1, 0),))).next_seeds == {0: 5, 1: 5}


def test_failed_runs_count_as_run_and_plans_are_checked():
    r = next_round({0: {0: .5, 1: math.nan, 2: .52}, 1: {0: .6, 1: .61, 2: .62}},
                   Plan(min_seeds=3, max_seeds=4, pairs=((1, 0),)))
    assert r.comparisons[0].n == 2 and r.next_seeds == {0: 3, 1: 3}
    for bad in (dict(min_seeds=1), dict(min_seeds=5, max_seeds=4), dict(margin=0), dict(seeds=(0, 1), max_seeds=3)):
        with pytest.raises(CnnDepthError):
            Plan(**bad)
    with pytest.raises(CnnDepthError, match="not one of the combinations"):
        next_round({0: {0: .5, 1: .5, 2: .5}}, Plan(pairs=((0, 9),)))
    assert Plan(seeds=(7, 3, 5), max_seeds=2, min_seeds=2).order == (7, 3)


def test_summary_after_a_sequential_sweep_uses_the_confidence_sequences():
    from test_reports import frame, row

    from cnn_depth import summarize
    df = frame(*[row(d, k, 300 + 100 * d + k) for d in (2, 3) for k in range(5)])
    fixed, seq = summarize(df), summarize(df, plan=Plan())
    assert seq["interval"].tolist() == ["anytime t, n=5"] * 2 and fixed["interval"].tolist() == ["t, n=5"] * 2
    assert (seq["accuracy_high"] - seq["accuracy_low"] > fixed["accuracy_high"] - fixed["accuracy_low"]).all()
    assert seq["verdict"].tolist() == ["below best", "best"] and pd.notna(seq.loc[0, "p_adjusted"])
