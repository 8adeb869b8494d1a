"""Seeds until the answer is clear (cnn_depth.sequential): the group-sequential boundaries and the anytime
confidence sequence by hand, the rule's mechanics (in a grid too), and by simulation (seeded, seconds) its
error rate under optional stopping and its seeds against a fixed design of the same power."""
import math

import numpy as np
import pandas as pd
import pytest
from scipy import integrate
from scipy import stats as st

from cnn_depth import CnnDepthError
from cnn_depth.sequential import (ANYTIME, GROUP_SEQUENTIAL, Plan, anytime_p, critical_t, cumulative_t, gs_critical_t,
                                  gs_p, log_bf, next_round, null_maxima, plan_from_record, plan_record,
                                  sequential_interval, sequential_p, sweep_rounds)

pytestmark = pytest.mark.filterwarnings("error")
ANY = Plan(method=ANYTIME)


def test_bayes_factor_matches_its_integral_and_the_interval_inverts_it():
    # BF = ∫∫ N(x; δσ, σ²) N(δ; 0, g) / σ dδ dσ over ∫ N(x; 0, σ²) / σ dσ, integrated numerically
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
    low, high = sequential_interval(d, ANY)
    half = critical_t(5, 0.95, 4.0) * np.std(d, ddof=1) / math.sqrt(5)
    assert (low, high) == (pytest.approx(np.mean(d) - half), pytest.approx(np.mean(d) + half))
    assert (low > 0) == (anytime_p(d) <= 0.05) and sequential_p(d, ANY) == anytime_p(d)
    assert sequential_interval([0.1, 0.2], ANY) == (-1.0, 1.0)  # too few seeds for 95%: the whole range


def nominal(crit, n):
    """The fixed-n two-sided p-value of a |t| at n seeds."""
    return 2 * st.t.sf(crit, n - 1)


def test_group_sequential_boundaries_by_hand():
    plan = Plan()  # looks at 3..10 seeds, Wang-Tsiatis 0.25
    assert plan.method == GROUP_SEQUENTIAL
    crit = {n: gs_critical_t(n, 0.95, plan) for n in range(2, 12)}
    assert crit[2] == math.inf  # before the first look
    fixed = {n: st.t.ppf(0.975, n - 1) for n in range(3, 11)}
    assert all(crit[n] > fixed[n] for n in range(3, 11))  # wider than a fixed-n t: the price of 8 looks
    assert all(crit[n] > crit[n + 1] for n in range(3, 10))
    # Pocock: the same nominal level at every look, and 8 looks at it reject a null path 5% of the time
    pocock = Plan(shape=0.5)
    levels = [nominal(gs_critical_t(n, 0.95, pocock), n) for n in range(3, 11)]
    assert max(levels) == pytest.approx(min(levels), rel=1e-6) and 0.01 < levels[0] < 0.02
    # the boundary's z scale: z_n = c · (n/10)^(Δ - 1/2), one c for every look
    z = [st.norm.isf(nominal(crit[n], n) / 2) / (n / 10) ** (0.25 - 0.5) for n in range(3, 11)]
    assert max(z) == pytest.approx(min(z), rel=1e-6)
    # the p-value and the interval say the same; 1 and the whole range before the first look
    rng = np.random.default_rng(0)
    for n in (3, 4, 6, 10):
        for _ in range(30):
            d = rng.normal(0.01, 0.01, n)
            low, high = sequential_interval(d)
            half = crit[n] * np.std(d, ddof=1) / math.sqrt(n)
            assert (low, high) == (pytest.approx(np.mean(d) - half), pytest.approx(np.mean(d) + half))
            assert (low > 0 or high < 0) == (gs_p(d) <= 0.05)
    assert gs_p([0.1, 0.2]) == 1.0 and sequential_interval([0.1, 0.2]) == (-1.0, 1.0)
    assert gs_p([0.0, 0.0, 0.0]) == 1.0 and gs_p([0.02, 0.02, 0.02]) < 1e-5
    # more seeds than the plan's maximum (reports pooling folders): judged as if the plan had gone on
    assert crit[11] == gs_critical_t(11, 0.95, Plan(max_seeds=11)) and crit[11] < crit[10]
    table = null_maxima(3, 10, 0.25)
    assert len(table) == 1 << 19 and np.all(np.diff(table) >= 0) and table[0] >= 0


def t_paths(delta, sims, n_max, rng):
    """|t| after each of n_max N(delta, 1) paired differences; column n-1 is n seeds."""
    return np.abs(cumulative_t(rng.standard_normal((sims, n_max)) + delta))


