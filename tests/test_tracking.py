"""--track (cnn_depth.tracking): real tiny sweeps logged to the real TensorBoard, MLflow and W&B libraries, read
back with their own readers: TensorBoard's event files, an MLflow tracking server started here (and the local
store), W&B's offline run files. A resumed sweep adds only its new runs; a failed run is marked failed; bad
input is one line before any run."""
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest
from fastai.callback.core import Callback
from typer.testing import CliRunner

from cnn_depth.cli import app
from cnn_depth.config import SweepConfig
from cnn_depth.errors import CnnDepthError, SweepFailed
from cnn_depth.records import read_results
from cnn_depth.sweep import run_sweep

TINY = dict(max_per_class=8, bs=16, epochs=2, seeds=[0], device="cpu", quiet=True, threads=1, workers=1)


class FailDepth(Callback):
    """A run of this depth raises as it starts fitting: its row is ``failed``."""

    def __init__(self, depth: int):
        self.depth = depth

    def before_fit(self):
        if self.learn.model.config["depth"] == self.depth:
            raise RuntimeError("injected failure")


@pytest.fixture(autouse=True)
def _offline(monkeypatch, tmp_path_factory):
    """Every tracker offline and out of the user's home: no MLflow URI or W&B mode from the environment."""
    home = tmp_path_factory.getbasetemp() / "wandb-home"
    for var in ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME", "WANDB_MODE", "WANDB_PROJECT", "WANDB_ENTITY",
                "WANDB_API_KEY"):
        monkeypatch.delenv(var, raising=False)
    for var in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR", "WANDB_ARTIFACT_DIR"):
        monkeypatch.setenv(var, str(home / var.lower()))


# ---------------------------------------------------------------------------------------------------------
# Bad input: one line, exit 2, before any run, nothing written


def sweep_cli(*args, env=None):
    return CliRunner().invoke(app, ["sweep", "--depths", "1", "--epochs", "1", "--max-per-class", "8", "--bs", "16",
                                    "--device", "cpu", "--workers", "1", *args], env=env)


def test_track_names_from_the_command_line_toml_and_python(tmp_path):
    assert SweepConfig(track="tensorboard, mlflow").track == ["tensorboard", "mlflow"]
    assert SweepConfig().track == []
    (tmp_path / "s.toml").write_text('track = ["wandb", "tensorboard", "wandb"]\n')
    assert SweepConfig.from_toml(tmp_path / "s.toml").track == ["wandb", "tensorboard"]
    with pytest.raises(CnnDepthError, match="unknown tracker 'neptune'; --track takes tensorboard, mlflow, wandb"):
        SweepConfig(track=["neptune"])
    (tmp_path / "bad.toml").write_text("track = 3\n")
    with pytest.raises(CnnDepthError, match="track in .*bad.toml must be tracker names"):
        SweepConfig.from_toml(tmp_path / "bad.toml")


def test_an_unknown_tracker_is_one_line_and_exit_2(tmp_path):
    r = sweep_cli("--track", "tensorboard", "neptune", "--out", str(tmp_path / "x"))
    assert r.exit_code == 2, r.output
    assert r.output.strip().splitlines() == ["error: unknown tracker 'neptune'; --track takes tensorboard, mlflow, "
                                             "wandb"]
    assert not (tmp_path / "x").exists()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_an_unreachable_mlflow_server_fails_within_seconds_before_any_run(tmp_path):
    uri = f"http://127.0.0.1:{free_port()}"
    t0 = time.monotonic()
    r = sweep_cli("--track", "mlflow", "--out", str(tmp_path / "x"), env={"MLFLOW_TRACKING_URI": uri})
    assert time.monotonic() - t0 < 15
    assert r.exit_code == 2, r.output
    lines = r.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: no MLflow server answers at MLFLOW_TRACKING_URI={uri}")
    assert "unset MLFLOW_TRACKING_URI" in lines[0]
    assert not (tmp_path / "x").exists()  # nothing written: the folder it made is gone again


