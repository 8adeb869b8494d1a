"""`cnn-depth sweep --seeds auto` (issue 21, the driver side): real tiny sweeps run in rounds by
cnn_depth.sequential's rule, resumed, extended, interrupted and reported; its bad options."""
import json

import pandas as pd
import pytest
from fastai.callback.core import Callback
from typer.testing import CliRunner

from cnn_depth import SweepInterrupted, run_sweep
from cnn_depth.cli import app
from cnn_depth.config import SweepConfig
from cnn_depth.sequential import Plan, next_round

runner = CliRunner()
TINY = ["--epochs", "1", "--max-per-class", "8", "--bs", "16", "--device", "cpu", "--quiet", "--workers", "1",
        "--threads", "1"]
AUTO = ["--depths", "1", "4", "--seeds", "auto", "--min-seeds", "3"]
REASONS = ("separated", "equivalent", "max seeds", "vs 1: separated", "vs 1: equivalent", "vs 1: max seeds",
           "vs 4: separated", "vs 4: equivalent", "vs 4: max seeds")


def sweep(out, *args):
    return runner.invoke(app, ["sweep", *AUTO, *args, *TINY, "--out", str(out)])


def seeds_of(out) -> dict:
    df = pd.read_csv(out / "results.csv")
    return {int(d): sorted(g["seed"].astype(int)) for d, g in df.groupby("depth")}


def rule_results(out) -> dict:
    df = pd.read_csv(out / "results.csv")
    return {int(d): dict(zip(g["seed"].astype(int), g["accuracy"].astype(float))) for d, g in df.groupby("depth")}


@pytest.fixture(scope="module")
def auto(tmp_path_factory):
    """`--depths 1 4 --seeds auto --min-seeds 3 --max-seeds 5`, run once for this module (about 10 s)."""
    out = tmp_path_factory.mktemp("auto") / "sweep"
    r = sweep(out, "--max-seeds", "5")
    return out, r, seeds_of(out), pd.read_csv(out / "summary.csv", keep_default_na=False)


@pytest.mark.slow
def test_an_adaptive_sweep_runs_min_seeds_then_rounds_until_the_rule_stops(auto):
    out, r, seeds, summary = auto
    assert r.exit_code == 0, r.output
    for depth, ran in seeds.items():
        assert 3 <= len(ran) <= 5 and ran == list(range(len(ran))), (depth, ran)  # the plan's order, a prefix
    # the rule, run again on the recorded rows, asks for nothing more: the sweep stopped where it says
    assert next_round(rule_results(out), Plan(min_seeds=3, max_seeds=5)).done
    assert summary["depth"].tolist() == [1, 4]
    assert summary["interval"].str.startswith("group-sequential t, n=").all()
    for row in summary.itertuples():
        assert row.stopped.startswith(REASONS), row.stopped
        assert row.runs == len(seeds[row.depth])
        if "max seeds" in row.stopped:
            assert row.runs == 5
    assert summary["seeds_rule"].eq("seeds until the answer is clear: 3-5 per depth, each depth with the best, no "
                                    "equivalence margin, 95% family-wise; group-sequential t, Wang-Tsiatis Δ=0.25 "
                                    "boundaries at seeds 3-5").all()
    # the printed table says how many seeds each depth got, why it stopped, and the method with its assumptions
    for depth, ran in seeds.items():
        assert f"    depth {depth}: {len(ran)} seeds (0-{len(ran) - 1}), " in r.output
    assert "95% repeated confidence interval over seeds (group-sequential, --seeds auto)" in r.output
    assert "method: group-sequential t" in r.output and "assume independent seeds" in r.output
    meta = json.loads((out / "sweep.json").read_text())
    assert meta["invocations"][-1]["plan"]["max_seeds"] == 5 and meta["invocations"][-1]["seeds"] == "auto"
    assert meta["invocations"][-1]["plan"]["method"] == "group-sequential t"
    assert meta["config"]["seeds"] == [0, 1, 2, 3, 4] and meta["config"]["min_seeds"] == 3


