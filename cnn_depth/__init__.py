"""cnn-depth: how does a CNN's depth change what it learns, and what does it cost?

The public API, shared by the CLI and notebooks::

    from cnn_depth import dataloaders, depth_learner
    dls = dataloaders()                      # embedded CIFAR-10 sample
    learn = depth_learner(dls, depth=4)      # a fastai Learner
    learn.fit_one_cycle(2, 3e-3)

    from cnn_depth import run_sweep
    df = run_sweep(depths=[2, 3, 4], seeds=[0], epochs=1, max_per_class=50, out="runs/x")   # one row per run
"""
__version__ = "0.1.0"

import warnings as _warnings

# fastai's import triggers torch's own deprecation notice for torch.jit.script; it is not ours to act on.
_warnings.filterwarnings("ignore", message=r".*torch\.jit\.script.*", category=FutureWarning)

from .checkpoint import load_run_model, save_run_model
from .config import SweepConfig
from .data import dataloaders, image_folder, list_datasets
from .errors import CnnDepthError
from .explain import activation_stats, feature_maps, grad_cam
from .learner import depth_learner
from .models import count_params, depth_cnn, layer_table, list_models
from .reports import report, summarize
from .sweep import run_sweep

__all__ = ["CnnDepthError", "SweepConfig", "activation_stats", "count_params", "dataloaders", "depth_cnn",
           "depth_learner", "feature_maps", "grad_cam", "image_folder", "layer_table", "list_datasets", "list_models",
           "load_run_model", "report", "run_sweep", "save_run_model", "summarize"]
