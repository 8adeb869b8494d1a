"""`cnn-depth report` over real sweeps that differ in more than depth: the table and the figure say what differs.

Three tiny real sweeps on the embedded sample (10 images per class, depths 1 and 2, one seed, CPU, 1 thread):
bn for 1 epoch, bn for 2 epochs, residual for 1 epoch.
"""
import pandas as pd
import pytest
from typer.testing import CliRunner

from cnn_depth import run_sweep
from cnn_depth.cli import app
from cnn_depth.plots import accuracy_figure
from cnn_depth.reports import comparison_note, format_summary, report

from test_report_figures import texts_outside

pytestmark = pytest.mark.slow  # trains


@pytest.fixture(scope="module")
def sweeps(tmp_path_factory):
    root = tmp_path_factory.mktemp("compare")
    out = {}
    for name, arch, epochs in (("bn-e1", "bn", 1), ("bn-e2", "bn", 2), ("res-e1", "residual", 1)):
        run_sweep(depths=[1, 2], seeds=[0], epochs=epochs, arch=arch, max_per_class=10, bs=16, device="cpu",
                  quiet=True, threads=1, workers=1, out=root / name)
        out[name] = root / name / "results.csv"
    return root, out


def test_sweeps_of_other_epochs_say_so_in_the_printed_table_and_the_figure(sweeps):
    root, s = sweeps
    r = CliRunner().invoke(app, ["report", str(s["bn-e1"]), str(s["bn-e2"]), "--out", str(root / "epochs")])
    assert r.exit_code == 0, r.output
    note = "the groups differ in epochs (1 ep vs 2 ep) only; every other setting is the same"
    lines = r.stdout.splitlines()
    assert lines[-2] == note and lines[-1].startswith("reports: ")
    summary = pd.read_csv(root / "epochs" / "summary.csv")  # the line is reproducible from summary.csv alone
    assert summary["epochs"].tolist() == [1, 1, 2, 2] and comparison_note(summary) == note
    fig = accuracy_figure(summary, "accuracy vs depth, compared")
    assert fig.axes[0].get_title().replace("\n", " ") == note and texts_outside(fig) == []
    assert (root / "epochs" / "comparison.png").stat().st_size > 0


def test_an_arch_compared_at_other_epochs_is_a_warning(sweeps):
    root, s = sweeps
    summary = report([s["bn-e2"], s["res-e1"]], root / "mixed")  # the issue: bn at 2 epochs, residual at 1
    note = ("warning: the groups differ in 2 settings: arch (bn vs residual) and epochs (2 ep vs 1 ep); a gap "
            "between two groups may come from either, not from one alone")
    assert format_summary(summary).splitlines()[-1] == note
    assert summary["group"].drop_duplicates().tolist() == ["bn · 2 ep", "residual · 1 ep"]
    ax = accuracy_figure(summary, "accuracy vs depth, compared").axes[0]
    assert ax.get_title().replace("\n", " ") == note and ax.title.get_color() == "firebrick"
    # the same arches at the same epochs: only the arch differs, and the line says so without a warning
    same = report([s["bn-e1"], s["res-e1"]], root / "arch")
    assert format_summary(same).splitlines()[-1] == ("the groups differ in arch (bn vs residual) only; every "
                                                     "other setting is the same")
    # one sweep alone: nothing compared, no such line
    alone = report([s["bn-e1"]], root / "alone")
    assert "differ" not in format_summary(alone)
