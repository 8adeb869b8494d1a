"""What a user's own files can hold (issue 19): sweep.json and saved models read back with a schema, one row
per run on every rewrite, a full disk, the folders written to, the git commit recorded. Each bad file is one
line naming the file and the field, never a traceback, and nothing already recorded is lost.

The slow tests share one real tiny sweep (``--save-models``, depths 1 and 2, 1 epoch, 10 images per class) and
alter copies of its files the way a hand edit, a bad copy or a full disk would.
"""
import csv
import json
import os
import shutil
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from cnn_depth.checkpoint import pick_arch, write_checkpoint
from cnn_depth.cli import app
from cnn_depth.errors import CnnDepthError
from cnn_depth.explain import saved_depths
from cnn_depth.files import DiskFull, output_folder, save_figure, temp_path
from cnn_depth.records import (HISTORY_COLUMNS, RESULT_COLUMNS, RowWarning, git_state, read_rows, read_sweep_json,
                               write_json, write_rows)

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()
SMALL = ["--epochs", "1", "--max-per-class", "10", "--bs", "16", "--device", "cpu", "--quiet", "--workers", "1"]
SWEEP = ["sweep", "--depths", "1", "2", *SMALL, "--save-models"]
RESUME_HINT = "free space and rerun the same command to resume"


@pytest.fixture(scope="module")
def saved_sweep(tmp_path_factory):
    """A real sweep folder with saved models, made once by `cnn-depth sweep --save-models`."""
    out = tmp_path_factory.mktemp("records") / "sweep"
    r = runner.invoke(app, [*SWEEP, "--out", str(out)])
    assert r.exit_code == 0, r.output
    return out


@pytest.fixture
def folder(saved_sweep, tmp_path):
    """A fresh copy of the sweep folder, to alter."""
    dst = tmp_path / "sweep"
    shutil.copytree(saved_sweep, dst)
    return dst


def one_line_error(r, code=2):
    assert r.exit_code == code, r.output
    assert r.output.startswith("error: "), r.output
    assert len(r.output.strip().splitlines()) == 1 and "Traceback" not in r.output, r.output
    return r.output


# ---------------------------------------------------------------------------------------------------------
# sweep.json


def _set(data, path, value):
    """data with the value at a dotted path replaced (``"config.depths"``); ``"."`` replaces the whole file."""
    if path == ".":
        return value
    *parents, last = path.split(".")
    d = data
    for p in parents:
        d = d[p]
    if value is KeyError:
        del d[last]
    else:
        d[last] = value
    return data


SWEEP_JSON_CASES = [
    ("config", "abc", "config is a string \"abc\", not an object"),
    ("config", [1, 2], "config is a list [1, 2], not an object"),
    ("config", KeyError, "has no config"),
    ("config.depths", "2", "config.depths is a string \"2\", not a non-empty list of whole numbers ≥ 1"),
    ("config.depths", [1, "x"], "config.depths is a list [1, \"x\"]"),
    ("config.seeds", {}, "config.seeds is an object {}"),
    ("config.epochs", "1", "config.epochs is a string \"1\", not a whole number ≥ 1"),
    ("config.lr", True, "config.lr is true, not a positive number or \"find\""),
    ("config.max_per_class", 10.5, "config.max_per_class is 10.5, not a whole number ≥ 1 or null"),
    ("config.augment", "false", "config.augment is a string \"false\", not true or false"),
    ("invocations", {"a": 1}, "invocations is an object {\"a\": 1}, not a list"),
    ("invocations", [1], "invocations[0] is 1, not an object"),
    ("environment", "x", "environment is a string \"x\", not an object"),
    (".", [], "the file is a list [], not an object"),
]


