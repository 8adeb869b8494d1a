"""Issue 23, the sweep side: `cnn-depth sweep`, `report` and `explain` on series (GunPoint, array folders) and
volumes (shapes3d) as on images: the 1D/3D family follows the data, --dims/--pad/--fill/--split-seed are settings
(recorded per row, in run ids where they vary), every run of a sweep validates on one split, the lines say
series and volumes, resume, --workers, --seeds auto, and each bad input is one line, exit 2, nothing written."""
import importlib.util
import json
import os
import signal
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from fastai.callback.core import Callback
from typer.testing import CliRunner

from cnn_depth import dataloaders
from cnn_depth.arrays import RandomFlip3d, RandomShift, valid_arrays
from cnn_depth.checkpoint import read_run_model
from cnn_depth.cli import app
from cnn_depth.config import SweepConfig
from cnn_depth.errors import CnnDepthError
from cnn_depth.records import RESULT_COLUMNS
from cnn_depth.sweep import SweepInterrupted, run_sweep

runner = CliRunner()
needs_aeon = pytest.mark.skipif(importlib.util.find_spec("aeon") is None,
                                reason="needs aeon (pip install 'cnn-depth[series]')")
QUICK = ["--epochs", "1", "--device", "cpu", "--workers", "1", "--threads", "1"]
API = dict(epochs=1, device="cpu", workers=1, threads=1, quiet=True)


def sweep(out, *args):
    return runner.invoke(app, ["sweep", *args, *QUICK, "--out", str(out)])


def series(k: int, i: int, length: int = 32) -> np.ndarray:
    """A noisy sine whose frequency is the class."""
    rng = np.random.default_rng(100 * k + i)
    t = np.linspace(0, 2 * np.pi, length)
    return (np.sin((k + 1) * t + rng.uniform(0, 1)) + rng.normal(0, 0.2, length)).astype(np.float32)


def series_folder(root, n=12, split=False, make=series):
    """``root/<class>/NNN.npy`` (one folder of classes, split at random), or train/ and valid/ with ``split``."""
    for part in (("train", "valid") if split else ("",)):
        for k, c in enumerate(("a", "b")):
            d = root / part / c
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                np.save(d / f"{i:03d}.npy", make(k, i + (1000 if part == "valid" else 0)))
    return root


# ---------------------------------------------------------------------------------------------------------
# Series through the command line: rows, lines, report, explain


@pytest.fixture(scope="module")
def gunpoint(tmp_path_factory):
    if importlib.util.find_spec("aeon") is None:
        pytest.skip("needs aeon (pip install 'cnn-depth[series]')")
    out = tmp_path_factory.mktemp("gp") / "sweep"
    r = sweep(out, "--dataset", "GunPoint", "--depths", "1", "2", "--bs", "16", "--save-models")
    return out, r


def test_a_gunpoint_sweep_trains_the_1d_family_and_says_series(gunpoint):
    out, r = gunpoint
    assert r.exit_code == 0, r.output
    lines = r.stdout.splitlines()
    assert lines[0].startswith("sweep: 2 runs (2 to do) on cpu, in this process, 1 torch thread")
    assert lines[0].endswith(f"; 50 train / 150 valid series; writing to {out}")
    done = [line for line in lines if line.startswith("done ")]
    assert len(done) == 2 and all(" series/s)  ok" in line and "img/s" not in line for line in done), done
    group = next(line for line in lines if line.startswith("bn · GunPoint · 1 ep"))
    assert "(lr 0.003 · bs 16 · all series · no augment · 1 threads · cpu · fp32 · from scratch · no transfer)" in \
        group and "images" not in group and "pipeline" not in group
    assert "intervals: accuracy: 95% Wilson interval over the validation series (1 seed" in r.stdout
    df = pd.read_csv(out / "results.csv", keep_default_na=False)
    assert list(df.columns) == RESULT_COLUMNS and df["run_id"].tolist() == ["bn-d1-s0", "bn-d2-s0"]
    assert (df["kind"] == "series").all() and (df["dims"] == "").all() and (df["fill"] == "").all()
    assert (df["pad"] == False).all() and (df["split_seed"] == 0).all()  # noqa: E712
    assert (df["valid_images"] == 150).all() and (df["train_images"] == 48).all()  # 50 series, bs 16: 3 batches
    # the 1D family: bn depth 1 is one conv of 3 taps (1 -> 16 channels) + BN + a linear head
    assert df["params"].tolist()[0] == 1 * 16 * 3 + 2 * 16 + 16 * 2 + 2
    meta = json.loads((out / "sweep.json").read_text())["config"]
    assert (meta["dims"], meta["pad"], meta["fill"], meta["split_seed"]) == (None, False, None, 0)
    summary = pd.read_csv(out / "summary.csv")
    assert (summary["kind"] == "series").all() and summary["valid_images"].tolist() == [150, 150]


