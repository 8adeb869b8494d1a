"""`cnn-depth sweep` and `cnn-depth report` as a user types them: files, resume, faults, one-line errors."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from cnn_depth import sweep as sweep_mod
from cnn_depth.cli import app, gather_list_values
from cnn_depth.records import RESULT_COLUMNS

runner = CliRunner()
# --threads 1: with threads auto a serial run takes the cores other processes leave free, which varies with the
# machine's load, and two sweeps of different thread counts are (rightly) two groups in a report
SMALL = ["--epochs", "1", "--max-per-class", "10", "--bs", "16", "--device", "cpu", "--quiet", "--workers", "1",
         "--threads", "1"]
# Filled on every row of a finished run; error is empty when status is ok.
# transfer: empty for a run from scratch; dims and fill: empty at their defaults (the data decides; NaN refused)
FILLED = [c for c in RESULT_COLUMNS if c not in ("error", "transfer", "dims", "fill")]


def sweep(out, *args):
    return runner.invoke(app, ["sweep", *args, *SMALL, "--out", str(out)])


@pytest.fixture(scope="module")
def bn_sweep(tmp_path_factory):
    """`--depths 1 2 3` exactly as typed, run once for the tests of this module."""
    out = tmp_path_factory.mktemp("bn") / "sweep"
    r = sweep(out, "--depths", "1", "2", "3")
    return out, r


def test_depths_as_typed_give_three_rows_with_every_column(bn_sweep):
    out, r = bn_sweep
    assert r.exit_code == 0, r.output
    df = pd.read_csv(out / "results.csv", keep_default_na=False)
    assert list(df.columns) == RESULT_COLUMNS
    assert df["depth"].tolist() == [1, 2, 3] and df["run_id"].tolist() == ["bn-d1-s0", "bn-d2-s0", "bn-d3-s0"]
    assert (df["status"] == "ok").all() and (df["error"] == "").all()
    assert (df[FILLED] != "").all().all(), df.T
    assert (df["transfer"] == "").all() and (df["pretrained"] == False).all()  # noqa: E712
    assert (df["kind"] == "image").all() and (df["dims"] == "").all() and (df["fill"] == "").all()
    assert df["device"].eq("cpu").all() and df["precision"].eq("fp32").all()
    assert df["train_images"].eq(96).all()  # 100 training images, bs 16, last partial batch dropped
    assert ((df["images_per_second"] - df["train_images"] / df["train_seconds"]).abs() <= 0.05 + 1e-9).all()
    assert df["params"].is_monotonic_increasing
    assert ((df["error_rate"] + df["accuracy"]) - 1).abs().max() < 1e-9


def test_reports_written_and_table_reproducible_from_csv(bn_sweep):
    out, r = bn_sweep
    for name in ("history.csv", "summary.csv", "sweep.json", "accuracy_vs_depth.png", "curves.png"):
        assert (out / name).stat().st_size > 0, name
    history = pd.read_csv(out / "history.csv")
    assert history[["run_id", "epoch"]].values.tolist() == [["bn-d1-s0", 1], ["bn-d2-s0", 1], ["bn-d3-s0", 1]]
    results = pd.read_csv(out / "results.csv")
    # the last epoch's validation numbers are the final validate()'s
    assert history["valid_loss"].round(6).tolist() == results["valid_loss"].round(6).tolist()
    summary = pd.read_csv(out / "summary.csv")
    assert summary["runs"].tolist() == [1, 1, 1] and summary["accuracy_std"].isna().all()
    # one seed: a Wilson interval over the 100 validation images, and no depth can be called best
    assert (summary["interval"] == "Wilson, 1 seed, 100 images").all() and not summary["best"].any()
    assert (results["accuracy"] == results["correct"] / results["valid_images"]).all()
    top = summary.loc[summary["verdict"] == "highest mean"]
    assert top["accuracy_mean"].item() == results["accuracy"].max()
    top_line = next(line for line in r.stdout.splitlines() if "highest mean" in line)
    assert top_line.split()[0] == str(top["depth"].item()) and f"{results['accuracy'].max():.4f}" in top_line
    assert "  note: 1 seed: not enough to separate depths 1, 2 and 3" in r.stdout.splitlines()
    assert summary["note"].unique().tolist() == ["1 seed: not enough to separate depths 1, 2 and 3"]
    meta = json.loads((out / "sweep.json").read_text())
    assert meta["config"]["depths"] == [1, 2, 3] and meta["config"]["epochs"] == 1 and meta["config"]["lr"] == 3e-3
    env = meta["environment"]
    assert env["torch"] == torch.__version__ and env["device"] == "cpu"
    assert {"python", "torchvision", "fastai", "cnn_depth", "git_commit"} <= set(env)


def test_rerun_adds_no_rows(bn_sweep):
    out, _ = bn_sweep
    before = (out / "results.csv").read_bytes(), (out / "history.csv").read_bytes()
    r = sweep(out, "--depths", "1", "2", "3")
    assert r.exit_code == 0, r.output
    assert ((out / "results.csv").read_bytes(), (out / "history.csv").read_bytes()) == before
    assert len(json.loads((out / "sweep.json").read_text())["invocations"]) == 2


def test_other_config_in_same_out_is_refused(bn_sweep):
    out, _ = bn_sweep
    r = runner.invoke(app, ["sweep", "--depths", "1", "--epochs", "2", "--max-per-class", "10", "--bs", "16",
                            "--out", str(out)])
    assert r.exit_code == 2
    assert r.stderr.strip().splitlines() == [f"error: {out} holds a sweep with epochs=1, not 2; use another --out "
                                             f"(or --epochs 1 to resume that sweep)"]


@pytest.mark.slow
def test_diverging_runs_are_recorded_the_sweep_goes_on_exit_1(tmp_path):
    out = tmp_path / "plain"
    r = sweep(out, "--depths", "1", "2", "--arch", "plain", "--lr", "1e6")
    assert r.exit_code == 1, r.output
    df = pd.read_csv(out / "results.csv")
    assert df["run_id"].tolist() == ["plain-d1-s0", "plain-d2-s0"]
    assert df["status"].tolist() == ["diverged", "diverged"]
    assert df["error"].str.match(r"loss became (nan|inf) at epoch 1, batch \d+").all()
    assert r.stderr.strip().splitlines()[-1].startswith("error: 2 of 2 runs did not finish ok (diverged: 2)")
    assert pd.read_csv(out / "summary.csv")["not_ok"].tolist() == [1, 1]


def test_report_over_two_sweeps(bn_sweep, tmp_path):
    out_a, _ = bn_sweep
    out_b = tmp_path / "res"
    assert sweep(out_b, "--depths", "1-2", "--seeds", "0", "1", "--arch", "residual").exit_code == 0
    r = runner.invoke(app, ["report", str(out_a / "results.csv"), str(out_b / "results.csv"), "--out",
                            str(tmp_path / "cmp")])
    assert r.exit_code == 0, r.output
    s = pd.read_csv(tmp_path / "cmp" / "summary.csv")
    assert s[["group", "depth", "runs"]].values.tolist() == [["bn", 1, 1], ["bn", 2, 1], ["bn", 3, 1],
                                                             ["residual", 1, 2], ["residual", 2, 2]]
    res = pd.read_csv(out_b / "results.csv")
    d1 = res.loc[res["depth"] == 1, "accuracy"]
    assert s.loc[3, "accuracy_mean"] == pytest.approx(d1.mean()) and s.loc[3, "accuracy_std"] == pytest.approx(d1.std())
    assert s.loc[3, "interval"] == "t, n=2" and s.loc[3, "accuracy_low"] < s.loc[3, "accuracy_mean"]
    assert (s.groupby("group")["verdict"].apply(lambda v: (v == "highest mean").sum() + (v == "best").sum())
            == 1).all()
    assert (tmp_path / "cmp" / "comparison.png").stat().st_size > 0
    assert r.stdout.count("  note: ") == 2 and r.stdout.splitlines()[0].startswith("bn   (cifar10-sample · 1 ep")


def test_report_keeps_sweeps_of_other_image_counts_apart(bn_sweep, tmp_path):
    """Issue #13: a --max-per-class 20 sweep next to a --max-per-class 10 one: two groups, no row dropped."""
    out_a, _ = bn_sweep
    out_b = tmp_path / "m20"
    assert runner.invoke(app, ["sweep", "--depths", "1", "2", *SMALL, "--max-per-class", "20", "--out",
                               str(out_b)]).exit_code == 0
    r = runner.invoke(app, ["report", str(out_a), str(out_b), "--out", str(tmp_path / "cmp")])
    assert r.exit_code == 0 and r.stderr == "", r.output  # no "appears in more than one file" warning
    s = pd.read_csv(tmp_path / "cmp" / "summary.csv")
    assert s[["group", "depth", "runs", "valid_images"]].values.tolist() == [
        ["bn · 10/class", 1, 1, 100], ["bn · 10/class", 2, 1, 100], ["bn · 10/class", 3, 1, 100],
        ["bn · 20/class", 1, 1, 200], ["bn · 20/class", 2, 1, 200]]
    assert r.stdout.splitlines()[0].startswith("bn · 10/class   (cifar10-sample · 1 ep · lr 0.003 · bs 16")


