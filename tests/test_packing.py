"""--runs-per-gpu auto: the packing decision with real numbers (one H200 of issue 20: 16 cores, 139 GiB, small
CNNs), its estimate of a run's peak against what autograd really keeps, how the driver lowers it after CUDA
runs out of memory, and what auto means without CUDA (nothing, and no error). No GPU here: nothing in this
file runs CUDA; experiments/bench_gpu.py measures the packing on one."""
import concurrent.futures as cf
import json

import pytest
import torch
from fastai.callback.core import Callback
from typer.testing import CliRunner

from cnn_depth import CnnDepthError, SweepConfig
from cnn_depth.cli import app
from cnn_depth.config import coerce_options
from cnn_depth.packing import (CUDA_CONTEXT_BYTES, CUDNN_WORKSPACE_BYTES, GIB, GPU_MARGIN, MIB, Packing, estimate_peak_bytes,
                               gpu_packing, is_out_of_memory, memory_bound, over_memory_warning, run_bytes)
from cnn_depth.plan import Engine, _jobs, choose_engine
from cnn_depth.records import read_results
from cnn_depth.run import Job, failed_result

H200 = [139 * GIB]  # free memory of the H200 of issue 20, about what torch.cuda.mem_get_info gives there
runner = CliRunner()


# ---------------------------------------------------------------------------------------------------------
# The decision


def test_h200_reference_sweep_packs_every_run_at_once():
    # bn depths 2-8 x seeds 0 1: 14 runs, 16 free cores, peaks of a few hundred MiB: the runs bound it
    per_gpu, why = gpu_packing(16, H200, 400 * MIB, 14, host_memory=128 * GIB)
    assert per_gpu == 14
    assert why.startswith("auto packing: 14 per GPU, set by the runs to do;")
    assert "16 free cores" in why and "139.0 GiB free GPU memory holds 139 at 1020 MiB a run" in why, why
    assert "estimated peak 400 MiB x 1.3 + 500 MiB CUDA context" in why


def test_more_runs_than_cores_packs_one_per_free_core():
    assert gpu_packing(16, H200, 100 * MIB, 28, 128 * GIB)[0] == 16  # depths 2-8 x 4 seeds
    per_gpu, why = gpu_packing(4, H200, 100 * MIB, 28, 128 * GIB)  # other processes keep 12 cores busy
    assert per_gpu == 4 and "set by the free cores" in why


def test_big_models_are_bound_by_the_gpu_memory():
    # a resnet50-sized peak of 6 GiB on a 24 GiB card: 6 x 1.3 + 0.5 = 8.3 GiB a run, 2 fit (not 3)
    per_gpu, why = gpu_packing(16, [24 * GIB], 6 * GIB, 14, 128 * GIB)
    assert per_gpu == 2 and "set by the GPU memory" in why
    assert run_bytes(6 * GIB) == int(6 * GIB * GPU_MARGIN) + CUDA_CONTEXT_BYTES


def test_a_run_that_cannot_fit_still_gets_one_place_and_the_reason_names_the_fix():
    per_gpu, why = gpu_packing(16, [8 * GIB], 10 * GIB, 14, 128 * GIB)
    assert per_gpu == 1 and "one run may not fit in the free GPU memory: a smaller --bs needs less" in why


def test_several_gpus_share_the_cores_and_the_tightest_gpu_bounds_all():
    # 16 cores over 2 GPUs: 8 each; the second GPU has 10 GiB free: 10 runs of 1020 MiB there
    assert gpu_packing(16, [139 * GIB, 139 * GIB], 400 * MIB, 40, 128 * GIB)[0] == 8
    assert gpu_packing(16, [139 * GIB, 10 * GIB], 400 * MIB, 40, 128 * GIB)[0] == 8
    assert gpu_packing(32, [139 * GIB, 10 * GIB], 400 * MIB, 40, 128 * GIB)[0] == 10
    assert gpu_packing(16, [139 * GIB] * 2, 400 * MIB, 3, 128 * GIB)[0] == 2  # 3 runs: 2 on one GPU, 1 on the other


def test_host_memory_bounds_the_worker_processes():
    per_gpu, why = gpu_packing(16, H200, 400 * MIB, 14, host_memory=10 * GIB)  # 2 GiB a worker process
    assert per_gpu == 5 and "set by the host memory" in why