@pytest.mark.parametrize("name", ["tensorboard", "mlflow", "wandb"])
def test_an_unwritable_tracking_folder_is_one_line_and_exit_2(tmp_path, name):
    out = tmp_path / "x"
    out.mkdir()
    (out / name).write_text("a file where the tracker's folder goes")
    r = sweep_cli("--track", name, "--out", str(out))
    assert r.exit_code == 2, r.output
    lines = r.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: --track {name} cannot write to {out / name}"), lines
    assert not (out / "results.csv").exists()


# ---------------------------------------------------------------------------------------------------------
# TensorBoard, MLflow's local store and W&B offline, from one sweep, then resumed with a failing run


@pytest.fixture(scope="module")
def offline_sweep(tmp_path_factory):
    """depths 1, 2 logged to all three trackers (offline defaults), models kept; then resumed with depth 3,
    whose run fails."""
    out = tmp_path_factory.mktemp("offline") / "sweep"
    env = {k: os.environ.pop(k) for k in ("MLFLOW_TRACKING_URI", "WANDB_MODE") if k in os.environ}
    home = tmp_path_factory.getbasetemp() / "wandb-home"
    old = {v: os.environ.get(v) for v in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR")}
    for v in old:
        os.environ[v] = str(home / v.lower())
    try:
        run_sweep(depths=[1, 2], out=str(out), track=["tensorboard", "mlflow", "wandb"], save_models=True, **TINY)
        first = {p.name for p in (out / "wandb").glob("offline-run-*")}
        with pytest.raises(SweepFailed):  # its one run failed; the reports are written and logged all the same
            run_sweep(depths=[1, 2, 3], out=str(out), track=["tensorboard", "mlflow", "wandb"], save_models=True,
                      cbs=[FailDepth(3)], **TINY)
    finally:
        os.environ.update(env)
        for v, value in old.items():
            os.environ.pop(v, None) if value is None else os.environ.__setitem__(v, value)
    return out, first


def event_accumulator(folder: Path):
    from tensorboard.backend.event_processing import event_accumulator as ea

    acc = ea.EventAccumulator(str(folder), size_guidance={ea.SCALARS: 0, ea.IMAGES: 0, ea.TENSORS: 0})
    return acc.Reload()


def hparams_of(acc) -> dict:
    from tensorboard.plugins.hparams import plugin_data_pb2

    out = {}
    for content in acc.PluginTagToContent("hparams").values():
        data = plugin_data_pb2.HParamsPluginData.FromString(content)
        if data.WhichOneof("data") == "session_start_info":
            for k, v in data.session_start_info.hparams.items():
                out[k] = getattr(v, v.WhichOneof("kind"))
    return out


@pytest.mark.slow
def test_tensorboard_has_scalars_per_epoch_and_an_hparams_session_per_run(offline_sweep):
    out, _ = offline_sweep
    logdir = out / "tensorboard"
    assert sorted(p.name for p in logdir.iterdir() if p.is_dir()) == ["bn-d1-s0", "bn-d2-s0", "bn-d3-s0", "sweep"]
    results = read_results(out).set_index("run_id")
    for depth in (1, 2):
        rid = f"bn-d{depth}-s0"
        acc = event_accumulator(logdir / rid)
        accuracy = [(e.step, e.value) for e in acc.Scalars("epoch/accuracy")]
        assert [s for s, _ in accuracy] == [1, 2]  # history.csv's epochs
        assert accuracy[-1][1] == pytest.approx(results.loc[rid, "accuracy"], abs=1e-6)
        assert acc.Scalars("macs")[0].value == pytest.approx(results.loc[rid, "macs"])
        assert {"epoch/train_loss", "epoch/valid_loss", "valid_loss", "params", "peak_memory_mb",
                "train_seconds"} <= set(acc.Tags()["scalars"])
        hp = hparams_of(acc)
        assert hp["depth"] == depth and hp["arch"] == "bn" and hp["status"] == "ok" and hp["epochs"] == 2
        assert hp["lr"] == pytest.approx(0.003) and hp["run_id"] == rid
    failed = hparams_of(event_accumulator(logdir / "bn-d3-s0"))
    assert failed["status"] == "failed" and failed["depth"] == 3
    sweep = event_accumulator(logdir / "sweep")
    assert {"accuracy_vs_depth.png", "curves.png"} <= set(sweep.Tags()["images"])
    tracked = json.loads((out / "tracked.json").read_text())["tensorboard"]["tensorboard"]
    assert sorted(tracked) == ["bn-d1-s0", "bn-d2-s0", "bn-d3-s0"] and all(len(v) == 1 for v in tracked.values())


@pytest.mark.slow
def test_mlflow_local_store_parent_children_and_a_failed_run(offline_sweep):
    from mlflow import MlflowClient

    out, _ = offline_sweep
    assert (out / "mlflow" / "mlflow.db").is_file()
    client = MlflowClient(tracking_uri=f"sqlite:///{out / 'mlflow' / 'mlflow.db'}")
    check_mlflow(client, out, {"bn-d1-s0": "FINISHED", "bn-d2-s0": "FINISHED", "bn-d3-s0": "FAILED"},
                 model=True)


def check_mlflow(client, out: Path, statuses: dict, model: bool = False):
    exp = client.get_experiment_by_name("cnn-depth")
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if r.data.tags.get("cnn_depth.role") == "sweep"]
    assert len(parents) == 1 and parents[0].info.run_name == out.name
    parent = parents[0]
    assert parent.info.status == "FINISHED" and parent.data.params["epochs"] == "2"
    arts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"summary.csv", "accuracy_vs_depth.png", "curves.png"} <= arts
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert sorted(r.info.run_name for r in children) == sorted(statuses)  # each run once, after the resume too
    results = read_results(out).set_index("run_id")
    for child in children:
        rid = child.info.run_name
        assert child.info.status == statuses[rid], rid
        p = child.data.params
        assert p["run_id"] == rid and p["depth"] == rid.split("-d")[1].split("-")[0] and p["bs"] == "16"
        assert p["max_per_class"] == "8" and p["device"] == "cpu" and p["lr_setting"] == "0.003"
        if statuses[rid] == "FAILED":
            assert child.data.tags["status"] == "failed" and "injected failure" in child.data.tags["error"]
            continue
        m = child.data.metrics
        assert m["accuracy"] == pytest.approx(results.loc[rid, "accuracy"])
        assert m["params"] == results.loc[rid, "params"] and m["macs"] == results.loc[rid, "macs"]
        assert {"train_seconds", "peak_memory_mb", "valid_loss", "train_loss"} <= set(m)
        history = client.get_metric_history(child.info.run_id, "epoch/valid_loss")
        assert sorted(h.step for h in history) == [1, 2]
        if model:
            assert [a.path for a in client.list_artifacts(child.info.run_id, "model")] == [f"model/{rid}.pt"]