def test_report_and_explain_on_a_series_sweep(gunpoint, tmp_path):
    out, _ = gunpoint
    r = runner.invoke(app, ["report", str(out), "--out", str(tmp_path / "rep")])
    assert r.exit_code == 0, r.output
    assert "bn · GunPoint · 1 ep   (lr 0.003 · bs 16 · all series ·" in r.stdout
    assert (tmp_path / "rep" / "comparison.png").stat().st_size > 0
    r = runner.invoke(app, ["explain", str(out), "--depth", "2", "--index", "3", "--out", str(tmp_path / "one")])
    assert r.exit_code == 0, r.output
    assert "bn-d2-s0: validation series 3 (true: " in r.stderr
    assert sorted(p.name for p in (tmp_path / "one").iterdir()) == ["feature_maps.png", "gradcam.png", "input.png"]
    r = runner.invoke(app, ["explain", str(out), "--depths", "all", "--out", str(tmp_path / "all")])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "all" / "depths.png").stat().st_size > 0


def test_a_rerun_adds_nothing_and_other_array_options_are_another_sweep(gunpoint):
    out, _ = gunpoint
    before = (out / "results.csv").read_bytes()
    r = sweep(out, "--dataset", "GunPoint", "--depths", "1", "2", "--bs", "16", "--save-models", "--quiet")
    assert r.exit_code == 0, r.output
    assert (out / "results.csv").read_bytes() == before
    r = sweep(out, "--dataset", "GunPoint", "--depths", "1", "2", "--bs", "16", "--pad")
    assert r.exit_code == 2 and r.stderr.strip().splitlines() == [
        f"error: {out} holds a sweep with pad=False, not True; use another --out (or --no-pad to resume that sweep)"]


@needs_aeon
def test_seeds_auto_on_series(tmp_path):
    out = tmp_path / "auto"
    r = sweep(out, "--dataset", "GunPoint", "--depths", "1", "2", "--bs", "16", "--seeds", "auto", "--min-seeds", "2",
              "--max-seeds", "3", "--quiet")
    assert r.exit_code == 0, r.output
    df = pd.read_csv(out / "results.csv")
    assert set(df["seed"]) <= {0, 1, 2} and df.groupby("depth").size().min() >= 2 and (df["kind"] == "series").all()
    assert "seeds until the answer is clear: 2-3 per depth" in r.stdout and "all series" in r.stdout


# ---------------------------------------------------------------------------------------------------------
# Volumes: shapes3d


def test_a_shapes3d_sweep_trains_the_3d_family_augments_and_explains_in_slices(tmp_path):
    out = tmp_path / "vol"
    r = sweep(out, "--dataset", "shapes3d", "--depths", "1", "2", "--bs", "8", "--max-per-class", "8", "--augment",
              "--save-models")
    assert r.exit_code == 0, r.output
    assert "; 24 train / 24 valid volumes; writing to" in r.stdout and " vol/s)  ok" in r.stdout
    assert "bn · shapes3d · 1 ep   (lr 0.003 · bs 8 · 8/class · augment · 1 threads" in r.stdout
    assert "95% Wilson interval over the validation volumes" in r.stdout and "images" not in r.stdout
    df = pd.read_csv(out / "results.csv")
    assert (df["kind"] == "volume").all() and df["augment"].all() and (df["valid_images"] == 24).all()
    r = runner.invoke(app, ["explain", str(out), "--depth", "2", "--out", str(tmp_path / "x")])
    assert r.exit_code == 0, r.output
    assert "bn-d2-s0: validation volume 0 (true: " in r.stderr
    assert (tmp_path / "x" / "feature_maps.png").stat().st_size > 0


