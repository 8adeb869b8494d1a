"""Summaries and plots from results.csv alone: groups, statistics over seeds, verdicts, comparisons, bad files."""
import json
import math
import shutil
import warnings

import pandas as pd
import pytest
from matplotlib.collections import LineCollection
from scipy import stats as st

from cnn_depth import CnnDepthError, report, summarize
from cnn_depth.plots import accuracy_figure, curves_figure
from cnn_depth.records import RESULT_COLUMNS, RowWarning, read_history
from cnn_depth.reports import SUMMARY_COLUMNS, format_summary, group_labels, label_runs, load_results, write_reports

VALID = 1000  # validation images of every fake run below


def row(depth, seed, correct, status="ok", arch="bn", **settings):
    """One results.csv row as a sweep writes it: accuracy = correct / VALID."""
    r = dict.fromkeys(RESULT_COLUMNS, "")
    r.update(run_id=f"{arch}-d{depth}-s{seed}", dataset="toy", arch=arch, depth=depth, seed=seed, source="/data/toy",
             epochs=2, lr_setting=3e-3, lr=3e-3, bs=16, max_per_class="", pipeline="fast", augment=False, threads=2,
             params=100 * depth, macs=1000 * depth, train_images=96, train_seconds=2.0 * depth,
             images_per_second=48 / depth, valid_seconds=0.1, peak_memory_mb=900 + depth, train_loss=1.2,
             valid_loss=1.3, classes=10, valid_images=VALID, epochs_done=2, device="cpu", precision="fp32",
             status=status, finished="2025-01-01T00:00:00+00:00")
    if status == "ok":
        r.update(correct=correct, accuracy=correct / VALID, error_rate=1 - correct / VALID)
    else:
        r.update(error="boom", train_loss=math.nan)
    r.update(settings)
    return r


def frame(*rows):
    return pd.DataFrame(list(rows))


def write_sweep(folder, rows, config=None):
    """A sweep folder as a sweep leaves it: results.csv, and sweep.json with its config."""
    folder.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_csv(folder / "results.csv", index=False)
    if config is not None:
        (folder / "sweep.json").write_text(json.dumps({"config": config, "environment": {"torch_threads": 2}}))
    return folder / "results.csv"


# depth 2: 3 seeds; depth 3: 2 ok seeds and a failed one; depth 4: diverged only; plain: one seed
RESULTS = frame(row(2, 0, 500), row(2, 1, 600), row(2, 2, 550), row(3, 0, 700), row(3, 1, 720),
                row(3, 2, 0, "failed"), row(4, 0, 0, "diverged"), row(2, 0, 400, arch="plain"))


def test_summary_statistics_over_seeds_match_a_hand_computation():
    s = summarize(RESULTS)
    assert list(s.columns) == SUMMARY_COLUMNS
    assert s[["arch", "depth", "runs", "not_ok", "seeds"]].values.tolist() == [
        ["bn", 2, 3, 0, "0-2"], ["bn", 3, 2, 1, "0-1"], ["bn", 4, 0, 1, ""], ["plain", 2, 1, 0, "0"]]
    d2 = s.iloc[0]
    # 0.5, 0.6, 0.55: mean 0.55, s = 0.05, t(0.975, 2) = 4.302653 (tables): half-width 4.302653 * 0.05 / sqrt(3)
    assert (d2.accuracy_mean, d2.accuracy_std) == (pytest.approx(0.55), pytest.approx(0.05))
    half = 4.302653 * 0.05 / math.sqrt(3)
    assert (d2.accuracy_low, d2.accuracy_high) == (pytest.approx(0.55 - half, abs=1e-6),
                                                   pytest.approx(0.55 + half, abs=1e-6))
    assert d2.interval == "t, n=3" and d2.confidence == 0.95
    # one seed: Wilson over its 1000 images, 400 correct (scipy's binomtest, checked in test_stats by formula)
    plain = s.iloc[3]
    ci = st.binomtest(400, VALID).proportion_ci(method="wilson")
    assert (plain.accuracy_low, plain.accuracy_high) == (pytest.approx(ci.low), pytest.approx(ci.high))
    assert plain.interval == "Wilson, 1 seed, 1000 images" and math.isnan(plain.accuracy_std)
    assert s.loc[2, "params"] == 400 and math.isnan(s.loc[2, "accuracy_mean"])  # known though no run finished
    assert s.loc[0, "train_seconds_mean"] == 4.0 and s.loc[0, "macs"] == 2000 and s.loc[0, "peak_memory_mb"] == 902