@pytest.mark.parametrize("args,expected", [
    (["--depths", "2", "3", "4"], ["--depths", "2,3,4"]),
    (["--depths", "2,3,4", "--quiet"], ["--depths", "2,3,4", "--quiet"]),
    (["--seeds", "0", "1", "--depths=2", "3", "--epochs", "1"], ["--seeds", "0,1", "--depths", "2,3", "--epochs", "1"]),
    (["--depths", "-1", "2"], ["--depths", "-1,2"]),
    (["--depths"], ["--depths"]),
])
def test_list_values_are_gathered(args, expected):
    assert gather_list_values(args) == expected


@pytest.mark.parametrize("depths,expected", [
    (["2", "3", "4"], [2, 3, 4]), (["2,3,4"], [2, 3, 4]), (["2-4"], [2, 3, 4]), (["1,3-4", "6"], [1, 3, 4, 6]),
])
def test_depth_forms_reach_the_config(monkeypatch, depths, expected, tmp_path):
    seen = {}

    def fake_run_sweep(cfg, **kw):
        seen["cfg"] = cfg
        raise sweep_mod.SweepInterrupted("stop here")
    monkeypatch.setattr(sweep_mod, "run_sweep", fake_run_sweep)
    config = tmp_path / "c.toml"
    config.write_text('seeds = "0-2"\nepochs = 7\nlr = "find"\n')
    r = runner.invoke(app, ["sweep", "--depths", *depths, "--config", str(config), "--epochs", "2"])
    assert r.exit_code == 130 and r.stderr.strip() == "error: stop here"
    cfg = seen["cfg"]
    assert cfg.depths == expected and cfg.seeds == [0, 1, 2] and cfg.epochs == 2 and cfg.lr == "find"