def crossing(t, plan):
    """Per path: whether some look reaches the plan's 95% boundary, and the seeds it stopped at."""
    c = np.array([gs_critical_t(n, 0.95, plan) for n in range(plan.min_seeds, plan.max_seeds + 1)])
    cross = t[:, plan.min_seeds - 1:plan.max_seeds] >= c
    hit = cross.any(1)
    return hit, np.where(hit, cross.argmax(1) + plan.min_seeds, plan.max_seeds)


def test_with_no_difference_the_boundaries_separate_at_most_5_percent_whenever_the_sweep_stops():
    """100,000 null pairs, every look 3..10 taken: a crossing at *any* look is what optional stopping can
    turn into a claim; the boundaries keep it at 5% (and not far below: they use it)."""
    sims = 100_000
    for plan in (Plan(), Plan(shape=0.5), Plan(min_seeds=4, max_seeds=6)):
        hit, _ = crossing(t_paths(0.0, sims, plan.max_seeds, np.random.default_rng(1)), plan)
        assert 0.04 < hit.mean() <= 0.05 + 3 * math.sqrt(0.05 * 0.95 / sims), (plan, hit.mean())
    # peeking with the fixed-n t at the same looks: the error this method exists to prevent
    t = t_paths(0.0, sims, 10, np.random.default_rng(2))
    assert (t[:, 2:] > st.t.ppf(0.975, np.arange(3, 11) - 1)).any(1).mean() > 0.15


def draw_pair(rng, delta_points, n=10, noise=0.45):
    """A pair's accuracies [seed, side]: a shared seed effect (sd 1 point) and run noise; side 1 is
    ``delta_points`` higher."""
    return (56.8 + np.array([0.0, delta_points]) + rng.normal(0, 1, (n, 1)) + rng.normal(0, noise, (n, 2))) / 100


def test_the_rule_stops_where_the_boundaries_say_and_errs_in_at_most_5_percent_of_null_sweeps():
    rng = np.random.default_rng(21)
    plan = Plan(pairs=((1, 0),))
    sims, wrong = 1000, 0
    for _ in range(sims):
        table = draw_pair(rng, 0.0)
        results, rounds = sweep_rounds(lambda c, s: float(table[s, c]), [0, 1], plan)
        separated = rounds[-1].comparisons[0].status == "separated"
        wrong += separated
        d = table[:, 1] - table[:, 0]
        hit, stop = crossing(t_paths_of(d), plan)  # the same decision from the boundary table
        assert (separated, len(results[0])) == (bool(hit[0]), int(stop[0]))
    assert wrong / sims <= 0.05 + 3 * math.sqrt(0.05 * 0.95 / sims), wrong


def t_paths_of(d):
    """|t| after each seed of one sequence of differences, as t_paths gives it."""
    return np.abs(cumulative_t(np.asarray(d)))[None, :]


def test_equal_depths_with_holm_over_the_top_keep_the_family_wise_error():
    rng = np.random.default_rng(5)
    plan, sims, wrong = Plan(), 400, 0
    for _ in range(sims):
        table = (50 + rng.normal(0, 1, (10, 1)) + rng.normal(0, 1, (10, 4))) / 100
        _, rounds = sweep_rounds(lambda c, s: float(table[s, c]), range(4), plan)
        wrong += any(x.status == "separated" for x in rounds[-1].comparisons)
    assert wrong / sims <= 0.05 + 3 * math.sqrt(0.05 * 0.95 / sims), wrong  # 2.8% in the script's 2,000


def fixed_power(delta, n):
    """Exact power of the two-sided 95% fixed-n paired t (the noncentral t, integrated over the variance)."""
    tc, df, nc = st.t.ppf(0.975, n - 1), n - 1, delta * math.sqrt(n)
    return integrate.quad(lambda v: st.chi2.pdf(v, df) * (st.norm.sf(tc * math.sqrt(v / df) - nc)
                                                          + st.norm.cdf(-tc * math.sqrt(v / df) - nc)), 0, np.inf)[0]


def fixed_seeds_for(delta, power):
    """The fixed n (interpolated between whole seeds) with this power."""
    before = None
    for n in range(2, 60):
        p = fixed_power(delta, n)
        if p >= power:
            return n if before is None else n - 1 + (power - before) / (p - before)
        before = p