class BatchTfms(Callback):
    """Records the training loader's batch transforms (and the split each applies to) at every epoch."""

    seen = []

    def before_train(self):
        BatchTfms.seen.append(tuple((type(t), getattr(t, "split_idx", None)) for t in self.dls.train.after_batch.fs))


@pytest.mark.parametrize("dataset, tfm", [("shapes3d", RandomFlip3d), ("GunPoint", RandomShift)])
def test_augment_on_arrays_is_the_data_sides_device_augmentation(tmp_path, dataset, tfm):
    if dataset == "GunPoint" and importlib.util.find_spec("aeon") is None:
        pytest.skip("needs aeon")
    BatchTfms.seen = []
    run_sweep(dataset=dataset, depths=[1], bs=8, max_per_class=8, augment=True, out=str(tmp_path / "a"),
              cbs=[BatchTfms()], **API)
    tfms, = set(BatchTfms.seen)
    assert (tfm, 0) in tfms  # split_idx 0: training batches only


# ---------------------------------------------------------------------------------------------------------
# The Python API: one validation split for every run; the array settings as a grid


def test_every_run_validates_on_the_split_seeds_split_not_its_own_seed(tmp_path):
    data = series_folder(tmp_path / "one")  # one folder of classes: split at random, 20% of each class
    out = tmp_path / "s"
    df = run_sweep(dataset=str(data), depths=[1], seeds=[0, 1], bs=8, split_seed=5, save_models=True,
                   out=str(out), **API)
    assert df["split_seed"].tolist() == [5, 5] and df["valid_images"].tolist() == [4, 4]  # 2 of 12 per class
    expected = dataloaders(data, bs=8, seed=5, device="cpu").valid_ds.items
    for rid in ("bn-d1-s0", "bn-d1-s1"):
        source = read_run_model(out / "models" / f"{rid}.pt")["source"]
        assert source["seed"] == 5
        assert [c for _, c in valid_arrays(source)] == [p.parent.name for p in expected]
    other = dataloaders(data, bs=8, seed=6, device="cpu").valid_ds.items
    assert list(other) != list(expected)  # the seed decides the split


def test_array_settings_vary_in_a_grid_with_tagged_run_ids(tmp_path):
    data = series_folder(tmp_path / "one")
    cfg = SweepConfig(dataset=str(data), depths=[1], split_seed=[1, 2], bs=8, **API)
    assert cfg.default_out_name().endswith("-e1-bs8-split1_2")
    df = run_sweep(cfg, out=str(tmp_path / "g"))
    assert df["run_id"].tolist() == ["bn-d1-s0-split1", "bn-d1-s0-split2"] and df["split_seed"].tolist() == [1, 2]
    labels = df.attrs["summary"]["group"].unique().tolist()
    assert labels == ["bn · split seed 1", "bn · split seed 2"]
    assert SweepConfig(dims=1, pad=True, fill=0).default_out_name() == "cifar10-sample-bn-d2-4-s0-e5-dims1-pad-fill0"


def test_pad_and_fill_make_ragged_and_missing_series_trainable(tmp_path):
    def ragged(k, i):
        a = series(k, i, 24 + (i % 3) * 4)
        if i == 4:
            a[5] = np.nan
        return a

    data = series_folder(tmp_path / "r", split=True, n=8, make=ragged)
    df = run_sweep(dataset=str(data), depths=[1, 2], bs=8, pad=True, fill=0.0, out=str(tmp_path / "o"), **API)
    assert (df["status"] == "ok").all() and df["pad"].all() and (df["fill"] == 0).all()
    assert "all series" in df.attrs["summary"].attrs["context"] and "padded · NaN→0" in \
        df.attrs["summary"].attrs["context"]