def wandb_records(path: Path) -> list:
    """The records of a W&B run file (``run-<id>.wandb``): W&B's own protobuf Records in LevelDB's log
    framing (a 7-byte header, 32 KiB blocks of chunks: crc32, length, type FULL/FIRST/MIDDLE/LAST)."""
    from wandb.proto import wandb_internal_pb2 as pb

    data, pos, records, parts = path.read_bytes(), 7, [], b""
    assert data[:4] == b":W&B"
    while pos + 7 <= len(data):
        if 32768 - pos % 32768 < 7:  # a block's tail too short for a chunk header is padding
            pos += 32768 - pos % 32768
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        parts += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):
            records.append(pb.Record.FromString(parts))
            parts = b""
    return records


def wandb_run(folder: Path) -> dict:
    recs = wandb_records(next(folder.glob("run-*.wandb")))
    run = next(r.run for r in recs if r.WhichOneof("record_type") == "run")
    config = {u.key: json.loads(u.value_json) for u in run.config.update}
    summary = {}
    for r in recs:
        if r.WhichOneof("record_type") == "summary":
            for u in r.summary.update:
                summary[u.key or "/".join(u.nested_key)] = json.loads(u.value_json)
    history = [{(i.key or "/".join(i.nested_key)): json.loads(i.value_json) for i in r.history.item}
               for r in recs if r.WhichOneof("record_type") == "history"]
    exit_code = next(r.exit.exit_code for r in recs if r.WhichOneof("record_type") == "exit")
    return dict(name=run.display_name, group=run.run_group, job_type=run.job_type, tags=list(run.tags),
                config=config, summary=summary, history=history, exit_code=exit_code)