@pytest.mark.slow
def test_a_rerun_adds_nothing_and_a_higher_max_seeds_continues(auto, tmp_path):
    out, _, seeds, summary = auto
    rows = len(pd.read_csv(out / "results.csv"))
    again = sweep(out, "--max-seeds", "5")
    assert again.exit_code == 0 and len(pd.read_csv(out / "results.csv")) == rows
    assert (pd.read_csv(out / "summary.csv", keep_default_na=False)["stopped"] == summary["stopped"]).all()
    more = sweep(out, "--max-seeds", "6")
    assert more.exit_code == 0, more.output
    grown = seeds_of(out)
    for depth, ran in grown.items():
        assert ran[:len(seeds[depth])] == seeds[depth] and len(ran) <= 6
        if summary.set_index("depth").loc[depth, "stopped"].startswith(("max seeds", "vs 1: max seeds",
                                                                          "vs 4: max seeds")):
            assert len(ran) > len(seeds[depth]), (depth, ran)  # what stopped at the old maximum went on
    assert next_round(rule_results(out), Plan(min_seeds=3, max_seeds=6)).done
    assert pd.read_csv(out / "summary.csv")["seeds_rule"].str.contains("3-6 per depth").all()


@pytest.mark.slow
def test_report_on_the_folder_uses_the_sequential_intervals(auto, tmp_path):
    out = auto[0]
    r = runner.invoke(app, ["report", str(out), "--out", str(tmp_path / "rep")])
    assert r.exit_code == 0, r.output
    summary = pd.read_csv(tmp_path / "rep" / "summary.csv", keep_default_na=False)
    mine = pd.read_csv(out / "summary.csv", keep_default_na=False)
    assert summary["interval"].str.startswith("group-sequential t").all()
    cols = ["accuracy_low", "accuracy_high", "diff_low", "diff_high", "stopped", "seeds_rule", "verdict"]
    assert summary[cols].astype(str).equals(mine[cols].astype(str))
    assert "seeds until the answer is clear" in r.output and "method: group-sequential t" in r.output


@pytest.mark.slow
def test_a_named_pair_with_a_margin_stops_as_equivalent(tmp_path):
    # at chance (8 images a class, 1 epoch) depths 1 and 4 differ by a few points: within ±10 they are
    # equivalent as soon as the interval can say so (3 seeds: [-15, +17] points; 4 seeds: [-5, +7])
    r = sweep(tmp_path / "pair", "--max-seeds", "6", "--compare", "bn:4", "1", "--margin", "10")
    assert r.exit_code == 0, r.output
    assert seeds_of(tmp_path / "pair") == {1: [0, 1, 2, 3], 4: [0, 1, 2, 3]}
    stopped = pd.read_csv(tmp_path / "pair" / "summary.csv").set_index("depth")["stopped"]
    assert stopped[4].startswith("equivalent: 4 − 1 within ±10 points") and stopped[1].startswith("vs 4: equivalent")
    assert "depth 4 vs depth 1, equivalent within ±10 points" in r.output


@pytest.mark.slow
def test_ctrl_c_in_a_later_round_keeps_the_rows_and_a_rerun_continues(tmp_path):
    kw = dict(depths=[1, 4], seeds="auto", min_seeds=3, max_seeds=4, epochs=1, max_per_class=8, bs=16,
              device="cpu", quiet=True, threads=1, workers=1, out=str(tmp_path / "x"))
    seen = []  # the Learners themselves: an id() of a freed one can come back for the next run's

    class Cut(Callback):
        def before_fit(self):  # a Learner per run (numbered as the sweep starts them)
            if not any(learn is self.learn for learn in seen):
                seen.append(self.learn)
            if len(seen) == 8:  # the second run of round 2: depth 4, seed 3
                raise KeyboardInterrupt("SIGINT")

    with pytest.raises(SweepInterrupted, match=r"during run 8/8 \(bn-d4-s3\); 7 finished run\(s\) are saved"):
        run_sweep(cbs=[Cut()], **kw)
    assert seeds_of(tmp_path / "x") == {1: [0, 1, 2, 3], 4: [0, 1, 2]}
    df = run_sweep(**kw)
    assert sorted(df.loc[df["depth"] == 4, "seed"]) == [0, 1, 2, 3]  # the cut-short run, and nothing else
    assert len(df) == 8 and df.attrs["summary"]["interval"].str.startswith("group-sequential t").all()


def test_toml_seeds_auto_and_its_options(tmp_path):
    toml = tmp_path / "auto.toml"
    toml.write_text('depths = [2, 8, 20]\nseeds = "auto"\nmin-seeds = 4\nmax_seeds = 8\nmargin = 1\n'
                    'compare = ["bn:20", "bn:8"]\n')
    cfg = SweepConfig.from_toml(toml)
    assert cfg.seeds == "auto" and cfg.compare == ["bn:20", "bn:8"] and cfg.margin == 1.0
    assert cfg.plan() == Plan(min_seeds=4, max_seeds=8, margin=1.0, pairs=((20, 8),))
    assert cfg.default_out_name() == "cifar10-sample-bn-d2_8_20-sauto-e5"  # one folder whatever --max-seeds
    assert SweepConfig(depths=[20, 8], seeds="auto", compare=["20", "8"]).compare == ["bn:20", "bn:8"]
    assert SweepConfig(seeds=[0, 1]).plan() is None


