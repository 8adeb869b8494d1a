"""Figures and tables that say what they compare: titles that fit, what differs between groups, a full disk."""
import subprocess

import pandas as pd
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from typer.testing import CliRunner

from cnn_depth import CnnDepthError, summarize
from cnn_depth.cli import app
from cnn_depth.plots import accuracy_figure, curves_figure, plot_accuracy_vs_depth
from cnn_depth.reports import comparison_note, format_summary, label_runs, short_paths, write_reports

from test_reports import RESULTS, frame, row, write_sweep

LONG = ("/home/someone/projects/very/long/path/to/datasets/medical-imaging-2024-release/"
        "chest_xray_pneumonia_full_resolution_v3.tar.gz")


def headings(fig) -> list:
    """The figure's titles, its subfigures' and axes' titles, axis labels and legend texts."""
    figs = [fig, *fig.subfigs]
    texts = [f._suptitle for f in figs if f._suptitle is not None]
    for ax in fig.axes:
        texts += [ax.title, ax._left_title, ax._right_title, ax.xaxis.label, ax.yaxis.label]
    for legend in [*fig.legends, *(ax.get_legend() for ax in fig.axes)]:
        if legend is not None:
            texts += [*legend.get_texts(), legend.get_title()]
    return texts


def texts_outside(fig) -> list:
    """The visible, non-empty headings of ``fig`` that the drawn figure cuts, with their extents in pixels."""
    canvas = FigureCanvasAgg(fig)
    canvas.draw()  # runs the constrained layout, as savefig does
    renderer = canvas.get_renderer()
    box = fig.bbox
    out = []
    for t in headings(fig):
        if not t.get_visible() or not t.get_text().strip():
            continue
        e = t.get_window_extent(renderer)
        if e.x0 < box.x0 - 1 or e.x1 > box.x1 + 1 or e.y0 < box.y0 - 1 or e.y1 > box.y1 + 1:
            out.append((t.get_text(), tuple(round(v) for v in e.extents)))
    return out


def test_a_long_data_path_is_named_by_its_file_name_and_every_title_fits():
    long_rows = [row(d, k, 300 + 20 * d + k, source=LONG, dataset="chest_xray_pneumonia_full_resolution_v3")
                 for d in (1, 2, 4) for k in range(2)]
    s = summarize(frame(*long_rows))
    assert LONG in s.attrs["context"]  # the printed table keeps the whole path (summary.csv too)
    fig = accuracy_figure(s, "accuracy vs depth (chest_xray_pneumonia_full_resolution_v3-bn-d1-4-s0-1-e2)")
    title = fig._suptitle.get_text()
    assert "from chest_xray_pneumonia_full_resolution_v3.tar.gz" in title and "/home/someone" not in title
    assert texts_outside(fig) == []
    # two sources of the same file name: each by the shortest tail that tells them apart, in legend and note
    other = LONG.replace("2024-release", "2025-release")
    two = summarize(frame(*long_rows, *[dict(r, source=other) for r in long_rows]))
    fig = accuracy_figure(two, "accuracy vs depth, compared")
    legend = [t.get_text() for t in fig.axes[0].get_legend().get_texts()][:2]
    assert legend[0].startswith("bn · from medical-imaging-2024-release/\n")  # wrapped after a folder
    assert ["".join(t.split()) for t in legend] == [
        "bn·frommedical-imaging-2024-release/chest_xray_pneumonia_full_resolution_v3.tar.gz(n=2)",
        "bn·frommedical-imaging-2025-release/chest_xray_pneumonia_full_resolution_v3.tar.gz(n=2)"]
    assert list(dict.fromkeys(two["group"])) == [f"bn · from {LONG}", f"bn · from {other}"]  # summary.csv: whole
    assert texts_outside(fig) == []
    # the curves' per-group titles too
    history = pd.DataFrame([dict(run_id=r["run_id"], depth=r["depth"], seed=r["seed"], epoch=e, train_loss=1.0,
                                 valid_loss=1.1, accuracy=0.3) for r in long_rows for e in (1, 2)])
    fig = curves_figure(history, label_runs(frame(*long_rows, *[dict(r, source=other) for r in long_rows])))
    title = fig._suptitle.get_text()  # one group shown: the two share run_ids, which history.csv keys on
    assert "from medical-imaging-2025-release/chest_xray" in title and "/home/someone" not in title
    assert texts_outside(fig) == []


def test_the_old_unwrapped_title_would_have_been_cut():
    """The check above can fail: the same context as one unwrapped axes title runs off the figure."""
    s = summarize(frame(*[row(d, 0, 300 + d, source=LONG) for d in (1, 2)]))
    fig = accuracy_figure(s)
    fig.axes[0].set_title("accuracy vs depth\n" + s.attrs["context"], fontsize=10)
    assert [t for t, _ in texts_outside(fig)] == ["accuracy vs depth\n" + s.attrs["context"]]


