"""Issue #21 sections 0 and 1: one definition of a run's settings (config.Setting on SweepConfig's fields), and
grids: every setting that decides a run's numbers takes a list, one folder holds the whole grid."""
import json
import tomllib

import pandas as pd
import pytest
from typer.testing import CliRunner

from cnn_depth.checkpoint import resave_command
from cnn_depth.cli import app
from cnn_depth.config import (RESULT_FIELDS, SweepConfig, coerce_options, data_key, data_settings, default, settings,
                              sweep_flags)
from cnn_depth.errors import CnnDepthError
from cnn_depth.records import RESULT_COLUMNS, RESULT_SCHEMA, RUN_FIELDS, SETTING_COLUMNS, write_sweep_json
from cnn_depth.reports import GROUP, SETTING_NAMES, _shown
from cnn_depth.run import new_row
from cnn_depth.sweep import run_sweep

runner = CliRunner()
TINY = dict(epochs=1, max_per_class=8, bs=16, device="cpu", quiet=True, threads=1, workers=1)
# a value other than the default for each setting, valid together with the others' defaults
OTHER = dict(dataset="mnist", arch="residual", epochs=2, lr=1e-2, bs=32, max_per_class=50, pipeline="pil", augment=True,
             compile=True, transfer=None, pretrained=False, dims=1, pad=True, fill=0.0, split_seed=1)


@pytest.mark.parametrize("name", list(settings()))
def test_every_marked_setting_is_in_every_list_of_the_settings(name, tmp_path):
    """Section 0: a field marked with a Setting shows up in every place that lists the settings, read from the
    mark: RESULT_FIELDS, results.csv's columns and schema, the reports' groups and names, a run's row, the
    data cache key, the resave command, the folder name and a grid's run ids."""
    s = settings()[name]
    assert name in RESULT_FIELDS
    assert s.column in RESULT_COLUMNS and s.column in RESULT_SCHEMA
    assert s.column in GROUP and (s.column in RUN_FIELDS or s.column in SETTING_COLUMNS)
    assert SETTING_NAMES[s.column] == s.words
    cfg = SweepConfig()
    row = new_row(cfg, 2, 0, 1)
    assert list(row) == RESULT_COLUMNS and row[s.column] == s.cell(getattr(cfg, name))
    assert _shown(s.column, "x")  # a label for any value
    if s.data:
        assert getattr(cfg, name) in data_key(cfg, "cpu") and (s.keyword or name) in data_settings(cfg)
    if name in ("pretrained", "transfer"):
        return  # they need a pretrained net (test_transfer.py checks their folder names and flags)
    changed = SweepConfig(**{name: OTHER[name]})
    assert (changed.default_out_name() != cfg.default_out_name()) or s.always
    assert s.tag(getattr(changed, name)) in changed.default_out_name()
    out = tmp_path / "x"
    out.mkdir()
    write_sweep_json(out, dict(changed.as_dict(), out=str(out)), {}, {})
    assert " ".join(sweep_flags(name, getattr(changed, name))) in resave_command(out)
    grid = SweepConfig(**{name: [getattr(cfg, name), OTHER[name]]})
    assert grid.varying() == [name]
    tags = [c.run_tag([name]) for c in grid.combinations()]
    assert (len(set(tags)) == 2 and all(tags)) if name != "arch" else tags == ["", ""]  # arch leads the run id


def test_the_columns_and_folder_names_are_what_they_were():
    """The derived lists are the formats files already have (results.csv's column order, summary.csv's
    groups, folder names of one combination)."""
    assert RESULT_COLUMNS[:16] == ["run_id", "dataset", "arch", "depth", "seed", "source", "epochs", "lr_setting", "lr",
                                   "bs", "max_per_class", "pipeline", "augment", "compile", "threads", "params"]
    assert RESULT_COLUMNS[-7:] == ["device", "precision", "pretrained", "transfer", "status", "error", "finished"]
    assert SETTING_COLUMNS == ["source", "epochs", "lr_setting", "bs", "max_per_class", "pipeline", "augment",
                               "threads", "device", "precision", "pretrained", "transfer", "compile",
                               "kind", "dims", "pad", "fill", "split_seed"]  # new ones last: older groups lack them
    assert SweepConfig(lr=0.01, bs=32, max_per_class=50, pipeline="pil", augment=True, compile=True).default_out_name() \
        == "cifar10-sample-bn-d2-4-s0-e5-lr0.01-bs32-m50-pil-aug-compile"
    assert "yes" not in SweepConfig().as_dict()  # sweep.json keeps the keys it had