def test_dims_2_reads_arrays_as_images_and_trains_the_2d_family(tmp_path):
    data = series_folder(tmp_path / "d2", split=True, n=4, make=lambda k, i: np.stack([series(k, i, 16)] * 4))
    r = sweep(tmp_path / "o", "--data", str(data), "--dims", "2", "--depths", "1", "--bs", "4", "--quiet")
    assert r.exit_code == 0, r.output
    df = pd.read_csv(tmp_path / "o" / "results.csv")
    assert df["kind"].tolist() == ["image"] and df["dims"].tolist() == [2]
    assert df["params"].tolist() == [1 * 16 * 9 + 2 * 16 + 16 * 2 + 2]  # one 3×3 conv on a 1-channel 4×16 image
    assert f"bn · d2 · 1 ep   (from {data} · lr 0.003 · bs 4 · all images · fast pipeline · no augment · 1 " \
           "threads · cpu · fp32 · from scratch · no transfer · dims 2)" in r.stdout


class StopSecondRun(Callback):
    """Ctrl-C during the second run of a sweep (after its first epoch)."""

    runs = 0

    def after_create(self):  # once per run: each run builds its own Learner
        StopSecondRun.runs += 1

    def after_epoch(self):
        if StopSecondRun.runs == 2:
            raise KeyboardInterrupt("SIGINT")


@needs_aeon
def test_an_interrupted_series_sweep_keeps_its_rows_and_resumes(tmp_path):
    out = tmp_path / "i"
    StopSecondRun.runs = 0
    with pytest.raises(SweepInterrupted, match=r"during run 2/3 \(bn-d2-s0\); 1 finished run\(s\) are saved"):
        run_sweep(dataset="GunPoint", depths=[1, 2, 3], bs=16, epochs=2, out=str(out), cbs=[StopSecondRun()],
                  **{k: v for k, v in API.items() if k != "epochs"})
    done = pd.read_csv(out / "results.csv")
    assert done["run_id"].tolist() == ["bn-d1-s0"]
    df = run_sweep(dataset="GunPoint", depths=[1, 2, 3], bs=16, epochs=2, out=str(out),
                   **{k: v for k, v in API.items() if k != "epochs"})
    assert df["run_id"].tolist() == ["bn-d1-s0", "bn-d2-s0", "bn-d3-s0"] and (df["status"] == "ok").all()
    assert pd.read_csv(out / "results.csv").iloc[:1].equals(done)


# ---------------------------------------------------------------------------------------------------------
# Bad input: one line, exit 2, nothing written


def _bad_cases(tmp_path):
    ragged = series_folder(tmp_path / "ragged", split=True, n=4, make=lambda k, i: series(k, i, 20 + 4 * (i == 3)))
    nan = series_folder(tmp_path / "nan", split=True, n=4,
                        make=lambda k, i: np.where(np.arange(32) == 7, np.nan, series(k, i)) if i == 2
                        else series(k, i))
    pickled = series_folder(tmp_path / "pickled", split=True, n=4)
    np.save(pickled / "train" / "a" / "002.npy", np.array([{"x": 1}], dtype=object), allow_pickle=True)
    vols = tmp_path / "vols"
    for split in ("train", "valid"):
        for k, c in enumerate("ab"):
            (vols / split / c).mkdir(parents=True)
            for i in range(3):
                np.save(vols / split / c / f"{i}.npy", np.zeros((6, 6, 6 + (i == 2 and c == "b")), np.float32) + k)
    split = series_folder(tmp_path / "split", split=True, n=4)
    return [
        (["--data", str(ragged)], "has 24 time steps, ", "pad them with zeros to the longest"),
        (["--data", str(nan)], "has 1 missing values (NaN", "--fill 0"),
        (["--data", str(pickled)], "holds an object array, which is not loaded", "np.save"),
        (["--data", str(vols)], "has shape (6, 6, 7), ", "resample them to one"),
        (["--data", str(split), "--arch", "simplecnn"], "arch simplecnn takes 2D inputs (images) only, not 1D series",
         "plain, bn, residual, mlp"),
        (["--dataset", "shapes3d", "--arch", "simplecnn"], "not 3D volumes", "plain, bn, residual, mlp"),
        (["--data", str(split), "--dims", "3"], "is a 1-dim array (32,), not a volume", ""),
        (["--data", str(split), "--dims", "4"], "dims must be 1 (series), 2 (images) or 3 (volumes), got 4", ""),
        (["--data", str(split), "--split-seed", "2"], "--split-seed 2 picks a random validation split",
         "has split folders of its own (train/, valid/): leave out --split-seed"),
        (["--data", str(split), "--pipeline", "pil"], "pipeline= is for images", ""),
        (["--data", str(split), "--fill", "nan"], "fill must be a finite number", ""),
        (["--dataset", "cifar10-sample", "--pad"], "pad= is for series and arrays", ""),
        (["--dataset", "cifar10-sample", "--dims", "1"], "dims=1 is for arrays", ""),
        (["--data", str(split), "--bs", "64"], "the training split has 8 series, fewer than --bs 64", "more series"),
    ]