GRID = ["--arch", "bn", "residual", "--depths", "1", "4", "--seeds", "auto", "--min-seeds", "3"]


def grid_sweep(out, *args, quiet=True):
    tiny = TINY if quiet else [a for a in TINY if a != "--quiet"]
    return runner.invoke(app, ["sweep", *GRID, *args, *tiny, "--out", str(out)])


def cells_of(out) -> dict:
    """{(arch, depth): {seed: accuracy}}: a grid over arch, as the rule keys its cells."""
    df = pd.read_csv(out / "results.csv")
    return {(a, int(d)): dict(zip(g["seed"].astype(int), g["accuracy"].astype(float)))
            for (a, d), g in df.groupby(["arch", "depth"])}


@pytest.fixture(scope="module")
def grid_auto(tmp_path_factory):
    """`--arch bn residual --depths 1 4 --seeds auto --min-seeds 3 --max-seeds 4`, once (about 10 s)."""
    out = tmp_path_factory.mktemp("grid") / "sweep"
    r = grid_sweep(out, "--max-seeds", "4", quiet=False)  # with its sweep:, round and rounds lines
    return out, r


@pytest.mark.slow
def test_a_grid_adds_seeds_in_shared_rounds_to_the_cells_each_combination_needs(grid_auto, tmp_path):
    out, r = grid_auto
    assert r.exit_code == 0, r.output
    cells = cells_of(out)
    assert set(cells) == {("bn", 1), ("bn", 4), ("residual", 1), ("residual", 4)}
    for cell, runs in cells.items():
        assert 3 <= len(runs) <= 4 and sorted(runs) == list(range(len(runs))), cell
    plan = Plan(min_seeds=3, max_seeds=4, grid=("arch",))
    assert next_round(cells, plan, lambda c: c[0]).done  # each combination's depths with its own top
    assert "seeds so far 0 in each of the 4 cells (combination:depth); round 1: 12 runs" in r.output
    assert "3-4 per combination and depth, each depth with the best of its combination" in r.output
    assert "rounds: done after" not in r.output or all(f"{a}:{d} {len(cells[(a, d)])} seeds" in r.output
                                                     for a, d in cells)
    meta = json.loads((out / "sweep.json").read_text())
    assert meta["invocations"][-1]["plan"]["grid"] == ["arch"] and meta["config"]["arch"] == ["bn", "residual"]
    summary = pd.read_csv(out / "summary.csv", keep_default_na=False)
    assert summary[["group", "depth"]].values.tolist() == [["bn", 1], ["bn", 4], ["residual", 1], ["residual", 4]]
    reasons = ("separated", "equivalent", "max seeds", "vs bn:1: ", "vs bn:4: ", "vs residual:1: ", "vs residual:4: ")
    for row in summary.itertuples():
        assert row.stopped.startswith(reasons) and row.runs == len(cells[(row.group, row.depth)]), row
        assert "residual" not in row.stopped if row.group == "bn" else "bn:" not in row.stopped  # within its own
    assert summary["seeds_rule"].str.contains("95% family-wise per combination").all()
    # the same on a rerun (nothing to add), and `report` on the folder says the same
    again = grid_sweep(out, "--max-seeds", "4")
    assert again.exit_code == 0 and cells_of(out) == cells
    rep = runner.invoke(app, ["report", str(out), "--out", str(tmp_path / "rep")])
    assert rep.exit_code == 0, rep.output
    mine = pd.read_csv(tmp_path / "rep" / "summary.csv", keep_default_na=False)
    assert mine["stopped"].tolist() == summary["stopped"].tolist()
    # a lower --max-seeds than a cell already has: one line, nothing changed
    low = grid_sweep(out, "--max-seeds", "3")
    if max(len(v) for v in cells.values()) == 4:
        assert low.exit_code == 2 and "--max-seeds 3 is below the 4 seeds" in low.stderr, low.output
        assert len(low.stderr.strip().splitlines()) == 1 and cells_of(out) == cells


