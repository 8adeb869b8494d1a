"""--compile: torch.compile of each run's model, recorded per row; a model that cannot compile trains eagerly
after one line."""
import os
import subprocess
import sys

import pandas as pd
import pytest

from cnn_depth import CnnDepthError, SweepConfig
from cnn_depth.checkpoint import resave_command
from cnn_depth.config import RESULT_FIELDS, coerce_options
from cnn_depth.run import compile_error, new_row

TIMING = ["train_seconds", "images_per_second", "valid_seconds", "finished", "peak_memory_mb"]
TINY = ["--depths", "1", "--epochs", "1", "--max-per-class", "10", "--bs", "16", "--workers", "1", "--threads", "1",
        "--device", "cpu"]


def test_compile_is_a_result_defining_setting_off_by_default(tmp_path):
    assert "compile" in RESULT_FIELDS
    cfg = SweepConfig(depths=[1])
    assert cfg.compile is False and new_row(cfg, 1, 0, 1)["compile"] == "off"
    on = SweepConfig(depths=[1], compile=True)
    assert new_row(on, 1, 0, 1)["compile"] == "on"
    assert on.default_out_name().endswith("-compile") and not cfg.default_out_name().endswith("-compile")
    assert coerce_options({"compile": True}) == {"compile": True}
    with pytest.raises(CnnDepthError, match=r"^compile in x.toml must be true or false, got 'yes'$"):
        coerce_options({"compile": "yes"}, "in x.toml")
    with pytest.raises(CnnDepthError, match="compile must be true or false"):
        SweepConfig(depths=[1], compile=1)


def test_compile_errors_are_told_from_the_runs_own():
    import torch._dynamo.exc as dexc

    try:
        try:
            raise OSError("cc1plus: not found")
        except OSError as inner:
            raise dexc.BackendCompilerFailed.__new__(dexc.BackendCompilerFailed) from inner
    except Exception as e:
        assert compile_error(e)
    try:
        raise RuntimeError("CUDA out of memory")
    except RuntimeError as e:
        assert not compile_error(e)


def _sweep(out, *args, env=None):
    return subprocess.run([sys.executable, "-m", "cnn_depth", "sweep", *TINY, "--out", str(out), *args],
                          capture_output=True, text=True, env={**os.environ, **(env or {})}, timeout=900)


@pytest.mark.slow
def test_a_model_that_cannot_compile_trains_eagerly_after_one_line(tmp_path):
    # no C++ compiler for TorchInductor (and no cached kernels to fall back on)
    env = dict(CXX=str(tmp_path / "no-such-c++"), TORCHINDUCTOR_CACHE_DIR=str(tmp_path / "inductor"),
               TORCHINDUCTOR_FX_GRAPH_CACHE="0")
    r = _sweep(tmp_path / "c", "--compile", env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    lines = [line for line in r.stdout.splitlines() if "torch.compile failed" in line]
    assert len(lines) == 1 and lines[0].strip().startswith("bn-d1-s0: torch.compile failed (")
    assert lines[0].endswith("); training it eagerly")
    compiled = pd.read_csv(tmp_path / "c" / "results.csv")
    assert compiled["status"].tolist() == ["ok"] and compiled["compile"].tolist() == ["failed→eager"]
    # it started again from its seed: the numbers of an eager run
    assert _sweep(tmp_path / "e").returncode == 0
    eager = pd.read_csv(tmp_path / "e" / "results.csv")
    assert eager["compile"].tolist() == ["off"]
    same = [c for c in eager.columns if c not in TIMING + ["compile"]]
    pd.testing.assert_frame_equal(compiled[same], eager[same])
    # a folder made with --compile is resumed only with it
    r = _sweep(tmp_path / "c", env=env)
    assert r.returncode == 2 and r.stderr.strip().splitlines()[-1].startswith(
        f"error: {tmp_path / 'c'} holds a sweep with compile=True, not False;")
    assert "--compile" in resave_command(tmp_path / "c")


@pytest.mark.slow
def test_a_sweep_with_compile_gives_ok_rows_with_compile_recorded(tmp_path):
    r = _sweep(tmp_path / "c", "--compile", "--quiet")
    assert r.returncode == 0, r.stdout + r.stderr
    df = pd.read_csv(tmp_path / "c" / "results.csv")
    assert df["status"].tolist() == ["ok"]
    failed = [line for line in r.stdout.splitlines() if "torch.compile failed" in line]
    # compiled here, or (no toolchain on this machine) one line and an eager run
    assert df["compile"].tolist() == (["failed→eager"] if failed else ["on"])
    assert len(failed) <= 1
    assert "compiled" in r.stdout or failed  # the summary names the setting