def test_bad_array_input_is_one_line_exit_2_and_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for args, message, fix in _bad_cases(tmp_path / "in"):
        out = tmp_path / "out"
        more = ([] if "--arch" in args else ["--depths", "1"]) + ([] if "--bs" in args else ["--bs", "4"])
        r = runner.invoke(app, ["sweep", *args, *more, *QUICK, "--out", str(out)])
        lines = r.stderr.strip().splitlines()
        assert r.exit_code == 2, (args, r.output)
        assert len(lines) == 1 and message in lines[0] and fix in lines[0], (args, r.output)
        assert "Traceback" not in r.output and not out.exists() and not (tmp_path / "runs").exists(), args


def test_bad_array_settings_in_a_toml_are_one_line(tmp_path):
    for toml, message in (("dims = true", "dims in {p} must be a whole number, got True"),
                          ("dims = 0", "dims must be 1 (series), 2 (images) or 3 (volumes), got 0"),
                          ('fill = "zero"', "fill in {p} must be a number, got 'zero'"),
                          ("pad = 1", "pad in {p} must be true or false, got 1"),
                          ("split_seed = -1", "split_seed must be a whole number ≥ 0, got -1")):
        p = tmp_path / "s.toml"
        p.write_text(toml + "\n")
        with pytest.raises(CnnDepthError) as e:
            SweepConfig.from_toml(p)
        assert message.format(p=p) in str(e.value), (toml, str(e.value))


# ---------------------------------------------------------------------------------------------------------
# Local workers, and Ctrl-C with them, in real processes


@pytest.mark.slow
@needs_aeon
def test_two_workers_and_ctrl_c_then_resume_on_series(tmp_path):
    out = tmp_path / "w"
    cmd = [sys.executable, "-m", "cnn_depth", "sweep", "--dataset", "BasicMotions", "--depths", "1", "2", "4",
           "--seeds", "0", "1", "--epochs", "30", "--bs", "8", "--device", "cpu", "--workers", "2", "--threads", "1",
           "--out", str(out)]
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    seen = []
    for line in proc.stdout:
        seen.append(line)
        if line.startswith("done "):
            proc.send_signal(signal.SIGINT)
            break
    rest, err = proc.communicate(timeout=300)
    text = "".join(seen) + rest
    assert seen[0].startswith("sweep: 6 runs (6 to do) on cpu, 2 runs at once, 1 torch thread each"), text
    assert "; 40 train / 40 valid series; writing to" in seen[0] and "on worker 2" in text
    assert proc.returncode == 130 and "Traceback" not in err, err
    assert err.strip().splitlines()[-1].startswith("error: interrupted (SIGINT)")
    kept = pd.read_csv(out / "results.csv")
    assert 1 <= len(kept) < 6 and (kept["status"] == "ok").all()
    r = runner.invoke(app, cmd[3:] + ["--quiet"])
    assert r.exit_code == 0, r.output
    full = pd.read_csv(out / "results.csv")
    assert len(full) == 6 and full["run_id"].is_unique and (full["kind"] == "series").all()
    assert full.set_index("run_id").loc[kept["run_id"], "finished"].tolist() == kept["finished"].tolist()