@pytest.mark.slow
def test_wandb_offline_runs_hold_config_history_summary_and_exit_codes(offline_sweep):
    out, first = offline_sweep
    runs = [wandb_run(p) for p in sorted((out / "wandb").glob("offline-run-*"))]
    assert len(runs) == 5  # 2 runs + reports, then the resume: only depth 3 + reports again
    assert len({p.name for p in (out / "wandb").glob("offline-run-*")} - first) == 2
    by_name = {}
    for r in runs:
        assert r["group"] == out.name
        by_name.setdefault(r["name"], []).append(r)
    assert sorted(by_name) == ["bn-d1-s0", "bn-d2-s0", "bn-d3-s0", "reports"]
    assert all(len(by_name[k]) == 1 for k in ("bn-d1-s0", "bn-d2-s0", "bn-d3-s0"))
    results = read_results(out).set_index("run_id")
    for rid in ("bn-d1-s0", "bn-d2-s0"):
        r = by_name[rid][0]
        assert r["job_type"] == "run" and r["tags"] == ["ok"] and r["exit_code"] == 0
        assert r["config"]["depth"] == int(rid[4]) and r["config"]["max_per_class"] == 8
        assert r["config"]["lr"] == pytest.approx(0.003)
        assert r["summary"]["accuracy"] == pytest.approx(results.loc[rid, "accuracy"])
        assert r["summary"]["macs"] == results.loc[rid, "macs"]
        steps = [h["_step"] for h in r["history"] if "epoch/accuracy" in h]
        assert steps == [1, 2]
    failed = by_name["bn-d3-s0"][0]
    assert failed["exit_code"] == 1 and failed["tags"] == ["failed"]
    assert "injected failure" in failed["summary"]["error"]


# ---------------------------------------------------------------------------------------------------------
# An MLflow tracking server over HTTP; worker processes


@pytest.fixture
def mlflow_server(tmp_path):
    port = free_port()
    mlflow = Path(sys.executable).parent / "mlflow"
    proc = subprocess.Popen([str(mlflow), "server", "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}",
                             "--artifacts-destination", str(tmp_path / "artifacts"), "--host", "127.0.0.1",
                             "--port", str(port), "--workers", "1"], cwd=tmp_path, stdout=subprocess.DEVNULL,
                            stderr=open(tmp_path / "server.log", "w"), start_new_session=True)
    uri = f"http://127.0.0.1:{port}"
    try:
        import urllib.request

        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"{uri}/health", timeout=1):
                    break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"mlflow server did not start: {(tmp_path / 'server.log').read_text()[-2000:]}")
                time.sleep(0.2)
        yield uri
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@pytest.mark.slow
def test_mlflow_server_over_http_logs_each_run_once_across_a_resume(mlflow_server, tmp_path, monkeypatch):
    from mlflow import MlflowClient

    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    out = tmp_path / "sweep"
    run_sweep(depths=[1, 2], out=str(out), track=["mlflow"], cbs=[FailDepth(2)], **TINY)
    client = MlflowClient(tracking_uri=mlflow_server)
    check_mlflow(client, out, {"bn-d1-s0": "FINISHED", "bn-d2-s0": "FAILED"})
    assert not (out / "mlflow").exists()  # the server holds it all
    # the rerun retries the failed run: a new child; the finished one is not logged again
    run_sweep(depths=[1, 2], out=str(out), track=["mlflow"], **TINY)
    exp = client.get_experiment_by_name("cnn-depth")
    children = client.search_runs([exp.experiment_id], filter_string="tags.status != ''")
    assert sorted((r.info.run_name, r.info.status) for r in children) == [
        ("bn-d1-s0", "FINISHED"), ("bn-d2-s0", "FAILED"), ("bn-d2-s0", "FINISHED")]


