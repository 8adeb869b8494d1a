"""run_sweep from Python: resume after an interrupt, failures and retries, lr_find, seeds, durable rows."""
import pandas as pd
import re

import pytest
from fastai.callback.core import Callback

from cnn_depth import CnnDepthError, SweepConfig, run_sweep
from cnn_depth.config import compact_ints, parse_int_list, read_toml
from cnn_depth.records import RESULT_COLUMNS, read_rows, write_rows
from cnn_depth.sweep import SweepInterrupted

SMALL = dict(max_per_class=10, bs=16, epochs=1, device="cpu", quiet=True, workers=1)  # serial: see test_parallel.py


class RaiseDuringRun(Callback):
    """Raise ``exc`` in the middle of the ``run``-th fit this callback sees (1-based)."""

    def __init__(self, run: int, exc):
        self.at_run, self.exc, self.fits = run, exc, 0  # not self.run: fastai's switch for running a callback

    def before_train(self):  # learn.validate() has no training phase, so only fits are counted
        if self.epoch == 0:
            self.fits += 1

    def after_batch(self):
        if self.training and self.fits == self.at_run and self.iter == 2:
            raise self.exc


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """An uninterrupted sweep, to compare the resumed one with."""
    return run_sweep(depths=[1, 2, 3], out=str(tmp_path_factory.mktemp("straight")), **SMALL)