@pytest.mark.slow
@pytest.mark.parametrize("field,value,message", SWEEP_JSON_CASES)
def test_resuming_a_sweep_json_with_wrong_types_is_one_line(folder, field, value, message):
    meta = folder / "sweep.json"
    meta.write_text(json.dumps(_set(json.loads(meta.read_text()), field, value)))
    before = {p.name: p.read_bytes() for p in (folder / "results.csv", folder / "history.csv", meta)}
    output = one_line_error(runner.invoke(app, [*SWEEP, "--out", str(folder)]))
    assert f"{meta}" in output and message in output, output
    assert "move the folder aside (or use another --out)" in output
    assert {name: (folder / name).read_bytes() for name in before} == before  # nothing recorded was touched


def test_sweep_json_schema_reads_every_recorded_study_and_refuses_wrong_types(tmp_path):
    recorded = sorted((ROOT / "experiments").glob("*/results/*/sweep.json"))
    assert len(recorded) >= 8
    for p in recorded:  # what the tool wrote over its history reads back
        assert read_sweep_json(p)["config"]["epochs"] >= 1
    assert read_sweep_json(tmp_path) == {}  # none yet
    good = json.loads(recorded[0].read_text())
    for field, value, message in SWEEP_JSON_CASES:
        p = tmp_path / "sweep.json"
        p.write_text(json.dumps(_set(json.loads(json.dumps(good)), field, value)))
        with pytest.raises(CnnDepthError) as e:
            read_sweep_json(tmp_path)
        assert message in str(e.value) and "\n" not in str(e.value)
    (tmp_path / "sweep.json").write_text('{"config": {"lr": NaN}}')  # json reads NaN; no lr is NaN
    with pytest.raises(CnnDepthError, match="config.lr is NaN"):
        read_sweep_json(tmp_path)
    (tmp_path / "sweep.json").write_text('{"config": ')
    with pytest.raises(CnnDepthError, match=r"cannot read .*sweep.json \(JSONDecodeError"):
        read_sweep_json(tmp_path)


# ---------------------------------------------------------------------------------------------------------
# Saved models


def _alter(ckpt, change):
    change(ckpt)
    return ckpt


CHECKPOINT_CASES = [
    ("no img_size", lambda c: c["config"].pop("img_size"), "config has no img_size"),
    ("img_size 0", lambda c: c["config"].__setitem__("img_size", [0, 0]),
     "config.img_size is a list [0, 0], not [height, width] in px"),
    ("stats as strings", lambda c: c.__setitem__("stats", dict(mean="0.5", std="0.2")),
     "stats.mean is a string '0.5', not 3 finite number(s)"),
    ("std of 0", lambda c: c["stats"].__setitem__("std", [0.2, 0.0, 0.2]), "stats.std is a list [0.2, 0.0, 0.2]"),
    ("version a string", lambda c: c.__setitem__("version", "1"), "version is a string '1', not a whole number"),
    ("short vocab", lambda c: c.__setitem__("vocab", c["vocab"][:3]),
     "vocab has 3 class names but the model's head has 10 outputs"),
    ("config a list", lambda c: c.__setitem__("config", [2]), "config is a list [2], not a dict"),
    ("unknown arch", lambda c: c["config"].__setitem__("arch", "zzz"), "config.arch is a string 'zzz'"),
    ("source a string", lambda c: c.__setitem__("source", "cifar"), "source is a string 'cifar', not a dict"),
    ("n_out a float", lambda c: c["config"].__setitem__("n_out", 10.0), "config.n_out is 10.0"),
    ("meta a list", lambda c: c.__setitem__("meta", [1]), "meta is a list [1], not a dict"),
]


@pytest.mark.slow
@pytest.mark.parametrize("case,change,message", CHECKPOINT_CASES, ids=[c[0] for c in CHECKPOINT_CASES])
def test_explain_on_a_checkpoint_with_wrong_fields_is_one_line(folder, case, change, message, tmp_path):
    path = folder / "models" / "bn-d2-s0.pt"
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    torch.save(_alter(ckpt, change), path)
    torch.load(path, weights_only=True)  # still a file weights_only reads: the check is ours, not torch's
    for args in (["--depth", "2"], ["--depths", "1", "2"]):
        output = one_line_error(runner.invoke(app, ["explain", str(folder), *args, "--out", str(tmp_path / "x")]))
        assert f"{path}: " in output and message in output, output
        assert "delete it, then run `cnn-depth sweep --depths 1 2" in output
    assert not (tmp_path / "x").exists()  # refused before any figure


