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
its sweep is the README main job, 44 s on 2 CPU cores)."""),
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
print(summary["note"].iloc[0])
summary[["depth", "runs", "accuracy_mean", "accuracy_low", "accuracy_high", "interval", "verdict", "params", "macs",
         "train_seconds_mean"]]"""),
code("""history = pd.read_csv(f"{OUT}/history.csv")
fig, (ax_acc, ax_cost) = plt.subplots(1, 2, figsize=(10, 3.5))
for depth, h in history.groupby("depth"):
    ax_acc.plot(h["epoch"], h["accuracy"], marker="o", label=f"depth {depth}")
ax_acc.set(xlabel="epoch", ylabel="validation accuracy", title="learning curves")
ax_acc.legend()
macs = summary["macs"].astype(float)
ax_cost.errorbar(macs, summary["accuracy_mean"], marker="o", capsize=3,
                 yerr=[summary["accuracy_mean"] - summary["accuracy_low"], summary["accuracy_high"] - summary["accuracy_mean"]])
for m, acc, depth in zip(macs, summary["accuracy_mean"], summary["depth"]):
    ax_cost.annotate(f"d{depth}", (m, acc))
ax_cost.set(xscale="log", xlabel="multiply-accumulates per image", ylabel="validation accuracy",
            title="what depth costs (95% intervals)")
plt.tight_layout()"""),
md("""**How to read it.** Each row of `summary` is one depth: the mean accuracy over seeds with its 95%
interval (`interval` names the method: with one seed, as here, a Wilson interval over the validation
images, which cannot show training noise), the `verdict` against the best depth (paired by seed; with one
seed no depth can be separated from another, and the note above says so: run `seeds=[0, 1, 2]` before
believing a gap of a few points), the parameters, the multiply-accumulates per image and the mean training
seconds.
Going from depth 2 to 4 adds a stage per conv, so parameters grow about 4× per step; whether accuracy
follows is the question the sweep answers. For deeper models compare `arch="plain"` with `"bn"` and
`"residual"`: see `02_reading_reports.ipynb`."""),
])

nb2 = new_notebook(metadata=meta, cells=[
md("""# Reading sweep reports: from CSV to a figure

A sweep leaves `results.csv` (one row per run), `history.csv` (per epoch) and `activations.csv` (per conv
layer) in its folder. This notebook turns several of them into the figures a paper needs: mean accuracy
per depth with its 95% interval, plain vs bn vs residual, and why deep plain nets train worse.

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

Concatenate the CSVs; `summarize` groups the runs by every setting that decides their numbers (here only
the arch differs, so the groups are labelled `plain`, `bn`, `residual`), averages the seeds of finished
(`ok`) runs with a 95% interval, and compares each depth with the best depth of its group, paired by seed.
`report` does the same from files and also writes `summary.csv` and `comparison.png` (what `cnn-depth
report` prints)."""),
code("""results = pd.concat([pd.read_csv(Path(s) / "results.csv") for s in SWEEPS], ignore_index=True)
print(results["status"].value_counts().to_dict())
summary = summarize(results)
for group, g in summary.groupby("group", sort=False):
    print(f"{group}: {g['note'].iloc[0]}")
summary[["group", "depth", "runs", "accuracy_mean", "accuracy_low", "accuracy_high", "verdict", "prob_improvement",
         "params", "macs", "train_seconds_mean"]]"""),
code("""table = summary.assign(acc=[f"{m:.3f} [{lo:.3f}, {hi:.3f}]" if n > 0 else "-"
                             for m, lo, hi, n in zip(summary["accuracy_mean"], summary["accuracy_low"],
                                                     summary["accuracy_high"], summary["runs"])])
table.pivot(index="depth", columns="group", values="acc")"""),
code("""compared = report([Path(s) / "results.csv" for s in SWEEPS], out=tempfile.mkdtemp(prefix="report-"))
sorted(p.name for p in Path(compared.attrs["out"]).iterdir())"""),
md("""## Accuracy against depth, one line per arch

Error bars are the summary's 95% interval of the mean over seeds (`interval` says which: t over seeds, or
Wilson over the validation images for a single seed); `comparison.png` from `report` draws the same with
the verdicts marked."""),
code("""fig, ax = plt.subplots(figsize=(6, 4))
for group, g in summary[summary["runs"] > 0].groupby("group", sort=False):
    ax.errorbar(g["depth"], g["accuracy_mean"], marker="o", capsize=3, label=f"{group} (n={g['runs'].max()})",
                yerr=[g["accuracy_mean"] - g["accuracy_low"], g["accuracy_high"] - g["accuracy_mean"]])
ax.axhline(1 / summary["classes"].max(), ls="--", color="grey", label="chance")
ax.set(xlabel="depth (conv layers)", ylabel="validation accuracy (mean, 95% interval)", title="accuracy vs depth")
ax.legend()
ax.grid(alpha=0.3)"""),
md("""## What it costs

Parameters and training time per depth: the cost side of the trade-off."""),
code("""fig, (ax_p, ax_t) = plt.subplots(1, 2, figsize=(10, 3.5))
for group, g in summary.groupby("group", sort=False):
    ax_p.plot(g["depth"], g["macs"].astype(float), marker="o", label=f"{group}: MACs per image")
    ax_p.plot(g["depth"], g["params"].astype(float), ":", marker="^", label=f"{group}: parameters")
    ax_t.plot(g["depth"], g["train_seconds_mean"], marker="o", label=group)
ax_p.set(xlabel="depth", ylabel="count", yscale="log", title="multiply-accumulates and parameters")
ax_t.set(xlabel="depth", ylabel="seconds per run", title="training time")
ax_p.legend(fontsize="small")
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
md("""**Reading it for a paper.** Quote accuracy as the mean with its 95% interval and the number of seeds,
the epochs and the dataset size; claim a best depth only where its `verdict` is `best` (every other depth
below it, paired by seed), and quote the `note` otherwise; `sweep.json` next to each `results.csv` holds the full config and the
versions, device and git commit that produced the numbers."""),
])

for nb, name in ((nb1, "01_depth_sweep"), (nb2, "02_reading_reports")):
    for i, cell in enumerate(nb.cells):  # stable ids: rewriting a notebook changes only what changed
        cell.id = f"{name[:2]}-{i:02d}"
    nbf.write(nb, ROOT / "notebooks" / f"{name}.ipynb")