def test_before_any_peak_is_known_only_the_cuda_context_is_counted():
    per_gpu, why = gpu_packing(16, [2 * GIB], None, 14)
    assert per_gpu == memory_bound([2 * GIB], None) == 4 and "no peak known yet" in why


def test_an_explicit_number_above_the_estimate_gets_one_warning_line_with_the_estimate():
    warning = over_memory_warning(20, [8 * GIB], 400 * MIB)
    assert warning.startswith("warning: --runs-per-gpu 20 is more than the 8 runs the free GPU memory (8.0 GiB) "
                              "holds at about 1020 MiB a run") and "\n" not in warning
    assert over_memory_warning(8, [8 * GIB], 400 * MIB) == ""
    assert over_memory_warning(20, [8 * GIB], None) == ""  # no estimate: nothing to say


def test_out_of_memory_errors_are_told_from_other_failures():
    e = torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 MiB. GPU 0 has a total capacity of "
                               "139.80 GiB of which 3.06 MiB is free.")
    assert is_out_of_memory(f"{type(e).__name__}: {e}")
    assert is_out_of_memory("RuntimeError: cuDNN error: CUDNN_STATUS_ALLOC_FAILED")
    assert not is_out_of_memory("RuntimeError: DefaultCPUAllocator: can't allocate memory: you tried to allocate")
    assert not is_out_of_memory("ValueError: loss is nan")


# ---------------------------------------------------------------------------------------------------------
# The estimate of a run's peak, before any run


def test_the_estimate_grows_with_depth_batch_and_data_on_the_gpu():
    small = estimate_peak_bytes("bn", 2, 3, 10, (32, 32), 64)
    assert estimate_peak_bytes("bn", 8, 3, 10, (32, 32), 64) > small
    assert estimate_peak_bytes("bn", 2, 3, 10, (32, 32), 256) > small
    cifar = 60_000 * (3 * 32 * 32 + 16)  # the fast pipeline keeps the decoded images on the GPU
    assert estimate_peak_bytes("bn", 2, 3, 10, (32, 32), 64, cifar) == small + cifar
    # bn depths 2-8 on CIFAR-10 come out at a few hundred MiB, the size issue 20's rows record
    assert all(200 * MIB < estimate_peak_bytes("bn", d, 3, 10, (32, 32), 64, cifar) < 400 * MIB for d in (2, 8))


def test_a_sweeps_estimates_count_the_images_the_fast_pipeline_keeps_on_the_gpu(sample_dls):
    from cnn_depth.packing import sweep_peak_estimates

    cfg = SweepConfig(bs=32, max_per_class=20)
    estimates = sweep_peak_estimates(cfg, sample_dls, [2, 1, 2])
    images = len(sample_dls.train_ds) + len(sample_dls.valid_ds)  # 20 per class and split: 400 of 32x32 RGB
    assert list(estimates) == [1, 2]
    assert estimates[1] == estimate_peak_bytes("bn", 1, 3, 10, (32, 32), 32, images * (3 * 32 * 32 + 16))
    assert sweep_peak_estimates(cfg, object(), [1]) == {}  # DataLoaders not made by cnn-depth: no estimate


@pytest.mark.parametrize("arch,depth", [("bn", 2), ("bn", 8), ("plain", 6), ("residual", 6)])
def test_the_estimate_is_above_what_autograd_keeps_for_the_backward_pass(arch, depth):
    """The estimate means to be high: without its fixed cuDNN workspace, it is compared with the bytes autograd
    really saves in a forward pass at bs 64 on the CPU in fp32, plus the weights, gradients and Adam state
    (the estimate was 1.36-1.68x that for these four models when this was written)."""
    from cnn_depth.models import depth_cnn

    torch.manual_seed(0)
    model = depth_cnn(depth, n_in=3, n_out=10, arch=arch, img_size=(32, 32)).train()
    saved = {}

    def pack(t):
        saved[(t.data_ptr(), t.dtype, tuple(t.shape))] = t.numel() * t.element_size()  # a tensor saved twice counts once
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(torch.randn(64, 3, 32, 32)).sum().backward()
    params = sum(p.numel() for p in model.parameters())
    real = sum(saved.values()) + params * 16  # weights, gradients, Adam's two moments
    assert estimate_peak_bytes(arch, depth, 3, 10, (32, 32), 64) - CUDNN_WORKSPACE_BYTES > real