def test_fewer_seeds_than_a_fixed_design_of_the_same_power_where_that_is_true():
    """A named pair, 20,000 simulated sweeps per difference (delta: the difference over the paired sd). At
    the studies' 3 points on a paired sd of 2 (delta 1.5) the rule stops on about 6.6 seeds on average where
    a fixed design needs 8.7 for the same power; at DeeperCNN − SimpleCNN's 0.7 points on a paired sd of 1
    (delta 0.7) it does not: nothing with at most 10 seeds has much power there, and the rule runs on to the
    maximum. The former rule (anytime t) used more seeds than the fixed design at both."""
    rng = np.random.default_rng(7)
    sims = 20_000
    seeds = {}
    for delta in (0.7, 1.5):
        t = t_paths(delta, sims, 10, rng)
        hit, stop = crossing(t, Plan())
        fixed = fixed_seeds_for(delta, hit.mean())
        seeds[delta] = (stop.mean(), fixed)
        c = np.array([critical_t(n, 0.95, 4.0) for n in range(3, 11)])
        cross = t[:, 2:] >= c
        any_hit = cross.any(1)
        any_stop = np.where(any_hit, cross.argmax(1) + 3, 10).mean()
        assert any_stop > fixed_seeds_for(delta, any_hit.mean()), delta  # the anytime method: more
    rule, fixed = seeds[1.5]
    assert rule < fixed - 1.5, (rule, fixed)  # 6.6 vs 8.7
    rule, fixed = seeds[0.7]
    assert rule > fixed, (rule, fixed)  # 9.0 vs 8.3: not fewer, and said so in docs/reports.md


def test_in_a_study_group_the_rule_spends_fewer_runs_than_a_fixed_design_as_powerful():
    """degradation's bn family (depths 4 8 14 20, means and spread as recorded): the rule separates depths
    4, 14 and 20 from depth 8 in nearly every sweep on about 23 runs; a fixed design with more runs (6
    seeds a depth, 24 runs) separates depth 14 (4.5 points below) less often: 89% of these sweeps."""
    means, sds = np.array([49.53, 55.50, 51.00, 43.40]), np.array([1.47, 0.61, 1.97, 1.56])
    rng = np.random.default_rng(11)
    sims, runs, sep, fixed_sep = 200, [], np.zeros(4), np.zeros(4)
    from cnn_depth.stats import compare_to_best
    for _ in range(sims):
        table = (means + rng.normal(0, 1, (10, 1)) + rng.normal(0, 1, (10, 4)) * sds) / 100
        results, rounds = sweep_rounds(lambda c, s: float(table[s, c]), range(4), Plan())
        runs.append(sum(len(r) for r in results.values()))
        sep += [any(x.a == c and x.status == "separated" for x in rounds[-1].comparisons) for c in range(4)]
        v = compare_to_best({c: dict(enumerate(table[:6, c])) for c in range(4)})
        fixed_sep += [v[c].verdict == "below best" for c in range(4)]
    assert np.mean(runs) < 24
    assert sep[[0, 2, 3]].min() / sims > 0.97 and (sep - fixed_sep)[2] / sims > 0.05, (sep, fixed_sep)


def test_the_rule_runs_min_seeds_first_then_only_what_is_unresolved():
    plan = Plan(min_seeds=3, max_seeds=5, margin=1.0)
    r = next_round({2: {}, 4: {0: 0.5}, 8: {0: 0.6, 1: 0.6, 2: 0.6}}, plan)
    assert r.next_seeds == {2: 0, 4: 1} and not r.done and r.stopped == {8: "has its first seeds"}
    # depth 2 far below (26 points, spread 2): separated at the first look; 4 and 8 close: seed 3
    res = {2: {0: .30, 1: .31, 2: .29}, 4: {0: .55, 1: .57, 2: .54}, 8: {0: .56, 1: .55, 2: .57}}
    r = next_round(res, plan)
    assert r.top == 8 and r.next_seeds == {4: 3, 8: 3} and r.stopped[2].startswith("separated: 2 below 8")
    res = {d: {**v, 3: v[0] + 0.001, 4: v[1] - 0.001} for d, v in res.items()}
    r = next_round(res, plan)
    assert r.done and r.next_seeds == {}
    assert {x.a: x.status for x in r.comparisons} == {2: "separated", 4: "max seeds"}
    assert r.stopped[4].startswith("max seeds") and r.stopped[8].startswith("vs 2: separated")
    # equivalence: identical up to 0.1 point over 5 seeds, margin 1 point
    same = {0: {s: .5 + .01 * s for s in range(5)}, 1: {s: .5 + .01 * s + (.001 if s % 2 else -.001)
                                                         for s in range(5)}}
    r = next_round(same, Plan(min_seeds=3, max_seeds=10, margin=1.0, pairs=((1, 0),)))
    assert r.done and r.comparisons[0].status == "equivalent" and -0.01 < r.comparisons[0].sim_low
    assert next_round(same, Plan(min_seeds=3, max_seeds=10, pairs=((1, 0),))).next_seeds == {0: 5, 1: 5}