@pytest.mark.slow
def test_a_grid_extended_with_a_higher_max_seeds_continues_what_stopped_at_the_maximum(grid_auto):
    out, _ = grid_auto
    before = cells_of(out)
    more = grid_sweep(out, "--max-seeds", "5")
    assert more.exit_code == 0, more.output
    after = cells_of(out)
    stopped = pd.read_csv(out / "summary.csv").set_index(["group", "depth"])["stopped"]
    assert next_round(after, Plan(min_seeds=3, max_seeds=5, grid=("arch",)), lambda c: c[0]).done
    for cell, runs in after.items():
        assert list(runs)[:len(before[cell])] == list(before[cell]) and len(runs) <= 5
    grew = [c for c in after if len(after[c]) > len(before[c])]
    assert grew, "a cell at the old maximum unresolved goes on"
    if len(grew) < 4:  # only the cells whose comparison was open
        assert any(len(after[c]) == len(before[c]) for c in after)
    assert stopped.index.tolist() == [("bn", 1), ("bn", 4), ("residual", 1), ("residual", 4)]


@pytest.mark.slow
def test_compare_names_cells_of_two_combinations(tmp_path):
    out = tmp_path / "pair"
    r = grid_sweep(out, "--max-seeds", "5", "--compare", "residual:4", "bn:4", "--margin", "10")
    assert r.exit_code == 0, r.output
    cells = cells_of(out)
    assert len(cells[("bn", 1)]) == len(cells[("residual", 1)]) == 3  # not in the pair: their first seeds only
    plan = Plan(min_seeds=3, max_seeds=5, margin=10.0, pairs=((("residual", 4), ("bn", 4)),), grid=("arch",))
    assert next_round(cells, plan).done
    stopped = pd.read_csv(out / "summary.csv").set_index(["group", "depth"])["stopped"]
    assert stopped[("bn", 1)] == "not in the compared pair: its first seeds only"
    assert stopped[("residual", 4)].startswith(("separated: residual:4", "equivalent: residual:4 − bn:4",
                                                "max seeds"))
    assert stopped[("bn", 4)].startswith("vs residual:4: ")
    assert "residual:4 vs bn:4, equivalent within ±10 points" in r.output


def test_toml_and_the_command_line_name_grid_cells(tmp_path):
    toml = tmp_path / "grid.toml"
    toml.write_text('arch = ["bn", "residual"]\nlr = [1e-3, 3e-3]\ndepths = [4, 8]\nseeds = "auto"\n'
                    'compare = ["residual,lr=0.001:8", "bn,lr=1e-3:8"]\n')
    cfg = SweepConfig.from_toml(toml)
    assert cfg.compare == ["bn,lr=0.001:8", "residual,lr=0.001:8"][::-1]
    assert cfg.plan() == Plan(pairs=((("residual,lr=0.001", 8), ("bn,lr=0.001", 8)),), grid=("lr", "arch"))
    assert cfg.cell_names() == ["bn,lr=0.001", "residual,lr=0.001", "bn,lr=0.003", "residual,lr=0.003"]
    assert cfg.default_out_name() == "cifar10-sample-bn_residual-d4_8-sauto-e5-lr0.001_0.003"
    # the command line gathers the values of --compare with commas: a cell ends at its :DEPTH
    from cnn_depth.config import parse_compare
    assert parse_compare("residual,lr=0.001:8,bn,lr=0.001:8") == ["residual,lr=0.001:8", "bn,lr=0.001:8"]
    assert parse_compare("20,8") == ["20", "8"] and parse_compare("bn:20,bn:8") == ["bn:20", "bn:8"]
    aug = SweepConfig(augment=[True, False], depths=[2], seeds="auto", compare=["augment=on:2", "off:2"])
    assert aug.compare == ["bn,augment=on:2", "bn,augment=off:2"]