# ---------------------------------------------------------------------------------------------------------
# The driver's side: measured peaks, out of memory, retries


def test_measured_peaks_raise_or_lower_auto_packing_scaled_by_the_estimates():
    estimates = {2: 250 * MIB, 8: 300 * MIB}
    p = Packing(per_gpu=4, slots_per_gpu=14, gpus=1, auto=True, gpu_free_bytes=[8 * GIB], estimates=estimates)
    # the small model ends first at 200 MiB (0.8 of its estimate): the largest is budgeted at 240 MiB
    line = p.measured(2, 200.0)
    assert p.predicted_peak() == pytest.approx(240 * MIB)
    assert p.per_gpu == memory_bound([8 * GIB], 240 * MIB) == 10 and line.startswith("packing: raised from 4 to 10")
    # the largest records more than its estimate: lowered
    line = p.measured(8, 900.0)
    assert p.per_gpu == memory_bound([8 * GIB], 900 * MIB) == 4 and line.startswith("packing: lowered from 10 to 4")
    assert p.measured(2, 100.0) == ""  # nothing changes: no line
    assert p.measured(2, "") == ""  # a failed run records no peak


def test_an_explicit_number_is_not_changed_by_measured_peaks():
    p = Packing(per_gpu=12, slots_per_gpu=12, gpus=1, auto=False, gpu_free_bytes=[8 * GIB], estimates={2: MIB})
    assert p.measured(2, 2000.0) == "" and p.per_gpu == 12


def test_out_of_memory_lowers_below_the_runs_then_on_the_gpu_and_caps_later_raises():
    p = Packing(per_gpu=14, slots_per_gpu=14, gpus=1, auto=True, gpu_free_bytes=[139 * GIB], estimates={2: 300 * MIB})
    assert p.retry("bn-d8-s0", others_running=13)
    assert p.out_of_memory(others_running=13) == (14, 13)
    assert p.out_of_memory(others_running=9) == (13, 9)  # several at once: down to what was running
    assert not p.retry("bn-d8-s0", 9)  # once only
    assert p.measured(2, 100.0) == "" and p.per_gpu == 9  # small peaks do not raise it above the ceiling again
    alone = Packing(per_gpu=1, slots_per_gpu=1, gpus=1, auto=True)
    assert not alone.retry("bn-d8-s0", others_running=0)  # alone on its GPU: it would fail the same way
    assert alone.out_of_memory(0) == (1, 1)


def test_a_run_out_of_memory_is_written_failed_then_retried_once(tmp_path):
    from cnn_depth.sweep import _packed_result

    cfg = SweepConfig(depths=[8], seeds=[0], device="cpu")
    job = Job("run", 8, 0, 1)
    oom = "OutOfMemoryError: CUDA out of memory. Tried to allocate 20.00 MiB."
    p = Packing(per_gpu=14, slots_per_gpu=14, gpus=1, auto=True)
    lines = []
    first = failed_result(cfg, job, 3e-3, oom, 1)
    assert _packed_result(p, job, first, cfg, 13, lines.append) is True
    assert first.row["error"] == (oom + " [CUDA out of memory with 14 runs at once; packing lowered from 14 to 13 "
                                        "per GPU; retrying it once]")
    assert lines == ["bn-d8-s0: CUDA out of memory with 14 runs at once; packing lowered from 14 to 13 per GPU; "
                     "retrying it once"]
    again = failed_result(cfg, job, 3e-3, oom, 1)
    assert _packed_result(p, job, again, cfg, 12, lines.append) is False  # recorded failed for a rerun to retry
    assert again.row["error"].endswith("[CUDA out of memory with 13 runs at once again, after one retry; packing "
                                       "lowered from 13 to 12 per GPU]")


class OutOfMemoryOnce(Callback):
    """Raise torch's own OutOfMemoryError, with CUDA's message, in the first fit only: what a packed run sees
    when the GPU is full (injected: there is no GPU here)."""

    def __init__(self):
        self.raised = False

    def before_train(self):
        if not self.raised:
            self.raised = True
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (injected by the test)")