def test_in_a_grid_each_combination_has_its_own_top_and_only_unresolved_cells_go_on():
    """Cells (combination, depth): bn's depth 4 is far below its depth 8 (resolved); residual's depths are
    close (both go on); Holm within each combination; a pair named across combinations works too."""
    rng = np.random.default_rng(3)
    acc = {("bn", 4): 40, ("bn", 8): 55, ("residual", 4): 52, ("residual", 8): 52.3}
    res = {c: {s: (m + rng.normal(0, 0.3)) / 100 for s in range(4)} for c, m in acc.items()}
    r = next_round(res, Plan(grid=("arch",)), lambda c: c[0], lambda c: f"{c[0]}:{c[1]}")
    assert r.tops == {"bn": ("bn", 8), "residual": max([("residual", 4), ("residual", 8)],
                                                        key=lambda c: np.mean(list(res[c].values())))}
    assert r.top is None and set(r.next_seeds) == {("residual", 4), ("residual", 8)}
    assert r.stopped[("bn", 4)].startswith("separated: bn:4 below bn:8")
    assert r.stopped[("bn", 8)].startswith("vs bn:4: separated")
    pair = Plan(pairs=((("residual", 8), ("bn", 8)),), grid=("arch",))
    r = next_round(res, pair, name=lambda c: f"{c[0]}:{c[1]}")
    assert r.comparisons[0].status == "separated" and r.stopped[("residual", 8)].startswith(
        "separated: residual:8 below bn:8")
    assert r.stopped[("bn", 4)] == "in no comparison"
    back = plan_from_record(plan_record(pair))
    assert back == pair and back.pairs == ((("residual", 8), ("bn", 8)),)
    # a record from before the group-sequential method (no method key) is the anytime method's
    old = {k: v for k, v in plan_record(Plan()).items() if k not in ("method", "shape", "grid")}
    assert plan_from_record(old).method == ANYTIME


def test_failed_runs_count_as_run_and_plans_are_checked():
    r = next_round({0: {0: .5, 1: math.nan, 2: .52}, 1: {0: .6, 1: .61, 2: .62}},
                   Plan(min_seeds=3, max_seeds=4, pairs=((1, 0),)))
    assert r.comparisons[0].n == 2 and r.next_seeds == {0: 3, 1: 3}
    for bad in (dict(min_seeds=1), dict(min_seeds=5, max_seeds=4), dict(margin=0), dict(seeds=(0, 1), max_seeds=3),
                dict(method="bayes"), dict(shape=0.7)):
        with pytest.raises(CnnDepthError):
            Plan(**bad)
    with pytest.raises(CnnDepthError, match="not one of the combinations"):
        next_round({0: {0: .5, 1: .5, 2: .5}}, Plan(pairs=((0, 9),)))
    assert Plan(seeds=(7, 3, 5), max_seeds=2, min_seeds=2).order == (7, 3)


def test_summary_after_a_sequential_sweep_uses_the_repeated_confidence_intervals():
    from test_reports import frame, row

    from cnn_depth import format_summary, summarize
    df = frame(*[row(d, k, 300 + 100 * d + k) for d in (2, 3) for k in range(5)])
    fixed, seq, anytime = summarize(df), summarize(df, plan=Plan()), summarize(df, plan=ANY)
    assert seq["interval"].tolist() == ["group-sequential t, n=5"] * 2 and fixed["interval"].tolist() == ["t, n=5"] * 2
    assert anytime["interval"].tolist() == ["anytime t, n=5"] * 2
    width = {k: (s["accuracy_high"] - s["accuracy_low"]) for k, s in (("t", fixed), ("gs", seq), ("any", anytime))}
    assert (width["gs"] > width["t"]).all() and (width["any"] > width["gs"]).all()
    assert seq["verdict"].tolist() == ["below best", "best"] and pd.notna(seq.loc[0, "p_adjusted"])
    text = format_summary(seq)
    assert "group-sequential t (repeated confidence interval)" in text and "method: group-sequential t:" in text
    assert "Wang-Tsiatis Δ=0.25 boundaries at seeds 3-10" in seq["seeds_rule"].iloc[0]
