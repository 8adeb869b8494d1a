"""Write notebooks/01_depth_sweep.ipynb and 02_reading_reports.ipynb (without outputs) from the cells below.

Edit the cells here, or edit the notebooks in Jupyter and clear their outputs before committing;
tests/test_notebooks.py runs both in quick mode.

    python experiments/make_notebooks.py
"""
from pathlib import Path

import nbformat as nbf

ROOT = Path(__file__).resolve().parents[1]
from nbformat.v4 import new_notebook, new_markdown_cell as md, new_code_cell as code

meta = {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
        "language_info": {"name": "python"}}

nb1 = new_notebook(metadata=meta, cells=[
md("""# Depth sweep from Jupyter

How does a CNN's depth change what it learns, and what does it cost? This notebook does by hand what
`cnn-depth sweep --depths 2 3 4` does, with the same library functions, then runs the sweep itself and reads
its report back from CSV.

**What depth means here.** `depth` is the number of 3×3 conv layers on the main path. Every family model is
a 16-channel stem conv followed by up to three stages (32, 64, 128 channels); each stage starts with a
stride-2 conv that halves the feature map. Depth 3 has the tutorial SimpleCNN's widths 16-32-64, depth 4
DeeperCNN's 16-32-64-128; deeper models add convs inside the stages. The head is global average pooling and
one linear layer, so any image size works.

Set `CNN_DEPTH_QUICK=1` in the environment for a quick pass (20 images per class, 1 epoch): CI runs the
notebook that way. Without it the settings below are the real ones (the whole embedded sample, 5 epochs;
a few minutes on 2 CPU cores)."""),
code("""import os
import tempfile

import matplotlib.pyplot as plt
import pandas as pd

from cnn_depth import count_params, dataloaders, depth_learner, run_sweep, summarize

QUICK = os.environ.get("CNN_DEPTH_QUICK") == "1"
MAX_PER_CLASS = 20 if QUICK else None   # images per class and split; None: the whole embedded sample
EPOCHS = 1 if QUICK else 5
DEPTHS = [2, 3, 4]
OUT = tempfile.mkdtemp(prefix="sweep-") if QUICK else "runs/notebook-01"
print(f"quick={QUICK}  max_per_class={MAX_PER_CLASS}  epochs={EPOCHS}  out={OUT}")"""),
md("""## The data

`dataloaders()` builds fastai `DataLoaders` from a DataBlock over the embedded CIFAR-10 sample (500 training
and 100 test images per class). Any folder or archive laid out `train/<class>/`, `test/<class>/` works too."""),
code("""dls = dataloaders("cifar10-sample", bs=64, max_per_class=MAX_PER_CLASS)
print(f"{len(dls.train_ds)} train / {len(dls.valid_ds)} valid images, {dls.c} classes, "
      f"{dls.data_info.n_in} channels, {dls.data_info.img_size} px")
dls.show_batch(max_n=9, figsize=(5, 5))"""),
md("""## Learners for a few depths

`depth_learner` wraps a model of the family in a plain fastai `Learner` (cross-entropy loss, accuracy
metric; channels and classes come from the DataLoaders), so everything fastai offers works on it."""),
code("""learners = {}
for depth in (2, 4):
    learn = depth_learner(dls, depth=depth, arch="bn")
    print(f"depth {depth}: {count_params(learn.model):,} parameters")
    learn.fit_one_cycle(EPOCHS, 3e-3)
    valid_loss, acc = learn.validate()
    print(f"depth {depth}: valid_loss={valid_loss:.4f} accuracy={acc:.4f}")
    learners[depth] = learn"""),
code("""learners[4].model  # the layers: stem, stage1..3, head"""),
md("""## The sweep

`run_sweep` is what `cnn-depth sweep` calls: one seeded run per depth (and seed), each written to
`results.csv` the moment it ends, plus `history.csv`, `summary.csv`, `activations.csv`, `sweep.json` and
plots. Rerunning it with the same `out` skips the finished runs."""),
code("""results = run_sweep(depths=DEPTHS, seeds=[0], epochs=EPOCHS, arch="bn", dataset="cifar10-sample",
                    max_per_class=MAX_PER_CLASS, out=OUT, quiet=True)
results[["run_id", "depth", "params", "train_seconds", "accuracy", "status"]]"""),
md("""## Reading the report back from CSV

Everything printed above is in the files: read them like any other CSV."""),
code("""results = pd.read_csv(f"{OUT}/results.csv")
summary = summarize(results)
summary[["arch", "depth", "runs", "accuracy_mean", "accuracy_std", "params", "train_seconds_mean", "best"]]"""),
code("""history = pd.read_csv(f"{OUT}/history.csv")
fig, (ax_acc, ax_cost) = plt.subplots(1, 2, figsize=(10, 3.5))
for depth, h in history.groupby("depth"):
    ax_acc.plot(h["epoch"], h["accuracy"], marker="o", label=f"depth {depth}")
ax_acc.set(xlabel="epoch", ylabel="validation accuracy", title="learning curves")
ax_acc.legend()
ax_cost.plot(summary["params"], summary["accuracy_mean"], marker="o")
for _, r in summary.iterrows():
    ax_cost.annotate(f"d{r['depth']}", (r["params"], r["accuracy_mean"]))
ax_cost.set(xscale="log", xlabel="parameters", ylabel="validation accuracy", title="what depth costs")
plt.tight_layout()"""),
md("""**How to read it.** Each row of `summary` is one depth: `accuracy_mean ± accuracy_std` over seeds (one
seed here, so no std: run several with `seeds=[0, 1, 2]` before believing a gap of a few points; on 1,000
test images one standard error is about 1.5 points), the parameter count, and the mean training seconds.
Going from depth 2 to 4 adds a stage per conv, so parameters grow about 4× per step; whether accuracy
follows is the question the sweep answers. For deeper models compare `arch="plain"` with `"bn"` and
`"residual"`: see `02_reading_reports.ipynb`."""),
])