def test_an_interrupt_outside_the_runs_says_what_the_folder_holds(tmp_path, monkeypatch):
    """A Ctrl-C that lands after the last run ended (the trackers closing, the engine shutting down), or before
    the first one started, leaves run_sweep as a SweepInterrupted whose count is the folder's rows (CI once
    caught the CLI saying "nothing was written" with both rows on disk)."""
    import cnn_depth.sweep as sweep_mod
    from cnn_depth.tracking import Trackers

    def interrupt_on_close(self, *exc):
        raise KeyboardInterrupt("SIGINT")

    monkeypatch.setattr(Trackers, "__exit__", interrupt_on_close)
    out = tmp_path / "after"
    with pytest.raises(SweepInterrupted, match=r"^interrupted \(SIGINT\); 2 finished run\(s\) are saved in .*after; "
                       r"rerun the same command to resume$"):
        run_sweep(depths=[1, 2], out=str(out), **SMALL)
    assert [r["run_id"] for r in read_rows(out / "results.csv")[1]] == ["bn-d1-s0", "bn-d2-s0"]
    monkeypatch.undo()

    def interrupt_loading(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(sweep_mod, "_driver_dataloaders", interrupt_loading)
    with pytest.raises(SweepInterrupted, match=r"^interrupted before any run finished; no finished run is saved in .*before$"):
        run_sweep(depths=[1, 2], out=str(tmp_path / "before"), **SMALL)
    assert not (tmp_path / "before").exists()  # the folder it made is gone again
    with pytest.raises(SweepInterrupted, match=r"^interrupted; 2 finished run\(s\) are saved in .*after"):
        run_sweep(depths=[1, 2, 3], out=str(out), **SMALL)  # earlier calls' rows count too


@pytest.mark.slow
def test_interrupted_sweep_resumes_to_the_full_set(tmp_path, straight):
    out = tmp_path / "sweep"
    with pytest.raises(SweepInterrupted, match=r"during run 2/3 \(bn-d2-s0\); 1 finished run\(s\) are saved"):
        run_sweep(depths=[1, 2, 3], out=str(out), cbs=[RaiseDuringRun(2, KeyboardInterrupt())], **SMALL)
    header, rows = read_rows(out / "results.csv")
    assert header == RESULT_COLUMNS and [r["run_id"] for r in rows] == ["bn-d1-s0"]
    assert {r["run_id"] for r in read_rows(out / "history.csv")[1]} == {"bn-d1-s0"}
    first_line = (out / "results.csv").read_text().splitlines()[1]

    df = run_sweep(depths=[1, 2, 3], out=str(out), **SMALL)
    assert list(df["run_id"]) == ["bn-d1-s0", "bn-d2-s0", "bn-d3-s0"]  # no duplicates, in run order
    assert (out / "results.csv").read_text().splitlines()[1] == first_line  # the finished row untouched
    assert (df["status"] == "ok").all()
    history = pd.read_csv(out / "history.csv")
    assert sorted(history["run_id"]) == ["bn-d1-s0", "bn-d2-s0", "bn-d3-s0"]
    # activations.csv: one row per conv layer of each finished run, none for the interrupted attempt
    activations = pd.read_csv(out / "activations.csv")
    assert activations.groupby("run_id").size().to_dict() == {"bn-d1-s0": 1, "bn-d2-s0": 2, "bn-d3-s0": 3}
    assert activations["frac_zero"].between(0, 1).all() and (out / "activations.png").stat().st_size > 0
    assert not (out / "models").exists()  # models are kept only with save_models
    # A run depends on its seed only, not on which runs came before it in this process.
    assert df["accuracy"].tolist() == straight["accuracy"].tolist()
    assert df["valid_loss"].tolist() == straight["valid_loss"].tolist()


@pytest.mark.slow
def test_failed_run_is_recorded_sweep_goes_on_and_rerun_replaces_it(tmp_path):
    out = str(tmp_path / "sweep")
    df = run_sweep(depths=[1, 2], out=out, cbs=[RaiseDuringRun(1, RuntimeError("CUDA out of memory (simulated)"))],
                   **SMALL)
    assert df["status"].tolist() == ["failed", "ok"]
    assert df.loc[0, "error"].startswith("RuntimeError: ") and "CUDA out of memory (simulated)" in df.loc[0, "error"]
    assert df.attrs["summary"]["not_ok"].tolist() == [1, 0]

    df = run_sweep(depths=[1, 2], out=out, **SMALL)  # the failed run is retried; its new row replaces the old
    assert df["run_id"].tolist() == ["bn-d2-s0", "bn-d1-s0"] and (df["status"] == "ok").all()
    history = pd.read_csv(tmp_path / "sweep" / "history.csv")
    assert history.groupby("run_id").size().to_dict() == {"bn-d1-s0": 1, "bn-d2-s0": 1}
    activations = pd.read_csv(tmp_path / "sweep" / "activations.csv")
    assert activations.groupby("run_id").size().to_dict() == {"bn-d1-s0": 1, "bn-d2-s0": 2}


@pytest.mark.slow
def test_lr_find_once_per_depth_shared_by_its_seeds(tmp_path):
    df = run_sweep(depths=[2], seeds=[0, 1], lr="find", out=str(tmp_path / "s"), **SMALL)
    assert df["seed"].tolist() == [0, 1] and (df["status"] == "ok").all()
    assert df["lr"].nunique() == 1 and 1e-7 < df["lr"][0] < 10
    assert sorted(p.name for p in (tmp_path / "s").iterdir() if p.name.startswith(".")) == [".sweep.lock"]  # lr_find cleaned up


@pytest.mark.slow
def test_folder_of_another_config_is_refused_before_any_work(tmp_path, image_folder_factory):
    out = tmp_path / "s"
    out.mkdir()
    (out / "sweep.json").write_text('{"config": {"dataset": "cifar10-sample", "arch": "bn", "epochs": 1, '
                                    '"lr": 0.003, "bs": 16, "max_per_class": null}}')
    with pytest.raises(CnnDepthError, match=r"max_per_class=None, not 10; use another --out \(or leave out "
                                            r"--max-per-class to resume that sweep\)"):
        run_sweep(depths=[1], out=str(out), **SMALL)
    with pytest.raises(CnnDepthError, match=r"arch='bn', not 'plain'; use another --out \(or --arch bn"):
        run_sweep(depths=[1], out=str(out), **{**SMALL, "max_per_class": None, "arch": "plain"})
    empty = image_folder_factory("unreadable", classes=("a",))  # one class: refused by dataloaders
    with pytest.raises(CnnDepthError, match="only one class"):
        run_sweep(depths=[1], dataset=str(empty), out=str(tmp_path / "new"), **SMALL)
    assert not (tmp_path / "new").exists()


def test_config_object_and_keywords_mirror_the_fields(tmp_path):
    cfg = SweepConfig(depths=[2, 3, 4], seeds=[0, 2], epochs=3, lr=3e-3)
    assert cfg.depths == [2, 3, 4] and cfg.lr == 3e-3 and cfg.out_dir.as_posix() == "runs/cifar10-sample-bn-d2-4-s0_2-e3"
    assert SweepConfig(arch="simplecnn").depths == [3]
    assert SweepConfig(max_per_class=50, lr="find", bs=32).default_out_name() == \
        "cifar10-sample-bn-d2-4-s0-e5-lrfind-bs32-m50"


@pytest.mark.parametrize("text,expected", [
    ("2 3 4", [2, 3, 4]), ("2,3,4", [2, 3, 4]), ("2-8", list(range(2, 9))), ("1,3-5 8", [1, 3, 4, 5, 8]),
    ([4, "2-3", 4], [4, 2, 3]),
])
def test_int_lists(text, expected):
    assert parse_int_list(text) == expected


def test_compact_names():
    assert compact_ints([2, 3, 4]) == "2-4" and compact_ints([2, 4, 8]) == "2_4_8" and compact_ints([1, 2, 3, 8]) == "1-3_8"


@pytest.mark.parametrize("kwargs,message", [
    (dict(depths="2-4"), "depths must be a non-empty list of whole numbers, e.g. depths=[2, 3, 4], got '2-4'"),
    (dict(depths=[0]), "depth must be a whole number ≥ 1"),
    (dict(depths=[2.0]), "depth must be a whole number ≥ 1, got 2.0"),
    (dict(depths=[]), "depths must be a non-empty list"),
    (dict(seeds=[-1]), "seeds must be a whole number ≥ 0"),
    (dict(seeds=[True]), "seeds must be a whole number ≥ 0, got True"),
    (dict(epochs=0), "epochs must be a whole number ≥ 1"),
    (dict(epochs="5"), "epochs must be a whole number ≥ 1, got '5'"),
    (dict(lr=-1), "lr must be a positive number"),
    (dict(lr="3e-3"), "lr must be a positive number"),  # library functions take numbers
    (dict(arch="vgg"), "unknown arch 'vgg'"),
    (dict(dataset="imagenet9"), "unknown dataset 'imagenet9'"),
    (dict(dataset="/no/such/folder"), "no such file or folder"),
    (dict(device="gpu"), "device must be one of auto, cpu, cuda"),
    (dict(arch="simplecnn", depths=[4]), "fixed depth of 3"),
    (dict(augment="false"), "augment must be true or false, got 'false'"),
    (dict(depths=list(range(1, 101)), seeds=list(range(101))), "100 depths × 101 seeds is over 10,000 runs"),
])
def test_bad_config_is_one_line(kwargs, message):
    with pytest.raises(CnnDepthError, match=re.escape(message)) as e:
        SweepConfig(**kwargs)
    assert "\n" not in str(e.value)


def test_toml_unknown_keys_listed(tmp_path):
    p = tmp_path / "c.toml"
    p.write_text('depths = "2-4"\nmax-per-class = 5\nlayers = 3\n')
    with pytest.raises(CnnDepthError, match=r"unknown key\(s\) layers in .*; valid keys: depths, seeds, ") as e:
        read_toml(p)
    valid = str(e.value).split("valid keys: ")[1]
    assert {"epochs", "max-per-class", "arch", "min-seeds"} <= {k.strip() for k in valid.split(",")} or \
        {"epochs", "max_per_class", "arch", "min_seeds"} <= {k.strip() for k in valid.split(",")}
    p.write_text('depths = "2-4"\nmax-per-class = 5\n')
    assert SweepConfig.from_toml(p, epochs=2).max_per_class == 5


def test_write_rows_appends_replaces_and_survives_a_torn_line(tmp_path):
    path = tmp_path / "r.csv"
    cols = ["run_id", "x"]
    write_rows(path, cols, [dict(run_id="a", x=1)])
    write_rows(path, cols, [dict(run_id="b", x=2)])
    write_rows(path, cols, [dict(run_id="a", x=3)])  # a retry: replaces a's row
    assert [(r["run_id"], r["x"]) for r in read_rows(path)[1]] == [("b", "2"), ("a", "3")]
    with open(path, "a") as f:
        f.write("c")  # a line torn by a crash, no newline
    write_rows(path, cols, [dict(run_id="d", x=4)])
    assert [r["run_id"] for r in read_rows(path)[1]] == ["b", "a", "d"]
    with open(path, "a") as f:
        f.write("e,12")  # cut inside its last field: every field is there, but not the end of the line
    write_rows(path, cols, [dict(run_id="f", x=6)])
    assert [(r["run_id"], r["x"]) for r in read_rows(path)[1]] == [("b", "2"), ("a", "3"), ("d", "4"), ("f", "6")]


@pytest.mark.slow
def test_pipeline_and_augment_are_recorded_and_fix_the_folder(tmp_path):
    out = str(tmp_path / "pil")
    df = run_sweep(depths=[1], out=out, pipeline="pil", augment=True, **SMALL)
    assert df.loc[0, "pipeline"] == "pil" and bool(df.loc[0, "augment"]) and df.loc[0, "status"] == "ok"
    with pytest.raises(CnnDepthError, match=r"holds a sweep with pipeline='pil', not 'fast'.*--pipeline pil"):
        run_sweep(depths=[1], out=out, augment=True, **SMALL)
    with pytest.raises(CnnDepthError, match=r"augment=True, not False.*--augment to resume"):
        run_sweep(depths=[1], out=out, pipeline="pil", **SMALL)
    with pytest.raises(CnnDepthError, match="pipeline must be one of fast, pil"):
        SweepConfig(pipeline="dali")


@pytest.mark.slow
def test_a_row_describes_its_run(straight):
    """Every setting that decides the numbers is on the row; accuracy is correct / valid_images, exactly."""
    df = straight
    assert (df["source"] == "cifar10-sample").all() and (df["lr_setting"] == 3e-3).all()
    from cnn_depth.plan import available_cpus

    # threads auto, serially: the cores other processes left free when it started, one count for every row
    assert (df["max_per_class"] == 10).all() and df["threads"].nunique() == 1
    assert 1 <= df["threads"].iloc[0] <= available_cpus()
    assert (df["classes"] == 10).all() and (df["valid_images"] == 100).all()  # 10 per class in the valid split
    assert (df["accuracy"] == df["correct"] / df["valid_images"]).all()
    assert (df["error_rate"] == (df["valid_images"] - df["correct"]) / df["valid_images"]).all()
    assert df["macs"].tolist() == [442_528, 1_622_336, 2_802_304]  # see test_costs: each conv and the head
    assert (df["peak_memory_mb"] > 0).all()
    history = pd.read_csv(straight.attrs["out"] + "/history.csv")
    last = history.groupby("run_id")["accuracy"].last()
    # fastai's accuracy of the last epoch (a float32 mean) is the same count, up to float32 rounding
    assert (abs(last[df["run_id"]].to_numpy() - df["accuracy"].to_numpy()) < 1e-6).all()
    text = (pd.io.common.Path(straight.attrs["out"]) / "results.csv").read_text()
    assert "0000000" not in text and "9999999" not in text  # no float32 noise written out


@pytest.mark.slow
def test_a_training_split_smaller_than_the_batch_is_refused_before_any_run(tmp_path):
    out = tmp_path / "s"
    for lr in (3e-3, "find"):  # --lr find used to fail with ZeroDivisionError here
        with pytest.raises(CnnDepthError, match=r"the training split has 20 images, fewer than --bs 32, so there is "
                                                r"no full batch to train on; use --bs 20 or less, or more images "
                                                r"\(--max-per-class 2 keeps 20\)"):
            run_sweep(depths=[1], out=str(out), **{**SMALL, "max_per_class": 2, "bs": 32, "lr": lr})
    assert not out.exists()


@pytest.mark.slow
def test_a_run_that_trains_on_no_batch_is_failed_not_diverged(tmp_path):
    """train_run on its own (as another driver may call it): zero batches is said plainly."""
    from cnn_depth import dataloaders
    from cnn_depth.run import resolve_device, train_run

    dls = dataloaders("cifar10-sample", bs=32, max_per_class=2, device="cpu")
    cfg = SweepConfig(depths=[1], **{**SMALL, "max_per_class": 2, "bs": 32})
    result = train_run(dls, cfg, 1, 0, 3e-3, resolve_device("cpu"), tmp_path)
    assert result.row["status"] == "failed" and result.row["train_images"] == 0
    assert result.row["error"] == ("no training batch: the training split has 20 images, fewer than bs 32; use a "
                                   "smaller bs or more images")


@pytest.mark.slow
def test_rerun_with_save_models_saves_the_models_it_lacked(tmp_path):
    out = tmp_path / "s"
    first = run_sweep(depths=[1, 2], out=str(out), **SMALL)
    assert not (out / "models").exists()
    again = run_sweep(depths=[1, 2], out=str(out), save_models=True, **SMALL)
    assert sorted(p.name for p in (out / "models").iterdir()) == ["bn-d1-s0.pt", "bn-d2-s0.pt"]
    # the same seeds and settings: the same numbers, now with the model that made them
    assert again.set_index("run_id")["accuracy"].to_dict() == first.set_index("run_id")["accuracy"].to_dict()
    rows = (out / "results.csv").read_text()
    run_sweep(depths=[1, 2], out=str(out), save_models=True, **SMALL)  # every model there: nothing to do
    assert (out / "results.csv").read_text() == rows


@pytest.mark.slow
def test_counting_macs_leaves_the_runs_random_numbers_alone(tmp_path):
    """MACs are counted on a model built once per process: the first run of a depth and a later one with the
    same seed must see the same random numbers (augmentation draws from torch's RNG)."""
    from cnn_depth.run import _macs

    _macs.cache_clear()
    settings = dict(SMALL, depths=[2], augment=True)
    first = run_sweep(out=str(tmp_path / "a"), **settings)
    again = run_sweep(out=str(tmp_path / "b"), **settings)  # MACs of depth 2 already known: nothing is built
    assert first["valid_loss"].tolist() == again["valid_loss"].tolist()
    assert first["accuracy"].tolist() == again["accuracy"].tolist()


class FailBeforeFit(Callback):
    """Every fit fails before its first batch, as a broken callback or a model that cannot train would."""

    def before_train(self):
        raise RuntimeError("this callback refuses to train")


# fastai's wrapping of a callback's exception, as the row records it (on one line)
WRAPPED = ("RuntimeError: Exception occured in `FailBeforeFit` when calling event `before_train`: this callback "
           "refuses to train")


class DefinedInMain(Callback):
    """A callback as a script or notebook defines it (its class lives in __main__)."""


DefinedInMain.__module__ = "__main__"


@pytest.mark.slow
def test_a_sweep_whose_every_run_fails_raises_one_line_and_keeps_the_rows(tmp_path):
    from cnn_depth.errors import SweepFailed

    out = tmp_path / "s"
    with pytest.raises(SweepFailed) as e:
        run_sweep(depths=[1, 2], out=str(out), cbs=[FailBeforeFit()], **SMALL)
    assert str(e.value) == (f"all 2 runs of this sweep failed, none trained (first, bn-d1-s0: {WRAPPED}); the rows "
                            f"are in {out / 'results.csv'}")
    rows = pd.read_csv(out / "results.csv")
    assert rows["status"].tolist() == ["failed", "failed"] and e.value.results["run_id"].tolist() == rows["run_id"].tolist()
    assert (out / "summary.csv").exists()
    # one failure among ok runs is not a failed sweep: rows say which, as before
    df = run_sweep(depths=[1, 2], out=str(tmp_path / "t"), cbs=[RaiseDuringRun(1, RuntimeError("x"))], **SMALL)
    assert df["status"].tolist() == ["failed", "ok"]


@pytest.mark.slow
def test_cli_sweep_whose_every_run_fails_exits_1_with_that_line(tmp_path, monkeypatch):
    """The CLI has no callback option: its run_sweep is given the failing callback; the runs really train."""
    import functools

    from typer.testing import CliRunner

    import cnn_depth.sweep
    from cnn_depth.cli import app

    monkeypatch.setattr(cnn_depth.sweep, "run_sweep", functools.partial(run_sweep, cbs=[FailBeforeFit()]))
    out = tmp_path / "s"
    r = CliRunner().invoke(app, ["sweep", "--depths", "1", "2", "--max-per-class", "10", "--bs", "16", "--epochs",
                                 "1", "--device", "cpu", "--workers", "1", "--quiet", "--out", str(out)])
    assert r.exit_code == 1, r.output
    assert r.output.strip().splitlines()[-1] == (
        f"error: all 2 runs of this sweep failed, none trained (first, bn-d1-s0: {WRAPPED}); the rows are in "
        f"{out / 'results.csv'}")
    assert "Traceback" not in r.output and len(pd.read_csv(out / "results.csv")) == 2


@pytest.mark.slow
@pytest.mark.parametrize("arch,need", [("simplecnn", 8), ("deepercnn", 16), ("tutorial-net", 16), ("customcnn", 8)])
def test_images_too_small_for_a_preset_are_refused_before_any_run(tmp_path, image_folder_factory, arch, need):
    data = image_folder_factory(size=(4, 4), n=8)
    out = tmp_path / "s"
    with pytest.raises(CnnDepthError, match=re.escape(f"preset {arch} needs images of at least {need}×{need} px")) as e:
        run_sweep(arch=arch, dataset=str(data), out=str(out), **{**SMALL, "bs": 4, "workers": "auto"})
    assert "\n" not in str(e.value) and f"size={need}" in str(e.value)
    assert not out.exists()  # refused before the folder's first row: nothing left behind


@pytest.mark.slow
def test_callbacks_from_main_keep_the_sweep_in_this_process(tmp_path):
    lines = []
    df = run_sweep(depths=[1, 2], out=str(tmp_path / "s"), cbs=[DefinedInMain()], log=lines.append,
                   **{**SMALL, "workers": 2, "quiet": False})
    assert (df["status"] == "ok").all()
    assert lines[0].startswith("sweep: 2 runs (2 to do) on cpu, in this process,") and \
        "(serially: DefinedInMain is defined in __main__, which worker processes do not run;" in lines[0], lines[0]
    assert not any("on worker" in line for line in lines)