@pytest.mark.slow
def test_a_checkpoint_holding_code_is_refused_by_weights_only(folder):
    path = folder / "models" / "bn-d2-s0.pt"
    ckpt = torch.load(path, weights_only=True)
    ckpt["meta"] = dict(x=Path("/etc"))  # a pickled class: weights_only=True refuses to build it
    torch.save(ckpt, path)
    output = one_line_error(runner.invoke(app, ["explain", str(folder), "--depth", "2"]))
    assert f"cannot read saved model {path} (UnpicklingError" in output


def test_arch_is_picked_by_one_function_for_one_model_and_for_depths(tmp_path):
    (tmp_path / "models").mkdir()
    for name in ("bn-d2-s0.pt", "bn-d4-s0.pt", "plain-d2-s0.pt"):  # saved_models goes by the file names
        (tmp_path / "models" / name).write_bytes(b"")
    for pick in (lambda a: pick_arch(tmp_path, a), lambda a: saved_depths(tmp_path, a)):
        with pytest.raises(CnnDepthError, match=r"holds models of several archs \(bn, plain\); pick one with --arch"):
            pick(None)
        with pytest.raises(CnnDepthError, match=r"arch 'residual' is not in .*; saved archs: bn, plain"):
            pick("residual")
    assert [r["depth"] for r in pick_arch(tmp_path, "bn")[1]] == [2, 4]
    assert saved_depths(tmp_path, "bn") == ("bn", [2, 4])


# ---------------------------------------------------------------------------------------------------------
# One row per run on every rewrite, said once


def _lines(path):
    return path.read_bytes().split(b"\r\n")


@pytest.mark.slow
def test_a_duplicated_row_and_a_cut_history_row_are_said_once_and_kept_once(folder):
    results, history = folder / "results.csv", folder / "history.csv"
    rows = _lines(results)  # header, bn-d1-s0, bn-d2-s0, ''
    results.write_bytes(b"\r\n".join([rows[0], rows[1], rows[1], *rows[2:]]))
    hist = _lines(history)
    history.write_bytes(b"\r\n".join([hist[0], hist[1][:30], *hist[2:]]))  # bn-d1-s0's epoch row cut by hand
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        r = runner.invoke(app, [*SWEEP, "--out", str(folder)])
    assert r.exit_code == 0, r.output
    said = [str(w.message) for w in caught if issubclass(w.category, RowWarning)]
    assert len(said) == 2, said  # once each, not once per read
    assert said[0] == f"{results}: 1 line(s) left out: line 2 has the same run_id as line 3, which is kept"
    assert said[1].startswith(f"{history}: 1 line(s) left out: line 2 has 5 fields where the header has 11")
    assert _lines(results) == rows  # one row per run, each as it was recorded, byte for byte
    assert _lines(history) == [hist[0], *hist[2:]]
    summary = list(csv.DictReader(open(folder / "summary.csv")))
    assert [s["runs"] for s in summary] == ["1", "1"]  # each run counted once
    with warnings.catch_warnings(record=True) as caught:  # clean now: the next resume says nothing
        warnings.simplefilter("always")
        assert runner.invoke(app, [*SWEEP, "--out", str(folder)]).exit_code == 0
    assert not [w for w in caught if issubclass(w.category, RowWarning)]


