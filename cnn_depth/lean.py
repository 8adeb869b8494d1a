"""Less host work per batch, the same fastai: the Learner a sweep's runs train with.

A small CNN's step on a fast GPU is bound by what the host does per batch (Python, fastai's callbacks,
kernel launches). The sweep's Learner keeps fastai's events, callbacks and numbers (tests/test_overhead.py
compares them with a stock Learner's to the last bit) and drops work that changes nothing.
"""
from __future__ import annotations

from functools import partial

import numpy as np
import torch
from fastai.callback.core import Callback, event
from fastai.callback.schedule import ParamScheduler
from fastai.learner import AvgLoss, AvgMetric, Learner, Recorder
from fastai.losses import CrossEntropyLossFlat
from fastai.optimizer import (Optimizer, _update, adam_step, average_grad, average_sqr_grad, debias, step_stat,
                               weight_decay)
from fastai.torch_core import find_bs, num_distrib
from fastcore.foundation import L


class SweepLearner(Learner):
    """fastai's ``Learner``: the same events, callbacks and numbers, with less host work per batch.

    - An event goes only to the callbacks that have a method for it, in fastai's order (``order``, stable);
      stock fastai calls every callback for every event, about 50 calls per training batch of which 7 do
      something. The lists are rebuilt whenever ``learn.cbs`` changes; ``after_fit`` still reaches every
      callback (fastai resets each one's ``run`` there), and so does every event a callback with its own
      ``__call__``.
    - fastai's optimizers (``Adam`` by default) step through :class:`LeanOptimizer`: the same updates.
    - ``fit`` gives fastai's one-cycle schedules (``combine_scheds``, used by ``fit_one_cycle`` and
      ``fine_tune``) a lookup without tensors (:class:`CombinedSchedule`): the same floats, five small tensor
      ops fewer per hyper-parameter and batch.
    """

    def __call__(self, event_name):
        if isinstance(event_name, str):
            self._call_one(event_name)
        else:
            for name in L(event_name):
                self._call_one(name)

    def _call_one(self, event_name):
        cbs = self.cbs.items
        table = self.__dict__.get("_event_cbs")
        if table is None or table[0] != cbs:  # list equality: the same callbacks, by identity, in this order
            table = self._event_cbs = (list(cbs), {})
        todo = table[1].get(event_name)
        if todo is None:
            if not hasattr(event, event_name):
                raise Exception(f"missing {event_name}")  # fastai's own check and message
            ordered = self.cbs.sorted("order")
            todo = table[1][event_name] = (list(ordered) if event_name == "after_fit" else
                                           [cb for cb in ordered if hasattr(cb, event_name)
                                            or type(cb).__call__ is not Callback.__call__])
        for cb in todo:
            cb(event_name)

    def _set_device(self, b):
        # fastai moves every tensor of every batch with .to(device); a batch of plain tuples already there (the
        # fast pipeline's, made on the DataLoaders' device) is returned as it is, as .to() would return each
        if type(b) is tuple:
            device = getattr(self.dls, "device", None)
            # fastai's typed tensors answer .device through their __torch_function__ (~4 µs each): read plainly
            with torch._C.DisableTorchFunctionSubclass():
                here = isinstance(device, torch.device) and all(isinstance(t, torch.Tensor) and _on(t, device) for t in b) \
                    and next(self.model.parameters()).device == b[0].device
            if here:
                return b
        return super()._set_device(b)

    def create_opt(self):
        super().create_opt()
        if type(self.opt) is Optimizer:  # fastai's Adam, SGD, ... (not an OptimWrapper around a torch one)
            self.opt.__class__ = LeanOptimizer

    def fit(self, n_epoch, lr=None, wd=None, cbs=None, reset_opt=False, start_epoch=0):
        for cb in L(cbs):
            if type(cb) is ParamScheduler:  # fit_one_cycle's; not LRFinder (a subclass) nor another user's
                cb.scheds = {k: CombinedSchedule.of(f) for k, f in cb.scheds.items()}
        return super().fit(n_epoch, lr=lr, wd=wd, cbs=cbs, reset_opt=reset_opt, start_epoch=start_epoch)

    def __getstate__(self):
        state = super().__getstate__()
        state.pop("_event_cbs", None)
        return state