def test_a_grid_from_python_the_command_line_and_toml(tmp_path):
    grid = SweepConfig(arch=["bn", "residual"], lr=[1e-3, 3e-3], augment=[True, False], depths=[1, 2])
    assert grid.varying() == ["lr", "arch", "augment"] and len(grid.combinations()) == 8
    assert [c.run_tag(grid.varying()) for c in grid.combinations()][:2] == ["-lr0.001-aug", "-lr0.001-noaug"]
    assert grid.default_out_name() == "cifar10-sample-bn_residual-d1-2-s0-e5-lr0.001_0.003-aug_noaug"
    assert SweepConfig(lr=[1e-3, 2e-3, 3e-3, 4e-3, 5e-3, 6e-3]).default_out_name().endswith("-e5-6lrs")
    assert SweepConfig(arch=["bn"], lr=[3e-3]).varying() == []  # a list of one is that value
    assert coerce_options({"augment": "both", "lr": "1e-3\x1f3e-3", "arch": "bn,residual"}) == \
        dict(augment=[True, False], lr=[1e-3, 3e-3], arch=["bn", "residual"])
    toml = tmp_path / "g.toml"
    toml.write_text('arch = ["bn", "residual"]\nbs = [16, 32]\naugment = "both"\ndepths = [1]\n')
    cfg = SweepConfig.from_toml(toml)
    assert (cfg.arch, cfg.bs, cfg.augment) == (["bn", "residual"], [16, 32], [True, False])


@pytest.mark.parametrize("args, expected", [
    (["--arch", "bn", "residual", "--lr", "1e-3", "3e-3"], dict(arch=["bn", "residual"], lr=[1e-3, 3e-3])),
    (["--augment", "both", "--bs", "64", "128"], dict(augment=[True, False], bs=[64, 128])),
    (["--augment", "on", "off", "--epochs", "1", "2"], dict(augment=[True, False], epochs=[1, 2])),
    (["--augment", "--arch", "residual"], dict(augment=True, arch="residual")),
    (["--dataset", "mnist", "cifar10-sample"], dict(dataset=["mnist", "cifar10-sample"])),
])
def test_the_command_line_takes_a_list_for_each_setting(monkeypatch, args, expected):
    seen = {}

    def fake(cfg, log=print):
        seen["cfg"] = cfg
        raise CnnDepthError("stop here")

    monkeypatch.setattr("cnn_depth.sweep.run_sweep", fake)
    r = runner.invoke(app, ["sweep", "--depths", "1", *args])
    assert r.exit_code == 2 and "stop here" in r.output
    for k, v in expected.items():
        assert getattr(seen["cfg"], k) == v, k


@pytest.mark.parametrize("args, message", [
    (["--out", "a", "b"], "--out takes one value, got 2: a b; only the settings that decide a run's numbers take "
                          "several (a grid): --arch, --augment"),
    (["--quiet", "x"], "--quiet takes no value, got 1: x"),
    (["--arch"], "Option '--arch' requires an argument"),
    (["--arch", "bn", "vgg"], "unknown arch 'vgg'"),
    (["--depths", "1-100", "--seeds", "0-20", "--lr", "1e-3", "3e-3", "1e-2", "--arch", "bn", "residual"],
     "3 lrs × 2 archs × 100 depths × 21 seeds is 12,600 runs, over 10,000; give fewer values, or --yes to go on"),
])
def test_bad_grids_are_one_line_and_write_nothing(tmp_path, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)
    r = runner.invoke(app, ["sweep", "--out", str(tmp_path / "x"), *args] if "--out" not in args else ["sweep", *args])
    assert r.exit_code == 2, r.output
    assert message in r.output and len(r.output.strip().splitlines()) == 1, r.output
    assert list(tmp_path.iterdir()) == []