nb2 = new_notebook(metadata=meta, cells=[
md("""# Reading sweep reports: from CSV to a figure

A sweep leaves `results.csv` (one row per run), `history.csv` (per epoch) and `activations.csv` (per conv
layer) in its folder. This notebook turns several of them into the figures a paper needs: mean ± std
accuracy per depth, plain vs bn vs residual, and why deep plain nets train worse.

Point `SWEEPS` at your own sweep folders. When it is empty (as in CI), the notebook makes three small sweeps
first, one per arch. `CNN_DEPTH_QUICK=1` makes them tiny (20 images per class, 1 epoch); without it they
use the whole embedded sample, 3 seeds and 5 epochs (about half an hour on 2 CPU cores)."""),
code("""import os
import tempfile
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd

from cnn_depth import report, run_sweep, summarize

QUICK = os.environ.get("CNN_DEPTH_QUICK") == "1"
SWEEPS = []  # e.g. ["runs/cifar10-sample-bn-d2-4-s0-e5", "runs/cifar10-sample-plain-d2-4-s0-e5"]"""),
code("""if not SWEEPS:
    root = Path(tempfile.mkdtemp(prefix="sweeps-")) if QUICK else Path("runs/notebook-02")
    settings = dict(depths=[1, 3, 6] if QUICK else [2, 4, 8, 14], seeds=[0, 1] if QUICK else [0, 1, 2],
                    epochs=1 if QUICK else 5, max_per_class=20 if QUICK else None, quiet=True)
    for arch in ("plain", "bn", "residual"):
        run_sweep(arch=arch, out=str(root / arch), **settings)
        SWEEPS.append(str(root / arch))
SWEEPS"""),
md("""## One table over all sweeps

Concatenate the CSVs; `summarize` groups by dataset, arch, epochs and depth and averages the seeds of
finished (`ok`) runs. `report` does the same from files and also writes `summary.csv` and `comparison.png`
(what `cnn-depth report` prints)."""),
code("""results = pd.concat([pd.read_csv(Path(s) / "results.csv") for s in SWEEPS], ignore_index=True)
print(results["status"].value_counts().to_dict())
summary = summarize(results)
summary[["arch", "depth", "runs", "accuracy_mean", "accuracy_std", "params", "train_seconds_mean", "best"]]"""),
code("""table = summary.assign(acc=summary.apply(
    lambda r: f"{r.accuracy_mean:.3f} ± {r.accuracy_std:.3f}" if r.runs > 1 else f"{r.accuracy_mean:.3f}", axis=1))
table.pivot(index="depth", columns="arch", values="acc")"""),
code("""compared = report([Path(s) / "results.csv" for s in SWEEPS], out=tempfile.mkdtemp(prefix="report-"))
sorted(p.name for p in Path(compared.attrs["out"]).iterdir())"""),
md("""## Accuracy against depth, one line per arch

Error bars are one standard deviation over seeds (ddof=1)."""),
code("""fig, ax = plt.subplots(figsize=(6, 4))
for arch, g in summary.groupby("arch"):
    ax.errorbar(g["depth"], g["accuracy_mean"], yerr=g["accuracy_std"].fillna(0), marker="o", capsize=3, label=arch)
ax.set(xlabel="depth (conv layers)", ylabel="validation accuracy", title="accuracy vs depth")
ax.legend()
ax.grid(alpha=0.3)"""),
md("""## What it costs

Parameters and training time per depth: the cost side of the trade-off."""),
code("""fig, (ax_p, ax_t) = plt.subplots(1, 2, figsize=(10, 3.5))
for arch, g in summary.groupby("arch"):
    ax_p.plot(g["depth"], g["params"], marker="o", label=arch)
    ax_t.plot(g["depth"], g["train_seconds_mean"], marker="o", label=arch)
ax_p.set(xlabel="depth", ylabel="parameters", yscale="log", title="parameters")
ax_t.set(xlabel="depth", ylabel="seconds per run", title="training time")
ax_p.legend()
plt.tight_layout()"""),
md("""## Why deep plain nets train worse

`activations.csv` holds, per run and conv layer, statistics of the ReLU outputs on a fixed validation batch.
In a deep plain net the activation scale shrinks layer after layer and more units stay at zero; batch norm
and shortcuts keep the signal alive."""),
code("""acts = pd.concat([pd.read_csv(Path(s) / "activations.csv") for s in SWEEPS], ignore_index=True)
deepest = acts["depth"].max()
d = acts[acts["depth"] == deepest].groupby(["arch", "index"], as_index=False)[["std", "frac_zero"]].mean()
fig, (ax_s, ax_z) = plt.subplots(1, 2, figsize=(10, 3.5))
for arch, g in d.groupby("arch"):
    ax_s.plot(g["index"], g["std"], marker="o", label=arch)
    ax_z.plot(g["index"], g["frac_zero"], marker="o", label=arch)
ax_s.set(xlabel="conv layer", ylabel="std of ReLU outputs", yscale="log", title=f"activation scale, depth {deepest}")
ax_z.set(xlabel="conv layer", ylabel="fraction of zeros", ylim=(0, 1), title="dead units")
ax_s.legend()
plt.tight_layout()"""),
md("""**Reading it for a paper.** Quote accuracy as mean ± std over seeds with the number of seeds, the
epochs, and the dataset size; `sweep.json` next to each `results.csv` holds the full config and the
versions, device and git commit that produced the numbers."""),
])

for nb, name in ((nb1, "01_depth_sweep"), (nb2, "02_reading_reports")):
    for i, cell in enumerate(nb.cells):  # stable ids: rewriting a notebook changes only what changed
        cell.id = f"{name[:2]}-{i:02d}"
    nbf.write(nb, ROOT / "notebooks" / f"{name}.ipynb")