@pytest.mark.slow
def test_the_driver_retries_a_run_out_of_memory_at_a_lower_packing_and_keeps_one_row(tmp_path):
    """The real driver loop (_drive, in-process executor, CPU) with a Packing of 2 per GPU: the first run's
    fit raises CUDA's out-of-memory error; its failed row is written, the packing drops to 1 and the run is
    trained again; results.csv then holds the one ok row."""
    from cnn_depth.executors import InlineExecutor
    from cnn_depth.sweep import Progress, _drive

    cfg = SweepConfig(depths=[1], seeds=[0], epochs=1, max_per_class=10, bs=16, device="cpu", quiet=True)
    packing = Packing(per_gpu=2, slots_per_gpu=2, gpus=1, auto=False)
    starting = cf.Future()
    starting.set_result(InlineExecutor(1))
    lines = []
    progress = Progress(lines.append, 1, 1)
    _drive(cfg, Engine("inline", 1, 1), starting, _jobs(cfg, set(), {}), {}, tmp_path, (OutOfMemoryOnce(),),
           progress, lines.append, packing)
    assert "bn-d1-s0: CUDA out of memory with 1 run at once; packing lowered from 2 to 1 per GPU; retrying it once" \
        in lines, lines
    assert packing.per_gpu == 1 and [line.split()[0:2] for line in lines if line.startswith("start")] == \
        [["start", "1/1"], ["start", "1/1"]]
    rows = read_results(tmp_path)
    assert list(rows["run_id"]) == ["bn-d1-s0"] and list(rows["status"]) == ["ok"]
    assert progress.ended == ["bn-d1-s0"] and progress.failed == []


# ---------------------------------------------------------------------------------------------------------
# Options: auto by default, an explicit number kept, bad values one line; without CUDA auto means nothing


def test_auto_is_the_default_and_parses_from_the_command_line_and_toml():
    assert SweepConfig().runs_per_gpu == "auto"
    assert coerce_options({"runs_per_gpu": "auto"}) == {"runs_per_gpu": "auto"}
    assert coerce_options({"runs_per_gpu": "4"}) == {"runs_per_gpu": 4}
    assert SweepConfig(runs_per_gpu=4).runs_per_gpu == 4
    with pytest.raises(CnnDepthError, match=r"^runs_per_gpu must be a whole number ≥ 1, got 0; or runs_per_gpu='auto'$"):
        SweepConfig(runs_per_gpu=0)
    with pytest.raises(CnnDepthError, match=r"runs_per_gpu in x.toml must be a whole number ≥ 1 or auto, got 'many'"):
        coerce_options({"runs_per_gpu": "many"}, "in x.toml")


@pytest.mark.skipif(torch.cuda.is_available(), reason="what auto means without CUDA")
def test_without_cuda_auto_plans_as_before_and_an_explicit_number_stays_an_error():
    engine = choose_engine(SweepConfig(device="cpu"), 4, cpus=2)
    assert engine.gpus == () and "packing" not in engine.why
    assert choose_engine(SweepConfig(device="cpu", workers=2), 4, cpus=2).runs_per_gpu == 1
    with pytest.raises(CnnDepthError, match="--runs-per-gpu 2 needs CUDA GPUs"):
        choose_engine(SweepConfig(device="cpu", runs_per_gpu=2), 4, cpus=2)


def test_runs_per_gpu_0_is_one_line_exit_2(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    r = runner.invoke(app, ["sweep", "--depths", "1", "--max-per-class", "10", "--runs-per-gpu", "0"])
    lines = r.stderr.strip().splitlines()
    assert r.exit_code == 2 and lines == ["error: runs_per_gpu must be a whole number ≥ 1, got 0; or "
                                          "runs_per_gpu='auto'"], r.output
    assert not (tmp_path / "runs").exists()


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.is_available(), reason="what auto means without CUDA")
def test_runs_per_gpu_auto_on_a_cpu_sweep_is_accepted_recorded_and_resumed(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = ["sweep", "--max-per-class", "10", "--bs", "16", "--epochs", "1", "--quiet", "--out", "x"]
    r = runner.invoke(app, [*args, "--depths", "1", "--runs-per-gpu", "auto"])
    assert r.exit_code == 0, r.output
    config = json.loads((tmp_path / "x" / "sweep.json").read_text())["config"]
    assert config["runs_per_gpu"] == "auto"
    r = runner.invoke(app, [*args, "--depths", "1", "2"])  # the folder's sweep.json, with auto, is read back
    assert r.exit_code == 0, r.output
    assert sorted(read_results(tmp_path / "x")["run_id"]) == ["bn-d1-s0", "bn-d2-s0"]