def test_the_reports_name_a_grids_cells_as_the_sweep_does(tmp_path):
    """summary.csv's stopped column for a grid over lr, bs, augment and compile: the rule run on rows read
    back from results.csv, each group named by its values as SweepConfig.cell_names names the combination."""
    from cnn_depth.records import RESULT_COLUMNS, read_results, write_rows
    from cnn_depth.reports import summarize
    from cnn_depth.run import new_row

    cfg = SweepConfig(lr=[1e-3, 3e-3], bs=[16, 32], augment=[True, False], compile=[True, False], depths=[1, 2],
                      seeds="auto", max_seeds=4)
    rows = []
    for i, c in enumerate(cfg.combinations()):
        for depth in (1, 2):
            for seed in range(3):
                correct = 10 + 5 * depth + (i + seed) % 3  # depth 2 a little higher; cells differ
                r = new_row(c, depth, seed, 1, "cpu", "fp32", c.run_tag(cfg.varying()))
                r.update(status="ok", correct=correct, valid_images=100, accuracy=correct / 100,
                         error_rate=1 - correct / 100, lr=c.lr, epochs_done=c.epochs, train_loss=1.0, valid_loss=1.0,
                         params=634 * depth, macs=1000 * depth, classes=10)
                rows.append(r)
    write_rows(tmp_path / "results.csv", RESULT_COLUMNS, rows)
    summary = summarize(read_results(tmp_path / "results.csv"), plan=cfg.plan())
    names = cfg.cell_names()
    assert len(names) == 16 and names[0] == "bn,lr=0.001,bs=16,augment=on,compile=on"
    stopped = summary.set_index(["group", "depth"])["stopped"]
    for group, name in zip(dict.fromkeys(summary["group"]), names):  # depth 2 is 5 points above in every seed
        assert stopped[(group, 1)].startswith(f"separated: {name}:1 below {name}:2 "), (group, name)
        assert stopped[(group, 2)].startswith(f"vs {name}:1: separated"), (group, name)


def bad_cases(tmp_path):
    toml = tmp_path / "bad.toml"
    toml.write_text('seeds = "auto"\nmin_seeds = 5\nmax_seeds = 4\n')
    return [
        (["--seeds", "auto", "--min-seeds", "4", "--max-seeds", "3"],
         "--max-seeds 3 is below --min-seeds 4; give --max-seeds 4 or more"),
        (["--seeds", "auto", "--min-seeds", "1"], "min_seeds must be a whole number ≥ 2, got 1 (one seed has no spread"),
        (["--depths", "1", "4", "--seeds", "auto", "--compare", "9", "4"],
         "--compare 9: depth 9 is not in this sweep (--depths 1 4); name two of its depths"),
        (["--depths", "1", "4", "--seeds", "auto", "--compare", "residual:1", "bn:4"],
         "--compare residual:1: arch residual is not in this sweep (--arch bn)"),
        (["--depths", "1", "4", "--seeds", "auto", "--compare", "4"], "--compare names a pair"),
        (["--seeds", "auto", "--margin", "-1"], "margin is in accuracy points and must be above 0, e.g. --margin 0.5"),
        (["--seeds", "auto", "--margin", "0"], "margin is in accuracy points and must be above 0"),
        (["--seeds", "0-2", "--margin", "1"], "--margin works with --seeds auto only"),
        (["--seeds", "0-2", "--max-seeds", "5"], "--max-seeds works with --seeds auto only"),
        (["--seeds", "autoo"], "seeds: 'autoo' is not a whole number or a range"),
        (["--config", str(toml)], "--max-seeds 4 is below --min-seeds 5"),
        ([*GRID, "--compare", "plain:4", "bn:4"], "--compare plain:4: arch plain is not in this sweep (--arch bn "
                                                  "residual)"),
        ([*GRID, "--compare", "4", "1"], "--compare 4 names 2 combinations of the grid; add the value of arch, e.g. "
                                         "--compare bn:4"),
        ([*GRID, "--lr", "1e-3", "3e-3", "--compare", "residual:4", "bn,lr=0.001:4"],
         "--compare residual:4 names 2 combinations of the grid; add the value of lr"),
        ([*GRID, "--lr", "1e-3", "3e-3", "--compare", "bn,lr=0.01:4", "bn,lr=0.001:4"],
         "--compare bn,lr=0.01:4: lr 0.01 is not in this sweep (--lr 0.001 0.003)"),
        ([*GRID, "--compare", "residual:4", "bn:9"], "--compare bn:9: depth 9 is not in this sweep (--depths 1 4)"),
        ([*GRID, "--compare", "residual,epochs=9:4", "bn:4"], "--compare residual,epochs=9:4: epochs 9 is not in "
                                                              "this sweep (--epochs does not vary here)"),
        (["--arch", "bn", "residual", "--depths", "1-100", "--seeds", "auto", "--max-seeds", "60"],
         "2 archs × 100 depths × 60 seeds (--max-seeds) is 12,000 runs, over 10,000"),
    ]


def test_bad_auto_options_are_one_line_exit_2_and_write_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for args, message in bad_cases(tmp_path):
        r = runner.invoke(app, ["sweep", *args, "--out", str(tmp_path / "out")])
        lines = r.stderr.strip().splitlines()
        assert r.exit_code == 2, (args, r.output)
        assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], (args, r.output)
        assert not (tmp_path / "out").exists() and not (tmp_path / "runs").exists()