def test_write_rows_keeps_one_row_per_key_and_says_what_it_left_out(tmp_path):
    path = tmp_path / "history.csv"
    row = dict(run_id="bn-d1-s0", dataset="d", arch="bn", depth=1, seed=0, epochs=2, train_loss=1.5,
               valid_loss=1.6, accuracy=0.3, seconds=1.0)
    write_rows(path, HISTORY_COLUMNS, [dict(row, epoch=1), dict(row, epoch=2)])
    lines = _lines(path)
    path.write_bytes(b"\r\n".join([*lines[:2], lines[1], lines[2][:12] + b"\r\n"]))  # epoch 1 twice, epoch 2 cut
    with pytest.warns(RowWarning) as caught:
        write_rows(path, HISTORY_COLUMNS, [dict(row, run_id="bn-d2-s0", depth=2, epoch=1)])
    assert len(caught) == 1
    message = str(caught[0].message)
    assert "2 line(s) left out" in message and "line 4 has 3 fields where the header has 11" in message
    assert "line 2 has the same run_id/epoch as line 3, which is kept" in message
    got = [(r["run_id"], r["epoch"]) for r in read_rows(path)[1]]
    assert got == [("bn-d1-s0", "1"), ("bn-d2-s0", "1")]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a clean file: appended to, nothing said
        write_rows(path, HISTORY_COLUMNS, [dict(row, run_id="bn-d3-s0", depth=3, epoch=1)])
    # results.csv: a cut line inside the file is a finished run's record: one line naming it, not dropped
    res = tmp_path / "results.csv"
    res.write_text(",".join(RESULT_COLUMNS) + "\nbn-d1-s0,x\nbn-d2-s0" + "," * (len(RESULT_COLUMNS) - 1) + "\n")
    before = res.read_bytes()
    with pytest.raises(CnnDepthError, match=r"results.csv line 2: 2 fields where the header has \d+; fix or delete"):
        write_rows(res, RESULT_COLUMNS, [dict(run_id="bn-d3-s0")])
    assert res.read_bytes() == before


# ---------------------------------------------------------------------------------------------------------
# A full disk: one line, exit 1, what was written stays


def _full(path):
    """Make the next atomic write to ``path`` fail as on a full disk: its temporary file is /dev/full, where
    the kernel answers every write with ENOSPC."""
    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full here")
    temp_path(path).symlink_to("/dev/full")


def _check_disk_full(e, path, what):
    message = str(e)
    assert isinstance(e, DiskFull) and e.exit_code == 1 and "\n" not in message
    assert message.startswith(f"the disk is full: could not write {what}{path} (") and " free there); " in message
    assert message.endswith(RESUME_HINT)
    assert not temp_path(path).exists()  # the temporary file is gone


def test_a_full_disk_is_one_line_at_every_write_site(tmp_path):
    from matplotlib.figure import Figure

    rows = tmp_path / "results.csv"
    write_rows(rows, ["run_id", "x"], [dict(run_id="a", x=1)])
    before = rows.read_bytes()
    _full(rows)
    with pytest.raises(DiskFull) as e:  # a retry rewrites the file aside
        write_rows(rows, ["run_id", "x"], [dict(run_id="a", x=2)], strict=False)
    _check_disk_full(e.value, rows, "rows to ")
    assert rows.read_bytes() == before

    meta = tmp_path / "sweep.json"
    _full(meta)
    with pytest.raises(DiskFull) as e:
        write_json(meta, dict(config={}))
    _check_disk_full(e.value, meta, "")
    assert not meta.exists()

    model = tmp_path / "models" / "bn-d1-s0.pt"
    model.parent.mkdir()
    _full(model)
    with pytest.raises(DiskFull) as e:
        write_checkpoint(model, dict(state_dict={"w": torch.zeros(1000)}))
    _check_disk_full(e.value, model, "the model ")

    png = tmp_path / "f.png"
    png.write_bytes(b"old")
    _full(png)
    with pytest.raises(DiskFull) as e:
        save_figure(Figure(figsize=(2, 2)), png)
    _check_disk_full(e.value, png, "the figure ")
    assert png.read_bytes() == b"old"
    save_figure(Figure(figsize=(2, 2)), png)  # space again: written
    assert png.read_bytes()[:4] == b"\x89PNG"