@pytest.mark.slow
def test_runs_from_worker_processes_are_logged_by_the_driver_and_tracking_can_be_added_on_a_resume(tmp_path):
    out = tmp_path / "sweep"
    run_sweep(depths=[1, 2], out=str(out), **dict(TINY, epochs=1, workers=2))
    assert not (out / "tensorboard").exists()
    # --track added when resuming: the runs already recorded are logged, once
    run_sweep(depths=[1, 2, 3], out=str(out), track=["tensorboard"], **dict(TINY, epochs=1, workers=2))
    assert sorted(p.name for p in (out / "tensorboard").iterdir()) == ["bn-d1-s0", "bn-d2-s0", "bn-d3-s0", "sweep"]
    for rid in ("bn-d1-s0", "bn-d2-s0", "bn-d3-s0"):
        assert [e.step for e in event_accumulator(out / "tensorboard" / rid).Scalars("epoch/accuracy")] == [1]
    run_sweep(depths=[1, 2, 3], out=str(out), track=["tensorboard"], **dict(TINY, epochs=1, workers=2))
    tracked = json.loads((out / "tracked.json").read_text())["tensorboard"]["tensorboard"]
    assert all(len(v) == 1 for v in tracked.values()) and len(tracked) == 3


@pytest.mark.parametrize("name,extra", [("tensorboard", "tensorboard"), ("mlflow", "mlflow"), ("wandb", "wandb")])
def test_a_tracker_not_installed_names_its_extra(tmp_path, monkeypatch, name, extra):
    monkeypatch.setitem(sys.modules, name, None)  # what `import` sees where the package is not installed
    r = sweep_cli("--track", name, "--out", str(tmp_path / "x"))
    assert r.exit_code == 2, r.output
    lines = r.output.strip().splitlines()
    assert len(lines) == 1 and f'pip install "cnn-depth[{extra}]"' in lines[0], lines
    assert not (tmp_path / "x").exists()


def test_wandb_online_without_an_api_key_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc
    r = sweep_cli("--track", "wandb", "--out", str(tmp_path / "x"), env={"WANDB_MODE": "online"})
    assert r.exit_code == 2, r.output
    assert r.output.strip().splitlines() == ["error: WANDB_MODE=online but W&B has no API key here; run `wandb "
                                             "login` first, or unset WANDB_MODE to log offline"]


@pytest.mark.slow
def test_a_killed_workers_run_is_marked_failed_and_its_rerun_logged_next_to_it(tmp_path):
    from mlflow import MlflowClient
    from test_parallel import KillWorkerAt  # SIGKILLs the worker training that depth

    out = tmp_path / "kill"
    cfg = dict(TINY, epochs=1, workers=2, depths=[1, 2], track=["mlflow"])
    df = run_sweep(out=str(out), cbs=[KillWorkerAt(depth=2)], **cfg)
    assert dict(zip(df["run_id"], df["status"])) == {"bn-d1-s0": "ok", "bn-d2-s0": "failed"}
    client = MlflowClient(tracking_uri=f"sqlite:///{out / 'mlflow' / 'mlflow.db'}")

    def children():
        runs = client.search_runs([client.get_experiment_by_name("cnn-depth").experiment_id])
        return sorted((r.info.run_name, r.info.status) for r in runs if r.data.tags.get("cnn_depth.role") != "sweep")

    assert children() == [("bn-d1-s0", "FINISHED"), ("bn-d2-s0", "FAILED")]
    run_sweep(out=str(out), **cfg)  # the rerun, without the killer: one new child, nothing logged twice
    assert children() == [("bn-d1-s0", "FINISHED"), ("bn-d2-s0", "FAILED"), ("bn-d2-s0", "FINISHED")]