def _bad_options(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    toml = tmp_path / "bad.toml"
    toml.write_text("depth = 3\n")
    cases = [
        (["--depths", "x"], "depths: 'x' is not a whole number or a range; write e.g. --depths 2 3 4"),
        (["--depths", "0"], "depth must be a whole number ≥ 1, got 0 (the number of conv layers)"),
        (["--depths", "-1"], "depths must be ≥ 1, got -1"),
        (["--epochs", "0"], "epochs must be a whole number ≥ 1, got 0"),
        (["--epochs", "x"], "Invalid value for '--epochs'"),
        (["--lr", "-1"], "lr must be a positive number (e.g. 3e-3) or 'find', got '-1'"),
        (["--lr", "abc"], "lr must be a positive number (e.g. 3e-3) or 'find', got 'abc'"),
        (["--data", str(tmp_path / "missing")], f"no such file or folder: {tmp_path / 'missing'}; check the path"),
        (["--dataset", "imagenet9"], "unknown dataset 'imagenet9'; choose one of"),
        (["--dataset", "mnist", "--data", str(tmp_path)], "give --dataset NAME or --data PATH, not both"),
        (["--out", str(blocker / "sub")], f"cannot write to {blocker / 'sub'}"),
        (["--arch", "vgg"], "unknown arch 'vgg'; choose one of"),
        (["--config", str(tmp_path / "none.toml")], "no such config file"),
        (["--config", str(toml)], "unknown key(s) depth in"),
        (["--depths", "2", "--bogus"], "No such option: --bogus"),
    ]
    if not torch.cuda.is_available():
        cases.append((["--device", "cuda", "--depths", "2"], "--device cuda, but torch"))
    return cases


def test_each_bad_option_is_one_line_exit_2(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # where a default --out would go: nothing may be created there
    for args, message in _bad_options(tmp_path):
        r = runner.invoke(app, ["sweep", *args])
        lines = r.stderr.strip().splitlines()
        assert r.exit_code == 2, (args, r.output)
        assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], (args, r.output)
        assert "Traceback" not in r.output and "╭" not in r.output
        assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("args,message", [
    (["summary", "--depth", "x"], "error: Invalid value for '--depth'"),
    (["report", "nope.csv"], "error: no such file: nope.csv"),
    (["report"], "error: Missing argument"),
])
def test_usage_errors_of_every_command_are_one_line(args, message):
    r = runner.invoke(app, args)
    assert r.exit_code == 2 and r.stderr.strip().splitlines() == [r.stderr.strip()] and message in r.stderr


def test_report_refuses_other_csv(tmp_path):
    p = tmp_path / "other.csv"
    p.write_text("a,b\n1,2\n")
    r = runner.invoke(app, ["report", str(p)])
    assert r.exit_code == 2 and "is not a sweep's results.csv (no column run_id" in r.stderr


@pytest.mark.slow
def test_sigterm_mid_run_keeps_finished_rows_and_resumes(tmp_path):
    """A real process: SIGTERM as soon as the second run has started, then the
    same command again."""
    out = tmp_path / "term"
    cmd = [sys.executable, "-m", "cnn_depth", "sweep", "--depths", "1", "2", "3", "--epochs", "3",
           "--max-per-class", "20", "--bs", "16", "--device", "cpu", "--workers", "1", "--out", str(out)]
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    seen = []
    for line in proc.stdout:  # click's echo flushes every line, so each arrives as it is printed
        seen.append(line)
        if line.startswith("start 2/3"):
            proc.send_signal(signal.SIGTERM)
            break
    rest, err = proc.communicate(timeout=120)
    assert any(line.startswith("done  1/3") for line in seen), "".join(seen) + rest + err
    assert proc.returncode == 130, err
    assert err.strip().splitlines()[-1].startswith("error: interrupted (SIGTERM) during run 2/3 (bn-d2-s0); "
                                                   "1 finished run(s) are saved")
    assert "Traceback" not in err
    done = pd.read_csv(out / "results.csv")
    assert done["run_id"].tolist() == ["bn-d1-s0"] and (done["status"] == "ok").all()
    r = runner.invoke(app, cmd[3:] + ["--quiet"])
    assert r.exit_code == 0, r.output
    full = pd.read_csv(out / "results.csv")
    assert full["run_id"].tolist() == ["bn-d1-s0", "bn-d2-s0", "bn-d3-s0"]
    assert full.iloc[:1].equals(done)


@pytest.mark.parametrize("toml,message", [
    ("depths = 2.5", "depths in {p} must be whole numbers: a list such as [2, 3, 4] or a string such as \"2-8\", got 2.5"),
    ("depths = true", "depths in {p} must be whole numbers: a list such as [2, 3, 4] or a string such as \"2-8\", got True"),
    ("depths = 2026-01-01", "depths in {p} must be whole numbers: a list such as [2, 3, 4] or a string such as \"2-8\", got date"),
    ("seeds = [0.5]", "seeds in {p}: 0.5 is not a whole number"),
    ('augment = "false"', "augment in {p} must be true or false, got 'false'"),
    ('save_models = "no"', "save_models in {p} must be true or false, got 'no'"),
    ('quiet = "no"', "quiet in {p} must be true or false, got 'no'"),
    ("epochs = 2.0", "epochs in {p} must be a whole number, got 2.0"),
    ('bs = "64"', "bs in {p} must be a whole number, got '64'"),
    ("lr = true", "lr in {p} must be a positive number (e.g. 3e-3) or 'find', got True"),
    ("workers = 0", "workers must be a whole number ≥ 1, got 0"),
    ("arch = 3", "arch in {p} must be a string, got 3"),
])
def test_toml_values_of_the_wrong_type_are_one_line(toml, message, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    p = tmp_path / "sweep.toml"
    p.write_text(toml + "\n")
    r = runner.invoke(app, ["sweep", "--config", str(p)])
    lines = r.stderr.strip().splitlines()
    assert r.exit_code == 2 and len(lines) == 1 and message.format(p=p) in lines[0], r.output
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("args,message", [
    (["--depths", "1-10000000000"], "depths: range 1-10000000000 is too large"),
    (["--seeds", "0-300000000"], "seeds: range 0-300000000 is too large"),
    (["--depths", "1-1e10"], "depths: '1-1e10' is not a whole number or a range"),
    (["--depths", "1-100", "--seeds", "0-200"], "100 depths × 201 seeds is over 10,000 runs"),
    (["--max-per-class", "2", "--bs", "64"], "the training split has 20 images, fewer than --bs 64, so there is no full batch to train on"),
])
def test_ranges_and_sizes_that_cannot_work_are_refused_at_once(args, message, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    r = runner.invoke(app, ["sweep", "--device", "cpu", *args])
    lines = r.stderr.strip().splitlines()
    assert r.exit_code == 2 and len(lines) == 1 and message in lines[0], r.output
    assert not (tmp_path / "runs").exists()


def test_models_that_is_a_file_is_refused_before_any_run(tmp_path):
    out = tmp_path / "s"
    out.mkdir()
    (out / "models").write_text("not a folder")
    r = sweep(out, "--depths", "1", "--save-models")
    assert r.exit_code == 2 and "models is a file, so models cannot be saved there" in r.stderr
    assert not (out / "results.csv").exists() and (out / "models").read_text() == "not a folder"


def test_a_folder_in_use_by_another_sweep_is_refused(tmp_path):
    from cnn_depth.records import claim_folder

    out = tmp_path / "busy"
    with claim_folder(out):  # as another sweep would hold it
        r = sweep(out, "--depths", "1")
    assert r.exit_code == 2, r.output
    assert r.stderr.strip() == (f"error: {out} is in use by another cnn-depth sweep (pid {os.getpid()} on "
                                f"{os.uname().nodename}, since " + r.stderr.split(", since ")[1].strip())
    assert "wait for it to finish, or use another --out" in r.stderr
    assert not (out / "results.csv").exists()


@pytest.mark.slow
def test_two_sweeps_started_together_on_one_new_folder(tmp_path):
    """Different --epochs at once on a new --out: one sweeps, the other is refused; the rows agree with
    sweep.json (the race that once gave sweep.json epochs=1 and rows epochs=2)."""
    out = tmp_path / "race"
    base = [sys.executable, "-m", "cnn_depth", "sweep", "--depths", "1", "--max-per-class", "10", "--bs", "16",
            "--device", "cpu", "--quiet", "--out", str(out)]
    procs = [subprocess.Popen(base + ["--epochs", e], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for e in ("1", "2")]
    results = [(p.wait(timeout=300), p.stderr.read()) for p in procs]
    codes = sorted(code for code, _ in results)
    assert codes == [0, 2], results
    refused = next(err for code, err in results if code == 2)
    assert ("in use by another cnn-depth sweep" in refused or "holds a sweep with epochs=" in refused), refused
    epochs = json.loads((out / "sweep.json").read_text())["config"]["epochs"]
    assert pd.read_csv(out / "results.csv")["epochs"].tolist() == [epochs]


@pytest.mark.slow
def test_ctrl_c_during_start_up_is_one_line(tmp_path):
    proc = subprocess.Popen([sys.executable, "-m", "cnn_depth", "sweep", "--depths", "1", "--out", str(tmp_path / "x")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(0.5)  # Python is up (its SIGINT handler is set at start), torch and fastai are still loading
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and err.strip().splitlines()[-1].startswith("error: interrupted"), err
    assert not (tmp_path / "x").exists()