@pytest.mark.slow
def test_explain_on_a_full_disk_is_one_line_and_exit_1(saved_sweep, tmp_path):
    out = tmp_path / "figs"
    out.mkdir()
    _full(out / "input.png")
    r = runner.invoke(app, ["explain", str(saved_sweep), "--depth", "2", "--out", str(out)])
    assert r.exit_code == 1 and "Traceback" not in r.output, r.output
    note, output = r.stderr.strip().splitlines()  # the prediction it made, then the one error line
    assert note.startswith("bn-d2-s0: validation image 0") and output.startswith("error: the disk is full: ")
    assert f"could not write the figure {out / 'input.png'}" in output and RESUME_HINT in output
    assert list(out.iterdir()) == []


TINY_DISK = textwrap.dedent('''
    import errno, json, os, shutil, sys
    from pathlib import Path
    from typer.testing import CliRunner
    from cnn_depth.cli import app

    src, mnt, args = Path(sys.argv[1]), Path(sys.argv[2]), json.loads(sys.argv[3])
    out = mnt / "sweep"
    shutil.copytree(src, out)
    before = (out / "results.csv").read_bytes()
    with open(mnt / "filler", "wb", buffering=0) as f:  # fill the disk, then give back 16 KiB: room for small files only
        try:
            while True:
                f.write(b"\\0" * 4096)
        except OSError as e:
            assert e.errno == errno.ENOSPC
        f.truncate(max(f.tell() - 16384, 0))
    r = CliRunner().invoke(app, [*args, "--out", str(out)])
    full = dict(code=r.exit_code, output=r.output, same=(out / "results.csv").read_bytes() == before,
                left=sorted(p.name for p in out.rglob(".*.tmp")))
    (mnt / "filler").unlink()  # free space, and rerun the same command
    r = CliRunner().invoke(app, [*args, "--out", str(out)])
    rows = (out / "results.csv").read_bytes()
    print(json.dumps(dict(full=full, code=r.exit_code, output=r.output[-500:], kept=rows.startswith(before),
                          rows=rows.count(b"\\r\\n") - 1)))
''')


@pytest.mark.slow
def test_a_sweep_that_fills_a_real_tiny_disk_is_one_line_and_resumes(saved_sweep, tmp_path):
    """On a real 1 MiB tmpfs (a mount namespace of our own, no root needed where user namespaces are allowed):
    the disk fills while the next model is written; the sweep stops with one line and exit 1, results.csv as
    it was; after freeing space the same command adds the run."""
    if not shutil.which("unshare"):
        pytest.skip("no unshare here to mount a tiny file system")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    args = ["sweep", "--depths", "1", "2", "3", *SMALL, "--save-models"]
    r = subprocess.run(["unshare", "-Urm", "sh", "-c", 'mount -t tmpfs -o size=1m tmpfs "$1" || exit 99; shift; '
                        'exec "$@"', "sh", str(mnt), sys.executable, "-c", TINY_DISK, str(saved_sweep), str(mnt),
                        json.dumps(args)], capture_output=True, text=True, timeout=300)
    if r.returncode == 99 or "unshare" in r.stderr.split(":")[0]:
        pytest.skip(f"cannot mount a tmpfs in a user namespace here: {r.stderr.strip()[:200]}")
    assert r.returncode == 0, r.stderr[-2000:]
    got = json.loads(r.stdout.strip().splitlines()[-1])
    full = got["full"]
    assert full["code"] == 1, full["output"]
    lines = full["output"].strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: the disk is full: could not write the model "), lines
    assert "models/bn-d3-s0.pt" in lines[0] and lines[0].endswith(RESUME_HINT)
    assert full["same"] and full["left"] == []  # the rows already written are intact, no half file left
    assert got["code"] == 0, got["output"]
    assert got["kept"] and got["rows"] == 3  # the resumed sweep added depth 3 after the rows as they were


