"""The sweep's Learner (cnn_depth.lean.lean_learner) does less host work per batch than a stock fastai Learner
and must train, record and report exactly as one: same events to a user's callbacks, same numbers to the bit."""
import math

import numpy as np
import pytest
import torch
from fastai.callback.core import Callback
from fastai.callback.schedule import combined_cos

from cnn_depth import SweepConfig, depth_learner
from cnn_depth.lean import CombinedSchedule, LeanRecorder, PlainLoss, SweepLearner, lean_learner
from cnn_depth.run import resolve_device, seed_run, train_run


class EventLog(Callback):
    """A user's callback: every event it receives, with where the loop was and the loss it saw."""

    order = 70

    def __init__(self):
        self.log = []

    def __call__(self, event_name):
        loss = getattr(self.learn, "loss", None)
        self.log.append((event_name, self.learn.training, getattr(self.learn, "iter", None),
                         float(loss.detach().mean()) if isinstance(loss, torch.Tensor) else None))
        return super().__call__(event_name)


def _fit(dls, lean: bool, how: str):
    seed_run(0, dls)
    learn = depth_learner(dls, 2, threads=None, cbs=[EventLog()])
    if lean:
        learn = lean_learner(learn)
    with learn.no_bar(), learn.no_logging():
        if how == "one_cycle":
            learn.fit_one_cycle(2, 3e-3)
        else:
            learn.fine_tune(1, 3e-3, freeze_epochs=1)
        r = learn.recorder  # validate() resets them: as they were after the fit
        learn.fitted = dict(values=list(r.values), losses=[float(x) for x in r.losses], lrs=list(r.lrs),
                            iters=list(r.iters), hps={k: [np.asarray(v).tolist() for v in h] for k, h in r.hps.items()})
        final = learn.validate()
        preds, targets = learn.get_preds()
    return learn, final, preds, targets


@pytest.mark.parametrize("how", ["one_cycle", "fine_tune"])
def test_the_sweep_learner_trains_and_records_as_a_stock_learner_to_the_bit(sample_dls, how):
    stock, final_s, preds_s, targets_s = _fit(sample_dls, False, how)
    lean, final_l, preds_l, targets_l = _fit(sample_dls, True, how)
    # the lean parts are in place (else this test would compare stock with stock)
    assert type(lean) is SweepLearner and type(lean.recorder) is LeanRecorder and type(lean.loss_func) is PlainLoss
    assert isinstance(stock.recorder, type(lean.recorder).__mro__[1])
    assert lean.recorder.metric_names == stock.recorder.metric_names
    assert lean.fitted == stock.fitted
    assert len(stock.fitted["values"]) == (2 if how == "one_cycle" else 1)  # fine_tune's second fit: 1 epoch
    assert len(stock.fitted["losses"]) == len(sample_dls.train) * len(stock.fitted["values"])
    assert final_l == final_s and lean.recorder.values == stock.recorder.values
    assert torch.equal(preds_l, preds_s) and torch.equal(targets_l, targets_s)
    for (name, a), b in zip(stock.model.state_dict().items(), lean.model.state_dict().values()):
        assert torch.equal(a, b), name
    # a user's callback sees every event, in the same order, at the same places, with the same losses
    assert lean.event_log.log == stock.event_log.log
    assert float(lean.smooth_loss) == float(stock.smooth_loss)


def test_recorder_plot_loss_and_a_later_fit_work_as_fastai(sample_dls):
    import matplotlib
    matplotlib.use("Agg")
    learn, *_ = _fit(sample_dls, True, "one_cycle")
    ax = learn.recorder.plot_loss()
    assert len(ax.lines) == 2  # train and valid
    n = len(learn.fitted["losses"])
    with learn.no_bar(), learn.no_logging():
        learn.fit(1, 1e-4)  # a plain fit after a one-cycle one, with the callbacks changed in between
    assert len(learn.recorder.losses) == len(sample_dls.train) and n == 2 * len(sample_dls.train)


@pytest.mark.parametrize("pct_start, start, middle, end", [
    (0.25, np.array([1.2e-4, 3e-3]) / 25, np.array([1.2e-4, 3e-3]), np.array([1.2e-4, 3e-3]) / 1e5),  # lr
    (0.25, 0.95, 0.85, 0.95),  # momentum
    (0.99, 3e-3 / 25, 3e-3, 3e-3 / 1e5),  # fine_tune's frozen epoch
    (0.3, 0.1, 1.0, 0.0),
])
def test_combined_schedule_gives_fastais_value_at_every_position(pct_start, start, middle, end):
    fastai_f = combined_cos(pct_start, start, middle, end)
    ours = CombinedSchedule.of(fastai_f)
    assert isinstance(ours, CombinedSchedule)
    positions = list(np.linspace(0, 1, 4001)) + [pct_start, 1.0]
    positions += [float(np.nextafter(p, d)) for p in (pct_start, 1.0) for d in (0, 2)]
    positions += [float(np.float32(pct_start)) + k * 1e-9 for k in range(-3, 4)]
    pos, steps = 0.0, 6 * 7  # the positions a fit reaches: 1/(n_iter*n_epoch) added per batch, as fastai does
    for _ in range(steps):
        positions.append(pos)
        pos += 1.0 / steps
    for p in positions:
        a, b = fastai_f(p), ours(p)
        assert type(a) is type(b) and np.array_equal(a, b), p