def test_verdicts_pair_by_seed_and_star_only_a_separated_best():
    s = summarize(RESULTS).set_index(["arch", "depth"])
    # bn depth 2 - 3 on the shared seeds 0 and 1: -0.2, -0.12: mean -0.16, s = 0.0565685, t(0.975, 1) = 12.7062
    d2 = s.loc[("bn", 2)]
    assert d2.paired_seeds == 2 and d2.diff_to_best == pytest.approx(-0.16)
    assert d2.diff_high == pytest.approx(-0.16 + 12.7062 * 0.0565685 / math.sqrt(2), abs=1e-4)
    assert d2.verdict == "tied with best"  # the interval holds 0: two seeds cannot separate them
    assert d2.prob_improvement == pytest.approx(0.0)  # every run of depth 2 is below every run of depth 3
    assert s.loc[("bn", 3), "verdict"] == "highest mean" and not s["best"].any()
    assert s.loc[("bn", 4), "verdict"] == "no finished run"
    assert s.loc[("plain", 2), "verdict"] == "only depth"
    assert s.loc[("bn", 2), "note"] == "2 seeds: not enough to separate depths 2 and 3"
    # with five clearly separated seeds the claim holds: a star, and the note says on what it rests
    clear = summarize(frame(*[row(d, k, 500 + 100 * d + k) for d in (2, 3) for k in range(5)]))
    assert clear["verdict"].tolist() == ["below best", "best"] and clear["best"].tolist() == [False, True]
    assert clear.loc[1, "note"] == ("depth 3 best: above every other depth (5 seeds, paired t, 95% family-wise, "
                                    "Holm step-down)")


def test_printed_table_shows_the_summary_numbers_and_notes():
    s = summarize(RESULTS)
    text = format_summary(s)
    lines = text.splitlines()
    assert lines[0].startswith("bn   (toy · from /data/toy · 2 ep · lr 0.003")  # only the arch differs
    d2 = next(line for line in lines if line.lstrip().startswith("2    3"))
    assert f"{s.loc[0, 'accuracy_mean']:.4f}" in d2 and f"[{s.loc[0, 'accuracy_low']:.4f}, " in d2
    assert f"{s.loc[0, 'diff_to_best']:+.4f}" in d2 and "tied with best" in d2
    assert "  note: 2 seeds: not enough to separate depths 2 and 3" in lines
    assert any("highest mean" in line and "(1 not ok)" in line for line in lines)
    assert "intervals: accuracy: 95% t interval over seeds; vs best: paired by seed" in text
    assert "95% Wilson interval over the validation images (1 seed: not training noise)" in text  # plain: one seed
    assert " * " not in text and "<- best" not in text  # no star: nothing is separated


# --- groups: the three cases of issue #13 --------------------------------------------------------------------