def _on(t: torch.Tensor, device: torch.device) -> bool:
    """Whether ``t.to(device)`` would return ``t`` itself (the same device; ``cuda`` is the current one)."""
    if t.device.type != device.type:
        return False
    if device.index is None and device.type == "cuda":
        return t.device.index == torch.cuda.current_device()
    return device.index is None or t.device.index == device.index


class PlainLoss(CrossEntropyLossFlat):
    """fastai's ``CrossEntropyLossFlat`` giving a plain tensor: the same loss, bit for bit, without fastai's
    ``TensorBase`` wrapper, whose ``__torch_function__`` every later op on the loss went through (the
    backward pass, the smoothed loss, the NaN check: about 10 per batch)."""

    def _contiguous(self, x):
        return x.transpose(self.axis, -1).contiguous() if isinstance(x, torch.Tensor) else x


_STATE_KEYS = {"grad_avg", "sqr_avg", "step", "do_wd"}  # what fastai's AdamW callbacks keep per parameter


class LeanOptimizer(Optimizer):
    """fastai's ``Optimizer`` (its step callbacks, state and hyper-parameters: the same updates in the same
    order) without rebuilding the list of (parameter, group, state, hypers) twice per ``step`` and
    ``zero_grad``, and setting a hyper-parameter from a float or an array of one per group directly. fastai's
    default ``Adam`` (AdamW) steps a whole parameter group at once (:meth:`_adamw_step`); any other set of
    step callbacks (SGD, RAdam, L2 Adam, a user's) runs fastai's per-parameter loop."""

    def _params(self) -> list:
        key = (self.param_lists, self.hypers, [len(pg) for pg in self.param_lists])
        cached = self.__dict__.get("_pairs")
        if cached is None or cached[0][0] is not key[0] or cached[0][1] is not key[1] or cached[0][2] != key[2]:
            cached = self._pairs = (key, [(p, h) for pg, h in zip(self.param_lists, self.hypers) for p in pg])
        return cached[1]

    def zero_grad(self):
        grads = [p.grad for p, _ in self._params() if p.grad is not None]
        for g in grads:
            g.detach_()
        if grads:  # fastai zeroes each gradient: one kernel launch per parameter on a GPU; here one in all
            torch._foreach_zero_(grads)

    def step(self, closure=None):
        if closure is not None:
            raise NotImplementedError("fastai optimizers currently do not support closure")
        if self._is_adamw():
            return self._adamw_step()
        for p, hyper in self._params():  # fastai's all_params looks up every parameter's state (a defaultdict)
            self._param_step(p, hyper)

    def _is_adamw(self) -> bool:
        """Whether the step callbacks are exactly fastai's ``Adam(..., decouple_wd=True)`` (its default)."""
        cbs = self.cbs
        cached = self.__dict__.get("_adamw")
        if cached is None or cached[0] is not cbs or cached[1] != len(cbs):
            avg = cbs[1] if len(cbs) == 5 else None
            ok = (len(cbs) == 5 and cbs[0] is weight_decay and isinstance(avg, partial) and avg.func is average_grad
                  and not avg.args and avg.keywords == {"dampening": True} and cbs[2] is average_sqr_grad
                  and cbs[3] is step_stat and cbs[4] is adam_step)
            cached = self._adamw = (cbs, len(cbs), ok)
        return cached[2]

    def _adamw_step(self):
        """fastai's AdamW step (``weight_decay``, ``average_grad(dampening=True)``, ``average_sqr_grad``,
        ``step_stat``, ``adam_step``) for a whole parameter group at once with torch's ``_foreach`` ops: the
        same operations on each tensor in the same order with the same Python-float scalars, and the same
        per-parameter state (``grad_avg``, ``sqr_avg``, ``step``), in place of five Python callbacks and
        their dict merges per parameter (on a CUDA step of a small CNN, most of the host's work)."""
        for pg, hyper in zip(self.param_lists, self.hypers):
            if _STATE_KEYS & hyper.keys():  # a hyper-parameter shadowing a state entry: fastai's own path
                for p in pg:
                    self._param_step(p, hyper)
                continue
            ps = [p for p in pg if p.grad is not None]
            if not ps:
                continue
            lr, mom, sqr_mom, eps, wd = (hyper[k] for k in ("lr", "mom", "sqr_mom", "eps", "wd"))
            states = [self.state[p] for p in ps]  # a defaultdict: each parameter's own dict, updated in place
            data = [p.data for p in ps]
            grads = [p.grad.data for p in ps]
            if wd != 0:
                decay = [d for d, st in zip(data, states) if st.get("do_wd", True)]
                if decay:
                    torch._foreach_mul_(decay, 1 - lr * wd)
            avgs = [st["grad_avg"] if st.get("grad_avg") is not None else torch.zeros_like(g)
                    for st, g in zip(states, grads)]
            torch._foreach_mul_(avgs, mom)
            torch._foreach_add_(avgs, grads, alpha=1 - mom)
            sqrs = [st["sqr_avg"] if st.get("sqr_avg") is not None else torch.zeros_like(g)
                    for st, g in zip(states, grads)]
            torch._foreach_mul_(sqrs, sqr_mom)
            torch._foreach_addcmul_(sqrs, grads, grads, value=1 - sqr_mom)
            by_step: dict = {}
            for i, (st, a, q) in enumerate(zip(states, avgs, sqrs)):
                st["grad_avg"], st["sqr_avg"] = a, q
                st["step"] = st.get("step", 0) + 1
                by_step.setdefault(st["step"], []).append(i)
            for step, idx in by_step.items():  # parameters that missed steps (frozen, then not) debias apart
                debias1 = debias(mom, 1 - mom, step)
                debias2 = debias(sqr_mom, 1 - sqr_mom, step)
                denom = torch._foreach_div([sqrs[i] for i in idx], debias2)
                torch._foreach_sqrt_(denom)
                torch._foreach_add_(denom, eps)
                torch._foreach_addcdiv_([data[i] for i in idx], [avgs[i] for i in idx], denom, value=-lr / debias1)

    def _param_step(self, p, hyper):
        """fastai's ``Optimizer.step`` for one parameter."""
        state = self.state[p]
        if p.grad is None:
            return
        for cb in self.cbs:
            state = _update(state, cb(p, **{**state, **hyper}))
        self.state[p] = state

    def set_hyper(self, k, v):
        n = len(self.param_lists)
        if len(self.hypers) == n:
            values = ([v] * n if type(v) is float else
                      list(v) if isinstance(v, np.ndarray) and v.ndim == 1 and len(v) == n else None)
            if values is not None:  # what fastai's set_hyper makes of them: L(v), one value repeated per group
                for h, value in zip(self.hypers, values):
                    h[k] = value
                return
        super().set_hyper(k, v)

    def __getstate__(self):
        state = self.__dict__.copy()
        state.pop("_pairs", None)
        state.pop("_adamw", None)
        return state