def test_other_schedules_are_left_as_they_are():
    f = lambda pos: pos  # noqa: E731
    assert CombinedSchedule.of(f) is f


class NanAt(Callback):
    """Makes the loss NaN at one training step (0-based, counted over the fit)."""

    def __init__(self, step: int):
        self.step = step

    def after_loss(self):
        if self.learn.training and self.learn.train_iter == self.step:
            self.learn.loss = self.learn.loss * math.nan


def test_a_loss_that_becomes_nan_stops_the_run_at_that_batch_and_says_where(sample_dls, tmp_path):
    cfg = SweepConfig(dataset="cifar10-sample", max_per_class=20, bs=32, epochs=2, depths=[1], quiet=True,
                      device="cpu", out=str(tmp_path))
    per_epoch = len(sample_dls.train)
    step = per_epoch + 2  # epoch 2, batch 3
    result = train_run(sample_dls, cfg, 1, 0, 3e-3, resolve_device("cpu"), tmp_path, cbs=[NanAt(step)])
    row = result.row
    assert row["status"] == "diverged"
    assert row["error"] == "loss became nan at epoch 2, batch 3"
    assert row["train_images"] == step * 32  # the batches before the NaN one
    assert row["epochs_done"] == 1 and len(result.history) == 1


def test_a_run_counts_its_validation_images_and_correct_predictions(sample_dls, tmp_path):
    cfg = SweepConfig(dataset="cifar10-sample", max_per_class=20, bs=32, epochs=1, depths=[1], quiet=True,
                      device="cpu", out=str(tmp_path))
    row = train_run(sample_dls, cfg, 1, 0, 3e-3, resolve_device("cpu"), tmp_path).row
    assert row["status"] == "ok"
    assert type(row["correct"]) is int and row["valid_images"] == len(sample_dls.valid_ds)
    assert row["accuracy"] == row["correct"] / row["valid_images"]
    assert row["train_images"] == len(sample_dls.train) * 32


def test_the_lean_optimizer_sets_hyper_parameters_as_fastai(sample_dls):
    stock = depth_learner(sample_dls, 2, threads=None)
    lean = lean_learner(depth_learner(sample_dls, 2, threads=None))
    stock.create_opt()
    lean.create_opt()
    assert type(lean.opt).__name__ == "LeanOptimizer"
    for k, v in [("lr", 0.1), ("lr", np.array([0.01, 0.2])), ("mom", 0.9), ("wd", slice(1e-3, 1e-1)),
                 ("lr", [0.3, 0.4]), ("eps", 1)]:
        stock.opt.set_hyper(k, v)
        lean.opt.set_hyper(k, v)
        assert [{k2: (type(x), x) for k2, x in h.items()} for h in lean.opt.hypers] == \
               [{k2: (type(x), x) for k2, x in h.items()} for h in stock.opt.hypers]


def _fit_with(dls, lean: bool, opt_func, **fit):
    seed_run(0, dls)
    learn = depth_learner(dls, 2, threads=None, opt_func=opt_func)
    if lean:
        learn = lean_learner(learn)
    with learn.no_bar(), learn.no_logging():
        learn.fit_one_cycle(1, 3e-3, **fit)
    return learn


@pytest.mark.parametrize("opt", ["Adam", "Adam-l2", "SGD", "RAdam"])
def test_every_fastai_optimizer_trains_as_stock_and_only_adamw_takes_the_foreach_step(sample_dls, opt):
    from functools import partial

    from fastai.optimizer import SGD, Adam, RAdam
    opt_func = {"Adam": Adam, "Adam-l2": partial(Adam, decouple_wd=False), "SGD": SGD, "RAdam": RAdam}[opt]
    stock, lean = _fit_with(sample_dls, False, opt_func), _fit_with(sample_dls, True, opt_func)
    assert lean.opt._is_adamw() == (opt == "Adam")  # the others go through fastai's callbacks per parameter
    for (name, a), b in zip(stock.model.state_dict().items(), lean.model.state_dict().values()):
        assert torch.equal(a, b), name
    for p_s, p_l in zip(stock.model.parameters(), lean.model.parameters()):  # the optimizer's state too
        s, l = stock.opt.state[p_s], lean.opt.state[p_l]
        assert s.keys() == l.keys()
        assert all(torch.equal(v, l[k]) if isinstance(v, torch.Tensor) else v == l[k] for k, v in s.items())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_on_cuda_the_foreach_adamw_step_matches_fastais_to_float_rounding():
    from fastai.optimizer import Adam

    from cnn_depth import depth_cnn
    from cnn_depth.lean import LeanOptimizer
    models = []
    for lean in (False, True):
        torch.manual_seed(0)
        m = depth_cnn(8, arch="bn").cuda()
        opt = Adam(list(m.parameters()), lr=1e-3)
        if lean:
            opt.__class__ = LeanOptimizer
        g = torch.Generator(device="cuda").manual_seed(1)
        for _ in range(20):
            for p in m.parameters():
                p.grad = torch.randn(p.shape, device="cuda", generator=g) * 1e-3
            opt.step()
        models.append([p.detach() for p in m.parameters()])
    for a, b in zip(*models):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