def test_empty_lists_and_a_big_grid_with_yes(tmp_path):
    with pytest.raises(CnnDepthError, match="arch is an empty list; give at least one value"):
        SweepConfig(arch=[])
    toml = tmp_path / "e.toml"
    toml.write_text("lr = []\n")
    with pytest.raises(CnnDepthError, match=f"lr in {toml} is an empty list"):
        SweepConfig.from_toml(toml)
    big = dict(depths="1-100", seeds="0-20", lr=[1e-3, 3e-3, 1e-2], arch=["bn", "residual"])
    assert len(SweepConfig.from_toml(None, **big, yes=True).combinations()) == 6


@pytest.mark.slow
@pytest.mark.parametrize("grid, tags", [(dict(arch=["bn", "residual"]), ["", ""]),
                                        (dict(lr=[1e-3, 3e-3]), ["-lr0.001", "-lr0.003"])])
def test_a_grid_sweeps_resumes_and_extends_in_one_folder(tmp_path, grid, tags):
    out = tmp_path / "g"
    df = run_sweep(**grid, depths=[1, 2], seeds=[0, 1], out=str(out), **TINY)
    (name, values), = grid.items()
    assert len(df) == 8 and (df["status"] == "ok").all()
    arch = df["arch"] if name == "arch" else "bn"
    assert set(df["run_id"]) == {f"{a}-d{d}-s{s}{t}" for a, t in zip(values if name == "arch" else ["bn"] * 2, tags)
                                 for d in (1, 2) for s in (0, 1)}, arch
    col = settings()[name].column
    assert sorted(df[col].unique().tolist()) == sorted(values)  # each row names its values
    summary = df.attrs["summary"]
    assert summary.groupby("group").size().tolist() == [2, 2]
    factors = pd.read_csv(out / "factors.csv")
    assert factors["setting"].unique().tolist() == [col] and len(factors) == 4
    assert factors.groupby("depth")["verdict"].apply(lambda v: v.isin(["best", "highest mean"]).sum()).tolist() == [1, 1]
    # the numbers of a combination are those of a sweep of that combination alone
    alone = run_sweep(**{name: values[0]}, depths=[1, 2], seeds=[0, 1], out=str(tmp_path / "alone"), **TINY)
    merged = df[df[col] == values[0]].set_index(["depth", "seed"])["accuracy"].sort_index()
    assert merged.tolist() == alone.set_index(["depth", "seed"])["accuracy"].sort_index().tolist()
    config = json.loads((out / "sweep.json").read_text())["config"]
    assert config[name] == values
    again = run_sweep(**grid, depths=[1, 2], seeds=[0, 1], out=str(out), **TINY)  # resume: nothing to do
    assert again["finished"].tolist() == df["finished"].tolist()
    more = values + (["plain"] if name == "arch" else [1e-2])
    extended = run_sweep(**{name: more}, depths=[1, 2], seeds=[0, 1, 2], out=str(out), **TINY)
    assert len(extended) == 18 and set(df["run_id"]) <= set(extended["run_id"])
    assert json.loads((out / "sweep.json").read_text())["config"][name] == more
    assert tomllib.loads("x = 1")  # (the TOML reader is the one config.py uses)


@pytest.mark.slow
def test_a_one_combination_folder_refuses_a_grid_over_its_setting(tmp_path):
    out = tmp_path / "one"
    run_sweep(depths=[1], out=str(out), **TINY)
    with pytest.raises(CnnDepthError, match=r"holds a sweep with lr=0.003 only, not a grid over lr \(its run ids "
                                            r"would change\); use another --out for the grid \(or --lr 0.003"):
        run_sweep(depths=[1], lr=[1e-3, 3e-3], out=str(out), **TINY)
    assert default("lr") == 3e-3
