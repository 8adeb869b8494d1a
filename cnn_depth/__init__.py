"""cnn-depth: how does a CNN's depth change what it learns, and what does it cost?

The public API, shared by the CLI and notebooks::

    from cnn_depth import dataloaders, depth_learner
    dls = dataloaders()                      # embedded CIFAR-10 sample
    learn = depth_learner(dls, depth=4)      # a fastai Learner
    learn.fit_one_cycle(2, 3e-3)

    from cnn_depth import run_sweep
    df = run_sweep(depths=[2, 3, 4], seeds=[0], epochs=1, max_per_class=50, out="runs/x")   # one row per run

Names are imported on first use (PEP 562), so ``import cnn_depth`` and the CLI's start are quick and a
Ctrl-C during start-up is a one-line message, not an interrupted import of torch.
"""
from __future__ import annotations

import importlib
import warnings as _warnings

__version__ = "0.1.0"

# fastai's import triggers torch's own deprecation notice for torch.jit.script; it is not ours to act on.
_warnings.filterwarnings("ignore", message=r".*torch\.jit\.script.*", category=FutureWarning)

# public name -> the module that holds it
_API = {
    "CnnDepthError": "errors", "SweepFailed": "errors", "SweepInterrupted": "sweep",
    "SweepConfig": "config",
    "DataInfo": "loaders", "dataloaders": "loaders",
    "image_folder": "data", "list_datasets": "data",
    "activation_stats": "probes", "explain_depths": "explain", "feature_maps": "explain", "grad_cam": "explain",
    "depth_learner": "learner", "fit_learner": "learner",
    "count_params": "models", "depth_cnn": "models", "layer_table": "models", "list_models": "models",
    "load_run_model": "checkpoint", "save_run_model": "checkpoint",
    "format_markdown": "reports", "format_summary": "reports", "load_results": "reports",
    "plot_activations": "reports", "report": "reports", "summarize": "reports",
    "run_sweep": "sweep",
}
__all__ = sorted(_API)


def __getattr__(name: str):
    if name in _API:
        value = getattr(importlib.import_module(f".{_API[name]}", __name__), name)
        globals()[name] = value  # next time, a plain attribute
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + __all__)
