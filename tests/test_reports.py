"""Summaries and plots from results.csv alone: statistics over seeds, the best depth, comparisons."""
import math
import shutil

import pandas as pd
import pytest

from cnn_depth import CnnDepthError, report, summarize
from cnn_depth.reports import format_summary, write_reports
from cnn_depth.records import RESULT_COLUMNS


def rows(*specs):
    """(arch, depth, seed, accuracy, status) -> a results frame with every column."""
    out = []
    for arch, depth, seed, acc, status in specs:
        r = dict.fromkeys(RESULT_COLUMNS)
        r.update(run_id=f"{arch}-d{depth}-s{seed}", dataset="toy", arch=arch, depth=depth, seed=seed, epochs=2,
                 lr=3e-3, bs=16, params=100 * depth, train_images=96, train_seconds=2.0 * depth,
                 images_per_second=48 / depth, accuracy=acc if status == "ok" else math.nan, status=status)
        out.append(r)
    return pd.DataFrame(out)


RESULTS = rows(("bn", 2, 0, 0.5, "ok"), ("bn", 2, 1, 0.6, "ok"), ("bn", 3, 0, 0.7, "ok"), ("bn", 3, 1, 0, "failed"),
               ("bn", 4, 0, 0, "diverged"), ("plain", 2, 0, 0.4, "ok"))


def test_summary_statistics_over_seeds():
    s = summarize(RESULTS)
    assert s[["arch", "depth", "runs", "not_ok"]].values.tolist() == [["bn", 2, 2, 0], ["bn", 3, 1, 1],
                                                                      ["bn", 4, 0, 1], ["plain", 2, 1, 0]]
    assert s.loc[0, "accuracy_mean"] == pytest.approx(0.55)
    assert s.loc[0, "accuracy_std"] == pytest.approx(0.0707107, abs=1e-6)  # ddof=1
    assert math.isnan(s.loc[1, "accuracy_std"]) and math.isnan(s.loc[2, "accuracy_mean"])
    assert s.loc[2, "params"] == 400  # known even when no run finished
    assert s["best"].tolist() == [False, True, False, True]  # per arch
    assert s.loc[0, "train_seconds_mean"] == 4.0


def test_printed_table_shows_what_the_csv_holds():
    text = format_summary(summarize(RESULTS))
    lines = text.splitlines()
    assert "0.5500 ± 0.0707" in lines[1]
    assert lines[2].endswith("<- best  (1 not ok)") and "0.7000" in lines[2]
    assert " - " in lines[3] and "(1 not ok)" in lines[3]


def test_write_reports_from_a_folder(tmp_path):
    RESULTS.to_csv(tmp_path / "results.csv", index=False)
    summary = write_reports(tmp_path)  # no history.csv: curves.png is empty but written
    assert summary["runs"].tolist() == [2, 1, 0, 1]
    for name in ("summary.csv", "accuracy_vs_depth.png", "curves.png"):
        assert (tmp_path / name).stat().st_size > 0


def test_report_counts_a_run_found_twice_once(tmp_path):
    a = tmp_path / "a" / "results.csv"
    a.parent.mkdir()
    RESULTS.to_csv(a, index=False)
    b = tmp_path / "b" / "results.csv"
    b.parent.mkdir()
    shutil.copy(a, b)
    with pytest.warns(UserWarning, match=r"6 run\(s\) appear in more than one file"):
        s = report([a, b], out=tmp_path / "cmp")
    assert s["runs"].tolist() == [2, 1, 0, 1]
    assert report([a, a], out=tmp_path / "cmp")["runs"].tolist() == [2, 1, 0, 1]  # same path given twice
    assert (tmp_path / "cmp" / "comparison.png").exists()


def test_report_bad_paths_are_one_line(tmp_path):
    with pytest.raises(CnnDepthError, match="no such file"):
        report([tmp_path / "missing.csv"])
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(CnnDepthError, match="cannot read .* as CSV"):
        report([tmp_path / "empty.csv"])
    with pytest.raises(CnnDepthError, match="give at least one results.csv"):
        report([])