class CombinedSchedule:
    """fastai's ``combine_scheds`` schedule, computed without tensors: the same value for every position.

    fastai keeps the phase boundaries as a float32 tensor and, per call, compares the position with them,
    picks a phase and scales the position with float32 tensor ops, then calls the phase's schedule with
    that float32 value. Here the same float32 arithmetic runs on numpy scalars (one rounding per op, as
    torch's), and the phase's own schedule function is called with the same number.
    """

    def __init__(self, pcts, pct_lim: int, scheds):
        self.pcts = [np.float32(p) for p in pcts.tolist()]
        self.pct_lim, self.scheds = pct_lim, scheds

    @classmethod
    def of(cls, f):
        """``f`` as a :class:`CombinedSchedule` if it is a ``combine_scheds`` schedule, else ``f`` unchanged."""
        if getattr(f, "__qualname__", "") != "combine_scheds.<locals>._inner" or not f.__closure__:
            return f
        env = dict(zip(f.__code__.co_freevars, (c.cell_contents for c in f.__closure__)))
        pcts = env.get("pcts")
        if not (isinstance(pcts, torch.Tensor) and pcts.dtype == torch.float32 and pcts.ndim == 1
                and isinstance(env.get("pct_lim"), int) and isinstance(env.get("scheds"), (list, tuple, L))):
            return f
        return cls(pcts, env["pct_lim"], list(env["scheds"]))

    def __call__(self, pos):
        p = np.float32(pos)  # torch compares and subtracts a Python float with a float32 tensor in float32
        idx = min(max(i for i, c in enumerate(self.pcts) if p >= c), self.pct_lim)
        actual = (p - self.pcts[idx]) / (self.pcts[idx + 1] - self.pcts[idx])
        return self.scheds[idx](float(actual))


