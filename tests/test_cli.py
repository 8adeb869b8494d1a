"""The CLI's model and dataset commands, and its one-line errors."""
import pytest
from typer.testing import CliRunner

from cnn_depth.cli import app
from cnn_depth.models import list_models

runner = CliRunner()


def test_models_lists_every_registered_model_with_params():
    r = runner.invoke(app, ["models", "--depth", "20"])
    assert r.exit_code == 0, r.output
    for name in list_models():
        assert name in r.output
    assert "1,078,170" in r.output  # bn at depth 20


def test_datasets_lists_sources():
    r = runner.invoke(app, ["datasets"])
    assert r.exit_code == 0
    assert "cifar10-sample" in r.output and "mnist" in r.output and "training/testing" in r.output


def test_summary_prints_layer_table():
    r = runner.invoke(app, ["summary", "--depth", "4", "--arch", "residual"])
    assert r.exit_code == 0, r.output
    assert "stage3" in r.output and "(1, 128, 4, 4)" in r.output and "total params:" in r.output


@pytest.mark.parametrize("args,message", [
    (["summary", "--depth", "0"], "error: depth must be a whole number ≥ 1"),
    (["summary", "--depth", "3", "--arch", "vgg"], "error: unknown arch 'vgg'; choose one of"),
    (["summary", "--depth", "4", "--arch", "simplecnn"], "error: preset simplecnn has a fixed depth of 3"),
    (["summary"], "error: --depth is required"),
    (["models", "--depth", "-1"], "error: depth must be a whole number ≥ 1"),
])
def test_bad_input_is_one_line_and_exit_2(args, message):
    r = runner.invoke(app, args)
    assert r.exit_code == 2
    assert message in r.output
    assert "Traceback" not in r.output and len(r.output.strip().splitlines()) == 1


@pytest.mark.parametrize("out,message", [("", "--out is empty"), ("FILE", "is a file, not a folder"),
                                         ("/proc/x", "cannot")])
def test_report_out_that_cannot_hold_the_reports_is_one_line(tmp_path, out, message):
    from pathlib import Path
    recorded = Path(__file__).resolve().parents[1] / "experiments" / "tutorial-depth" / "results" / "bn"
    (tmp_path / "f").write_text("")
    out = str(tmp_path / "f") if out == "FILE" else out
    r = runner.invoke(app, ["report", str(recorded / "results.csv"), "--out", out])
    assert r.exit_code == 2, r.output
    assert r.output.startswith("error: ") and message in r.output and len(r.output.strip().splitlines()) == 1
    assert not (Path.cwd() / "summary.csv").exists()