def test_short_paths_keep_sources_apart():
    assert short_paths(["/d/toy", "/e/toy", "cifar10-sample", "/x/y/z.tgz", "/a/y/z.tgz", "/a/q.tgz"]) == {
        "/d/toy": "d/toy", "/e/toy": "e/toy", "cifar10-sample": "cifar10-sample", "/x/y/z.tgz": "x/y/z.tgz",
        "/a/y/z.tgz": "a/y/z.tgz", "/a/q.tgz": "q.tgz"}


def test_what_differs_between_groups_is_said_in_the_table_and_on_the_figure(tmp_path):
    one = summarize(RESULTS)  # bn and plain, every other setting the same
    assert comparison_note(one) == "the groups differ in arch (bn vs plain) only; every other setting is the same"
    assert format_summary(one).splitlines()[-1] == comparison_note(one)
    two = summarize(frame(*[row(d, k, 400 + d + k) for d in (2, 3) for k in (0, 1)],
                          *[row(d, k, 450 + d + k, arch="residual", epochs=5, epochs_done=5, lr_setting="find",
                                lr=1e-3) for d in (2, 3) for k in (0, 1)]))
    note = ("warning: the groups differ in 3 settings: arch (bn vs residual), epochs (2 ep vs 5 ep) and lr "
            "(lr 0.003 vs lr find); a gap between two groups may come from any of them, not from one alone")
    assert comparison_note(two) == note and format_summary(two).splitlines()[-1] == note
    fig = accuracy_figure(two, "accuracy vs depth, compared")
    shown = fig.axes[0].get_title()
    assert shown.replace("\n", " ") == note and fig.axes[0].title.get_color() == "firebrick"
    assert texts_outside(fig) == []
    # from summary.csv alone (the columns, not the DataFrame's attrs), as `cnn-depth report` would reread it
    two.to_csv(tmp_path / "summary.csv", index=False)
    assert comparison_note(pd.read_csv(tmp_path / "summary.csv")) == note
    # one group: nothing to compare, no line
    single = summarize(frame(row(2, 0, 500), row(3, 0, 600)))
    assert comparison_note(single) == "" and "differ" not in format_summary(single)
    assert accuracy_figure(single).axes[0].get_title() == ""


# --- a full disk while writing a figure ---------------------------------------------------------------------


@pytest.fixture
def tiny_disk(tmp_path):
    """A real 32 KiB file system (tmpfs): room for a results.csv and a summary.csv, not for a figure."""
    d = tmp_path / "tiny"
    d.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=32k", "tmpfs", str(d)], capture_output=True, text=True)
    if r.returncode:
        pytest.skip(f"cannot mount a 32 KiB tmpfs here (needs root): {r.stderr.strip()}")
    yield d
    subprocess.run(["umount", str(d)], check=True)


@pytest.mark.slow  # starts mount/umount
def test_a_full_disk_while_writing_a_figure_is_one_line(tiny_disk, tmp_path):
    png = tiny_disk / "accuracy_vs_depth.png"
    with pytest.raises(CnnDepthError) as e:
        plot_accuracy_vs_depth(summarize(RESULTS), png)
    message = str(e.value)
    assert message.startswith(f"the disk is full: could not write the figure {png} (") and "\n" not in message
    assert message.endswith(" KiB free there); free space and rerun the same command to resume")
    assert sorted(p.name for p in tiny_disk.iterdir()) == []  # no half-written figure, no temporary file left
    # a sweep folder on that disk: summary.csv fits, the figure does not; the old figure is left whole
    write_sweep(tiny_disk, RESULTS.to_dict("records"))
    with pytest.raises(CnnDepthError, match=r"^the disk is full: could not write the figure .*accuracy_vs_depth.png"):
        write_reports(tiny_disk)
    assert sorted(p.name for p in tiny_disk.iterdir()) == ["results.csv", "summary.csv"]
    # the CLI: `cnn-depth report ... --out <full disk>` is one line and exit 1 (nothing typed was wrong)
    source = write_sweep(tmp_path / "sweep", RESULTS.to_dict("records"))
    r = CliRunner().invoke(app, ["report", str(source), "--out", str(tiny_disk / "cmp")])
    assert r.exit_code == 1, r.output
    assert r.stderr.startswith(f"error: the disk is full: could not write the figure "
                               f"{tiny_disk / 'cmp' / 'comparison.png'} (")
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.output


def test_a_folder_that_cannot_hold_a_figure_is_one_line(tmp_path):
    (tmp_path / "file").write_text("")  # a file where the figure's folder should be
    with pytest.raises(CnnDepthError) as e:
        plot_accuracy_vs_depth(summarize(RESULTS), tmp_path / "file" / "accuracy_vs_depth.png")
    assert str(e.value) == (f"cannot write {tmp_path / 'file' / 'accuracy_vs_depth.png'} (File exists); give a "
                            f"folder you can write to (--out) and rerun the same command: finished runs are kept "
                            f"and the reports are written again")