def test_fixed_lr_and_lr_find_are_two_groups_not_four_seeds(tmp_path):
    fixed = [row(d, k, 400 + 50 * d + 10 * k) for d in (2, 3) for k in (0, 1)]
    found = [row(d, k, 420 + 50 * d + 10 * k, lr_setting="find", lr=1e-3 * d) for d in (2, 3) for k in (0, 1)]
    a = write_sweep(tmp_path / "fixed", fixed, dict(lr=3e-3))
    b = write_sweep(tmp_path / "find", found, dict(lr="find"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing is a duplicate
        s = report([a, b], out=tmp_path / "cmp")
    assert s[["group", "depth", "runs"]].values.tolist() == [
        ["bn · lr 0.003", 2, 2], ["bn · lr 0.003", 3, 2], ["bn · lr find", 2, 2], ["bn · lr find", 3, 2]]
    assert "bn · lr find   (toy · from /data/toy · 2 ep · bs 16" in format_summary(s)


def test_augment_and_no_augment_are_two_groups_and_nothing_is_dropped(tmp_path):
    plain = [row(d, 0, 400 + d) for d in (2, 3)]
    aug = [row(d, 0, 450 + d, augment=True) for d in (2, 3)]
    a = write_sweep(tmp_path / "a", plain, dict(augment=False))
    b = write_sweep(tmp_path / "b", aug, dict(augment=True))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        s = report([a, b], out=tmp_path / "cmp")
    assert s["group"].tolist() == ["bn · no augment"] * 2 + ["bn · augment"] * 2
    assert s["runs"].tolist() == [1, 1, 1, 1] and s["accuracy_mean"].tolist() == [0.402, 0.403, 0.452, 0.453]


def test_max_per_class_sweeps_keep_their_rows_and_their_own_best(tmp_path):
    # 50 per class: depth 3 is best; 100 per class (twice the data): depth 2 is higher than anything at 50
    small = [row(d, k, {2: 400, 3: 500}[d] + k) for d in (2, 3) for k in range(4)]
    big = [row(d, k, {2: 600, 3: 550}[d] + 3 * k, max_per_class=100) for d in (2, 3) for k in range(4)]
    for r in small:
        r["max_per_class"] = 50
    a = write_sweep(tmp_path / "m50", small, dict(max_per_class=50))
    b = write_sweep(tmp_path / "m100", big, dict(max_per_class=100))
    s = report([a, b], out=tmp_path / "cmp")
    assert s["group"].tolist() == ["bn · 50/class"] * 2 + ["bn · 100/class"] * 2
    assert s["runs"].tolist() == [4, 4, 4, 4]
    best = s[s["best"]]
    assert best[["group", "depth"]].values.tolist() == [["bn · 50/class", 3], ["bn · 100/class", 2]]


def test_same_settings_in_two_folders_pool_their_seeds(tmp_path):
    a = write_sweep(tmp_path / "a", [row(2, k, 500 + k) for k in (0, 1)], {})
    b = write_sweep(tmp_path / "b", [row(2, k, 500 + k) for k in (2, 3)], {})
    s = report([a, b], out=tmp_path / "cmp")
    assert s[["runs", "seeds"]].values.tolist() == [[4, "0-3"]] and s.loc[0, "interval"] == "t, n=4"


def test_a_run_found_twice_is_counted_once(tmp_path):
    a = write_sweep(tmp_path / "a", RESULTS.to_dict("records"), {})
    b = tmp_path / "b" / "results.csv"
    b.parent.mkdir()
    shutil.copy(a, b)
    with pytest.warns(RowWarning, match=r"8 run\(s\) appear more than once with the same settings, depth and seed "
                                        r"\(first: bn-d2-s0 in .*a/results.csv and .*b/results.csv\)"):
        s = report([a, b], out=tmp_path / "cmp")
    assert s["runs"].tolist() == [3, 2, 0, 1]
    assert report([a, a], out=tmp_path / "cmp")["runs"].tolist() == [3, 2, 0, 1]  # same path given twice
    assert (tmp_path / "cmp" / "comparison.png").stat().st_size > 0


def test_labels_name_what_differs():
    base = ("toy", "bn", "/d/toy", "2", "0.003", "16", "all", "fast", "False", "2", "cpu", "fp32", "False", "none")
    other = ("toy", "bn", "/e/toy", "2", "find", "16", "all", "fast", "False", "4", "cpu", "fp32", "False", "none")
    labels, common = group_labels([base, other])
    assert labels == ["bn · from /d/toy · lr 0.003 · 2 threads", "bn · from /e/toy · lr find · 4 threads"]
    assert common == ("toy · 2 ep · bs 16 · all images · fast pipeline · no augment · cpu · fp32 · from scratch · "
                      "no transfer")
    assert group_labels([base]) == (["bn · toy · 2 ep"], "from /d/toy · lr 0.003 · bs 16 · all images · fast pipeline · "
                                                         "no augment · 2 threads · cpu · fp32 · from scratch · no transfer")
    tuned = ("toy", "resnet18", "/d/toy", "2", "0.003", "16", "all", "fast", "False", "2", "cpu", "fp32", "True",
             "fine-tune")
    scratch = tuned[:12] + ("False", "none")
    assert group_labels([tuned, scratch])[0] == ["resnet18 · pretrained · fine-tune",
                                                 "resnet18 · from scratch · no transfer"]


# --- files from older versions, and files that are damaged ---------------------------------------------------

OLD_COLUMNS = ["run_id", "dataset", "arch", "depth", "seed", "epochs", "lr", "bs", "params", "train_images",
               "train_seconds", "images_per_second", "valid_seconds", "train_loss", "valid_loss", "accuracy",
               "error_rate", "epochs_done", "device", "precision", "pipeline", "augment", "status", "error", "finished"]


def old_rows(lrs):
    return [{c: row(d, 0, 500)[c] for c in OLD_COLUMNS} | dict(lr=lr, accuracy=0.367000013589859,
                                                              error_rate=0.632999986410141)
            for d, lr in zip((2, 3), lrs)]


def test_an_older_results_csv_still_reports(tmp_path):
    # beside its sweep.json: the settings it did not record come from there
    p = write_sweep(tmp_path / "old", old_rows([0.01, 0.02]),
                    dict(dataset="/data/toy", lr="find", max_per_class=50, bs=16))
    df = load_results(p)
    assert df["lr_setting"].tolist() == ["find", "find"] and df["max_per_class"].tolist() == [50, 50]
    assert df["threads"].tolist() == [2, 2] and df["source"].tolist() == ["/data/toy"] * 2
    s = summarize(df)
    assert s["group"].tolist() == ["bn · toy · 2 ep"] * 2 and s["runs"].tolist() == [1, 1]
    assert s.loc[0, "interval"] == "n=1: no interval"  # no image count: no Wilson interval either
    # alone: lr_setting from the lr used (one folder has one setting: lrs that differ were found by lr_find)
    (tmp_path / "old" / "sweep.json").unlink()
    with pytest.warns(RowWarning, match="from an older cnn-depth lack max_per_class and lr_setting"):
        assert load_results(p)["lr_setting"].tolist() == ["find", "find"]
    write_sweep(tmp_path / "old", old_rows([0.003, 0.003]))
    with pytest.warns(RowWarning):
        assert load_results(p)["lr_setting"].tolist() == [0.003, 0.003]


HEADER = ",".join(RESULT_COLUMNS)


def results_text(*rows_):
    return "\n".join([HEADER] + [",".join(str(r[c]) for c in RESULT_COLUMNS) for r in rows_]) + "\n"


@pytest.mark.parametrize("change,message", [
    (dict(accuracy="abc"), "line 3: accuracy is 'abc', not a finite number between 0 and 1"),
    (dict(accuracy=7.5), "line 3: accuracy is '7.5', not a finite number between 0 and 1"),
    (dict(accuracy="inf"), "line 3: accuracy is 'inf', not a finite number between 0 and 1"),
    (dict(depth="three"), "line 3: depth is 'three', not a whole number ≥ 1"),
    (dict(params="12k"), "line 3: params is '12k', not a whole number ≥ 0"),
    (dict(epochs=""), "line 3: epochs is empty; every row needs one"),
    (dict(status="done"), "line 3: status is 'done', not one of ok, diverged, failed"),
    (dict(seed=7), "line 3: run_id is 'bn-d3-s0', but arch, depth and seed make 'bn-d3-s7'"),
    (dict(correct=701), "line 3: accuracy is 0.7, but correct / valid_images is 701/1000"),
    (dict(augment="maybe"), "line 3: augment is 'maybe', not True or False"),
    (dict(lr_setting="fast"), "line 3: lr_setting is 'fast', not 'find' or a positive number"),
])
def test_bad_values_are_one_line_naming_file_and_line(tmp_path, change, message):
    good = row(2, 0, 500)
    bad = row(3, 0, 700) | change
    p = tmp_path / "results.csv"
    p.write_text(results_text(good, bad))
    with pytest.raises(CnnDepthError) as e:
        report([p], out=tmp_path / "cmp")
    assert str(e.value) == f"{p} {message}; fix or delete that line"


def test_torn_last_line_and_repeated_rows(tmp_path):
    p = tmp_path / "results.csv"
    text = results_text(row(2, 0, 500), row(2, 0, 520), row(3, 0, 700))
    p.write_text(text[:-10])  # cut inside the last field: every field is there, but the line has no end
    with pytest.warns(RowWarning) as caught:
        s = report([p], out=tmp_path / "cmp")
    messages = [str(w.message) for w in caught]
    assert any("the last line" in m and "was cut short" in m and "left out" in m for m in messages)
    assert any("1 line(s) repeat an earlier one's run_id (first: line 2, again on line 3); the later line" in m
               for m in messages)
    assert s[["depth", "runs", "accuracy_mean"]].values.tolist() == [[2, 1, 0.52]]


def test_damaged_history_and_activations_are_one_line(tmp_path):
    out = tmp_path / "sweep"
    write_sweep(out, [row(2, 0, 500)])
    (out / "history.csv").write_text("run_id,dataset,arch,depth,seed,epochs,epoch,train_loss,valid_loss,accuracy,"
                                     "seconds\nbn-d2-s0,toy,bn,2,0,2,x,1.0,1.1,0.5,1.0\n")
    with pytest.raises(CnnDepthError, match=r"history.csv line 2: epoch is 'x', not a whole number ≥ 1; fix or "
                                            r"delete that line"):
        write_reports(out)
    (out / "history.csv").write_text("run_id,dataset,arch,depth,seed,epochs,epoch,train_loss,valid_loss,accuracy,"
                                     "seconds\nbn-d2-s0,toy,bn,2,0,2,1,nan,1.1,0.5,1.0\n")  # nan: a diverged loss
    assert read_history(out / "history.csv")["train_loss"].isna().all()
    (out / "activations.csv").write_text("run_id,dataset,arch,depth,seed,layer,stage,index,mean,std,frac_zero,shape\n"
                                         "bn-d2-s0,toy,bn,2,0,stem,stem,1,0.5,0.2,1.5,x\n")
    with pytest.raises(CnnDepthError, match=r"activations.csv line 2: frac_zero is '1.5', not a finite number "
                                            r"between 0 and 1"):
        write_reports(out)
    (out / "activations.csv").write_text("a,b\n1,2\n")
    with pytest.raises(CnnDepthError, match=r"activations.csv is not a sweep's activations.csv \(no column run_id"):
        write_reports(out)


def test_report_bad_paths_are_one_line(tmp_path):
    with pytest.raises(CnnDepthError, match="no such file"):
        report([tmp_path / "missing.csv"])
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(CnnDepthError, match="empty.csv is empty"):
        report([tmp_path / "empty.csv"])
    (tmp_path / "other.csv").write_text("a,b\n1,2\n")
    with pytest.raises(CnnDepthError, match="no column run_id"):
        report([tmp_path / "other.csv"])
    with pytest.raises(CnnDepthError, match="give at least one results.csv"):
        report([])


# --- figures: drawn from the summary's own numbers -----------------------------------------------------------


def test_accuracy_figure_draws_the_intervals_chance_and_verdicts():
    s = summarize(frame(*[row(d, k, 300 + 20 * d + 2 * k) for d in (1, 2, 4, 8) for k in range(3)]))
    fig = accuracy_figure(s)
    ax, ax_cost = fig.axes[:2]
    assert ax.get_xscale() == "log" and list(ax.get_xticks()) == [1, 2, 4, 8]
    bars = next(c for c in ax.collections if isinstance(c, LineCollection))  # the error bars
    spans = sorted((seg[0][1], seg[1][1]) for seg in bars.get_segments())
    expect = sorted(zip(s["accuracy_low"], s["accuracy_high"]))
    assert spans == [pytest.approx(e) for e in expect]
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert legend[0] == "bn · toy · 2 ep (n=3)" and "chance (1/10)" in legend
    assert any(t.startswith("error bars: 95% t interval") for t in legend)
    assert any(list(line.get_ydata()) == [0.1, 0.1] and line.get_linestyle() == "--" for line in ax.lines)
    stars = [line for line in ax.lines if line.get_marker() == "*" and len(line.get_xdata())]
    assert len(stars) == 1 and stars[0].get_ydata()[0] == pytest.approx(s["accuracy_mean"].max())
    assert ax_cost.get_yscale() == "log"
    # depths within ×4: a linear axis
    assert accuracy_figure(summarize(RESULTS)).axes[0].get_xscale() == "linear"


def test_figures_say_when_there_is_nothing_to_draw(tmp_path):
    failed = frame(row(2, 0, 0, "failed"), row(3, 0, 0, "diverged"))
    fig = accuracy_figure(summarize(failed))
    assert "none of the 2 runs finished ok" in fig.axes[0].texts[0].get_text()
    fig = curves_figure(pd.DataFrame(columns=["run_id", "depth", "epoch"]), label_runs(failed))
    assert "no finished (ok) run" in fig.axes[0].texts[0].get_text()


def test_curves_show_both_losses_and_the_seed_band():
    results = label_runs(frame(*[row(d, k, 500) for d in (2, 3) for k in (0, 1)]))
    history = pd.DataFrame([dict(run_id=f"bn-d{d}-s{k}", depth=d, seed=k, epoch=e, train_loss=2 - e / 2 - k / 10,
                                 valid_loss=2 - e / 3, accuracy=0.2 * e + k / 20)
                            for d in (2, 3) for k in (0, 1) for e in (1, 2, 3)])
    fig = curves_figure(history, results)
    ax_loss, ax_acc = fig.axes[:2]
    assert {line.get_linestyle() for line in ax_loss.lines} == {"-", "--"}  # training and validation loss
    band = ax_acc.collections[0].get_paths()[0].vertices[:, 1]  # min to max over the two seeds
    assert band.min() == pytest.approx(0.2) and band.max() == pytest.approx(0.65)


def test_write_reports_from_a_folder(tmp_path):
    write_sweep(tmp_path, RESULTS.to_dict("records"))
    summary = write_reports(tmp_path)  # no history.csv: curves.png says so
    assert summary["runs"].tolist() == [3, 2, 0, 1]
    assert pd.read_csv(tmp_path / "summary.csv")["verdict"].tolist() == summary["verdict"].tolist()
    for name in ("summary.csv", "accuracy_vs_depth.png", "curves.png"):
        assert (tmp_path / name).stat().st_size > 0


def test_a_depth_without_a_finished_run_breaks_the_line_but_keeps_its_cost():
    s = summarize(frame(row(2, 0, 500), row(3, 0, 0, "failed"), row(4, 0, 600)))
    ax, ax_cost = accuracy_figure(s).axes[:2]
    line = ax.lines[0]  # the errorbar's data line
    assert list(line.get_xdata()) == [2, 3, 4] and math.isnan(line.get_ydata()[1])
    assert [list(c.get_ydata()) for c in ax_cost.lines] == [[2000, 3000, 4000], [200, 300, 400]]  # MACs, params