class LeanRecorder(Recorder):
    """fastai's ``Recorder`` (``learn.recorder``: ``values``, ``losses``, ``lrs``, ``plot_loss``...) with the
    same numbers: per training batch the smoothed loss is computed once rather than twice, without
    rebuilding the metric lists."""

    @property
    def name(self):
        return "recorder"

    def __init__(self, add_time=True, train_metrics=False, valid_metrics=True, beta=0.98):
        super().__init__(add_time=add_time, train_metrics=train_metrics, valid_metrics=valid_metrics, beta=beta)
        self.loss = DeviceAvgLoss()

    def after_batch(self):
        learn = self.learn
        if len(learn.yb) == 0:
            return
        if not learn.training:
            if self.valid_metrics and not getattr(self, "cancel_valid", False):
                self.loss.accumulate(learn)
                for met in learn.metrics:
                    met.accumulate(learn)
            return
        if not getattr(self, "cancel_train", False):
            self.smooth_loss.accumulate(learn)
            if self.train_metrics:
                for met in learn.metrics:
                    met.accumulate(learn)
        self.lrs.append(learn.opt.hypers[-1]["lr"])
        value = self.smooth_loss.value
        self.losses.append(value)
        learn.smooth_loss = value


class DeviceAvgLoss(AvgLoss):
    """fastai's ``AvgLoss`` (the validation loss), summed where the loss is rather than copied to the host
    per batch: the same float32 products and sums, read once per epoch."""

    def accumulate(self, learn):
        if num_distrib() > 1:  # fastai gathers every process's values first
            return super().accumulate(learn)
        bs = find_bs(learn.yb)
        self.total += learn.loss.mean().detach() * bs
        self.count += bs


class DeviceAvgMetric(AvgMetric):
    """fastai's ``AvgMetric`` (``accuracy``), summed where the predictions are; the same numbers as
    :class:`DeviceAvgLoss`."""

    def accumulate(self, learn):
        if num_distrib() > 1:
            return super().accumulate(learn)
        bs = find_bs(learn.yb)
        self.total += self.func(learn.pred, *learn.yb).detach() * bs
        self.count += bs


def lean_learner(learn: Learner) -> Learner:
    """``learn`` as a :class:`SweepLearner`, its ``CrossEntropyLossFlat`` a :class:`PlainLoss`, its Recorder
    a :class:`LeanRecorder` and its fastai averaged metrics summed on the device: the same training and the
    same numbers, less host work per batch."""
    learn.__class__ = SweepLearner
    if type(learn.loss_func) is CrossEntropyLossFlat:  # the default of depth_learner
        loss = object.__new__(PlainLoss)
        loss.__dict__.update(learn.loss_func.__dict__)
        learn.loss_func = loss
    old = getattr(learn, "recorder", None)
    if type(old) is Recorder:
        learn.remove_cb(old)
        learn.add_cb(LeanRecorder(add_time=old.add_time, train_metrics=old.train_metrics,
                                  valid_metrics=old.valid_metrics, beta=old.smooth_loss.beta))
    learn.metrics = [DeviceAvgMetric(m.func) if type(m) is AvgMetric else m for m in learn.metrics]
    return learn