# ---------------------------------------------------------------------------------------------------------
# The folders written to


def test_output_folder_refuses_what_it_cannot_write_to_in_one_line(tmp_path):
    a_file = tmp_path / "notes.txt"
    a_file.write_text("x")
    cases = [("", "--out is empty; give a folder"), ("  ", "--out is empty"),
             (a_file, f"{a_file} is a file, not a folder; give another --out"),
             (a_file / "sub", "a file is in the way"),
             ("/proc/cnn-depth-x", "cannot write to /proc/cnn-depth-x (")]
    for path, message in cases:
        with pytest.raises(CnnDepthError) as e:
            output_folder(path)
        assert message in str(e.value) and "\n" not in str(e.value)
    assert output_folder(tmp_path / "a" / "b", "--report-out") == tmp_path / "a" / "b"
    assert (tmp_path / "a" / "b").is_dir() and list((tmp_path / "a" / "b").iterdir()) == []  # no probe left


@pytest.mark.slow
def test_explain_out_that_cannot_be_written_is_one_line(saved_sweep, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    a_file = tmp_path / "taken"
    a_file.write_text("x")
    for out, message in (("", "--out is empty"), (str(a_file), "is a file, not a folder; give another --out"),
                         ("/proc/x", "cannot write to /proc/x (")):
        for args in (["--depth", "2"], ["--depths", "all"]):
            output = one_line_error(runner.invoke(app, ["explain", str(saved_sweep), *args, "--out", out]))
            assert message in output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken"]  # nothing written to the working folder


def test_sweep_out_empty_is_refused_not_the_default_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    output = one_line_error(runner.invoke(app, ["sweep", "--depths", "1", *SMALL, "--out", ""]))
    assert "out is empty; give a folder (e.g. --out runs/x), or leave out --out for the default" in output
    assert not (tmp_path / "runs").exists()


# ---------------------------------------------------------------------------------------------------------
# The git commit: of this code's own checkout only


def _git(cwd, *args):
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@example.com", "-c", "init.defaultBranch=main",
                    *args], cwd=cwd, check=True, capture_output=True)


@pytest.mark.skipif(not shutil.which("git"), reason="no git here")
def test_git_commit_is_recorded_only_when_the_package_is_tracked(tmp_path):
    repo = tmp_path / "project"
    repo.mkdir()
    _git(repo, "init", "-q")
    (repo / "notes.md").write_text("someone else's project\n")
    _git(repo, "add", "notes.md")
    _git(repo, "commit", "-q", "-m", "theirs")
    package = repo / "vendored" / "cnn_depth"  # a copy of our package inside their repository, not tracked
    shutil.copytree(ROOT / "cnn_depth", package, ignore=shutil.ignore_patterns("__pycache__", "_data"))
    state = git_state(package)
    assert state["git_commit"] == "" and state["git_dirty"] is None
    assert state["git_note"] == f"the cnn_depth code at {package} is not tracked by the git repository around it, " \
                                f"so no commit is recorded"
    _git(repo, "add", "vendored")  # now it is that repository's code: its commit is recorded
    _git(repo, "commit", "-q", "-m", "vendor cnn_depth")
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True).stdout.strip()
    assert git_state(package) == dict(git_commit=head, git_dirty=False, git_note="")
    (package / "records.py").write_text("# changed\n")
    assert git_state(package)["git_dirty"] is True
    alone = tmp_path / "alone" / "cnn_depth"
    shutil.copytree(package, alone)
    env_git = subprocess.run(["git", "rev-parse", "--git-dir"], cwd=alone, capture_output=True)
    if env_git.returncode != 0:  # tmp is outside any repository here
        assert "is not in a git repository" in git_state(alone)["git_note"] and git_state(alone)["git_commit"] == ""
