"""Reports from results.csv and history.csv: the summary table, its plots, and comparisons across sweeps.

Every number here is computed from the CSV files alone, so a report can be rebuilt (or checked) at any time
with ``cnn-depth report <out>/results.csv``.
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np
import pandas as pd

from .errors import CnnDepthError

GROUP = ["dataset", "arch", "epochs"]  # one line per group in plots; a summary row per group and depth
KEYS = GROUP + ["depth"]
REQUIRED = ["run_id", "dataset", "arch", "depth", "seed", "epochs", "params", "train_seconds", "accuracy", "status"]
SUMMARY_COLUMNS = KEYS + ["runs", "accuracy_mean", "accuracy_std", "params", "train_seconds_mean",
                          "images_per_second_mean", "not_ok", "best"]

PathLike = Union[str, os.PathLike]


def load_results(path: PathLike) -> pd.DataFrame:
    """A results.csv written by a sweep, checked: a missing file or other CSV is a one-line error."""
    path = Path(path).expanduser()
    if path.is_dir() and (path / "results.csv").exists():
        path = path / "results.csv"
    if not path.is_file():
        raise CnnDepthError(f"no such file: {path}; give the results.csv of a sweep (in its --out folder)")
    try:
        df = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, OSError) as e:
        raise CnnDepthError(f"cannot read {path} as CSV ({type(e).__name__}); give the results.csv of a "
                            f"sweep") from e
    missing = [c for c in REQUIRED if c not in df.columns]
    if missing:
        raise CnnDepthError(f"{path} is not a sweep's results.csv (no column {', '.join(missing)}); give the "
                            f"results.csv in a cnn-depth sweep's --out folder")
    return df


def summarize(results: pd.DataFrame) -> pd.DataFrame:
    """Per (dataset, arch, epochs, depth): finished runs, mean ± std accuracy over seeds, params, mean seconds.

    Only ``ok`` runs are averaged; ``not_ok`` counts the others. ``accuracy_std`` uses ddof=1 (NaN for a
    single seed). ``best`` marks the depth with the highest mean accuracy within its (dataset, arch, epochs).
    """
    if results.empty:
        return pd.DataFrame(columns=SUMMARY_COLUMNS)
    ok = results[results["status"] == "ok"]
    counts = results.groupby(KEYS).size().rename("total")
    agg = ok.groupby(KEYS).agg(runs=("accuracy", "size"), accuracy_mean=("accuracy", "mean"),
                               accuracy_std=("accuracy", "std"), params=("params", "first"),
                               train_seconds_mean=("train_seconds", "mean"),
                               images_per_second_mean=("images_per_second", "mean"))
    s = pd.concat([counts, agg], axis=1).reset_index()
    s["runs"] = s["runs"].fillna(0).astype(int)
    s["not_ok"] = s["total"] - s["runs"]
    if s["params"].isna().any():  # a depth whose every run failed: take params from any of its rows
        first = results.groupby(KEYS)["params"].first().reset_index()
        s = s.drop(columns="params").merge(first, on=KEYS)
    s = s.sort_values(KEYS).reset_index(drop=True)
    s["best"] = False
    for _, g in s[s["runs"] > 0].groupby(GROUP):
        s.loc[g["accuracy_mean"].idxmax(), "best"] = True
    return s[SUMMARY_COLUMNS]


def format_summary(summary: pd.DataFrame) -> str:
    """The summary as a fixed-width text table (accuracy as mean ± std over seeds)."""
    lines = [f"{'dataset':<16} {'arch':<10} {'epochs':>6} {'depth':>5} {'runs':>4} {'accuracy':<17} "
             f"{'params':>10} {'train_s':>8} {'img/s':>6}"]
    for r in summary.itertuples():
        if r.runs:
            acc = f"{r.accuracy_mean:.4f}" + (f" ± {r.accuracy_std:.4f}" if r.runs > 1 else "")
            secs, ips = f"{r.train_seconds_mean:.1f}", f"{r.images_per_second_mean:.0f}"
        else:
            acc, secs, ips = "-", "-", "-"
        params = f"{int(r.params):,}" if pd.notna(r.params) else "-"
        notes = ("  <- best" if r.best else "") + (f"  ({r.not_ok} not ok)" if r.not_ok else "")
        lines.append(f"{str(r.dataset):<16} {str(r.arch):<10} {int(r.epochs):>6} {int(r.depth):>5} {r.runs:>4} "
                     f"{acc:<17} {params:>10} {secs:>8} {ips:>6}{notes}")
    return "\n".join(lines)


def _label(key) -> str:
    dataset, arch, epochs = key
    return f"{arch} · {dataset} · {epochs} ep"


def plot_accuracy_vs_depth(summary: pd.DataFrame, path: PathLike, title: str = "accuracy vs depth") -> Path:
    """Mean accuracy vs depth with ± std error bars, one line per (dataset, arch, epochs); parameters
    (dashed, log scale) on a second axis; the best depth of each line starred."""
    from matplotlib.figure import Figure  # no pyplot: no global backend state, safe inside notebooks

    fig = Figure(figsize=(7.5, 4.5), layout="constrained")
    ax = fig.subplots()
    ax2 = ax.twinx()
    s = summary[summary["runs"] > 0]
    for i, (key, g) in enumerate(s.groupby(GROUP)):
        color = f"C{i % 10}"
        g = g.sort_values("depth")
        ax.errorbar(g["depth"], g["accuracy_mean"], yerr=g["accuracy_std"].fillna(0), color=color, marker="o",
                    capsize=3, label=_label(key))
        best = g[g["best"]]
        ax.plot(best["depth"], best["accuracy_mean"], "*", color=color, markersize=14)
        ax2.plot(g["depth"], g["params"], "--", color=color, alpha=0.6, marker=".")
    ax.set_xlabel("depth (conv layers)")
    ax.set_ylabel("validation accuracy (mean ± std over seeds)")
    ax2.set_ylabel("parameters (dashed)")
    ax2.set_yscale("log")
    depths = sorted(s["depth"].unique())
    if depths:
        ax.set_xticks(depths)
        ax.legend(loc="best", fontsize="small")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    path = Path(path)
    fig.savefig(path, dpi=110)
    return path


def plot_curves(history: pd.DataFrame, results: pd.DataFrame, path: PathLike) -> Path:
    """Validation loss and accuracy per epoch, one line per depth (mean over the ``ok`` runs' seeds)."""
    from matplotlib import colormaps
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    ok_ids = set(results.loc[results["status"] == "ok", "run_id"])
    h = history[history["run_id"].isin(ok_ids)]
    fig = Figure(figsize=(10, 4), layout="constrained")
    ax_loss, ax_acc = fig.subplots(1, 2)
    groups = list(h.groupby(GROUP))
    depths = sorted(h["depth"].unique())
    cmap = colormaps["viridis"]
    styles = ["-", "--", ":", "-."]
    for gi, (key, g) in enumerate(groups):
        for depth, d in g.groupby("depth"):
            m = d.groupby("epoch")[["valid_loss", "accuracy"]].mean()
            color = cmap(depths.index(depth) / max(1, len(depths) - 1))
            label = f"depth {depth}" + (f" · {_label(key)}" if len(groups) > 1 else "")
            ax_loss.plot(m.index, m["valid_loss"], styles[gi % 4], color=color, marker="o", label=label)
            ax_acc.plot(m.index, m["accuracy"], styles[gi % 4], color=color, marker="o", label=label)
    for ax, name in ((ax_loss, "validation loss"), (ax_acc, "validation accuracy")):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("epoch")
        ax.set_ylabel(name)
        ax.grid(alpha=0.3)
    if groups:
        ax_acc.legend(fontsize="small")
        ax_loss.set_title(f"per epoch, mean over seeds ({_label(groups[0][0]) if len(groups) == 1 else 'all'})")
    path = Path(path)
    fig.savefig(path, dpi=110)
    return path


def plot_activations(activations, out_png: PathLike) -> Path:
    """Plot ``activations.csv`` (a path or DataFrame): zero fraction and std by conv layer, a line per depth.

    Seeds are averaged; archs get their own line style. Returns the PNG path.
    """
    df = activations if isinstance(activations, pd.DataFrame) else pd.read_csv(activations)
    missing = [c for c in ("index", "frac_zero", "std") if c not in df.columns]
    if missing or df.empty:
        raise CnnDepthError(f"activations table {'is empty' if df.empty else 'lacks columns ' + ', '.join(missing)}; "
                            f"expected the columns of a sweep's activations.csv (index, frac_zero, std, ...)")
    df = df.assign(depth=df["depth"] if "depth" in df else 0, arch=df["arch"] if "arch" in df else "")
    n_seeds = int(df.groupby(["arch", "depth"])["seed"].nunique().max()) if "seed" in df else 1
    g = df.groupby(["arch", "depth", "index"], as_index=False)[["frac_zero", "std"]].mean()
    depths = sorted(g["depth"].unique())
    archs = sorted(g["arch"].unique())
    from matplotlib import colormaps
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    cmap = colormaps["viridis"]
    styles = ["-", "--", ":", "-."]
    fig = Figure(figsize=(11, 4.2), dpi=110, layout="constrained")
    ax_z, ax_s = fig.subplots(1, 2)
    for (arch, depth), d in g.groupby(["arch", "depth"]):
        colour = cmap(depths.index(depth) / max(len(depths) - 1, 1) * 0.9)
        kw = dict(color=colour, ls=styles[archs.index(arch) % len(styles)], marker="o", ms=3,
                  label=f"{arch} d{depth}".strip())
        ax_z.plot(d["index"], d["frac_zero"], **kw)
        ax_s.plot(d["index"], d["std"], **kw)
    ax_z.set(xlabel="conv layer (1 = first, input side)", ylabel="fraction of ReLU outputs = 0", ylim=(-0.02, 1.02),
             title="dead units: fraction of zero activations")
    ax_s.set(xlabel="conv layer (1 = first, input side)", ylabel="std of ReLU outputs",
             title="activation scale: std")
    s = g["std"][np.isfinite(g["std"])]
    if len(s) and s.min() > 0 and s.max() / s.min() > 50:  # deep plain nets: scales vanish by orders of magnitude
        ax_s.set_yscale("log")
    for ax in (ax_z, ax_s):
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax_s.legend(fontsize=8, ncol=1 + len(g.groupby(["arch", "depth"])) // 12, loc="best")
    fig.suptitle(f"Activations after training on a fixed validation batch"
                 f"{f' (seeds averaged: up to {n_seeds} per depth)' if n_seeds > 1 else ''}")
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png)
    return out_png


def write_reports(out: PathLike) -> pd.DataFrame:
    """From ``<out>/results.csv``, ``history.csv`` and ``activations.csv``: ``summary.csv``,
    ``accuracy_vs_depth.png``, ``curves.png`` and ``activations.png``. Returns the summary."""
    out = Path(out)
    results = load_results(out / "results.csv")
    summary = summarize(results)
    summary.to_csv(out / "summary.csv", index=False)
    plot_accuracy_vs_depth(summary, out / "accuracy_vs_depth.png", title=f"accuracy vs depth ({out.name})")
    hist_path = out / "history.csv"
    history = pd.read_csv(hist_path) if hist_path.exists() and hist_path.stat().st_size else \
        pd.DataFrame(columns=["run_id", "epoch", "depth", "valid_loss", "accuracy"] + GROUP)
    plot_curves(history, results, out / "curves.png")
    activations = _read_activations([out / "activations.csv"])
    if activations is not None:
        plot_activations(activations, out / "activations.png")
    return summary


def _read_activations(paths: Sequence[Path]) -> Optional[pd.DataFrame]:
    """The rows of those activations.csv files that exist and are not empty, or None."""
    frames = [pd.read_csv(p) for p in paths if p.is_file() and p.stat().st_size]
    frames = [f for f in frames if not f.empty]
    return pd.concat(frames, ignore_index=True).drop_duplicates() if frames else None


def report(paths: Sequence[PathLike], out: Optional[PathLike] = None) -> pd.DataFrame:
    """The summary of one or several sweeps side by side, with a comparison plot.

    Args:
        paths: results.csv files (or sweep folders holding one).
        out: where ``summary.csv`` and ``comparison.png`` go (default ``runs/report``).

    Returns:
        the summary (see :func:`summarize`) over every row of every file; a run found in two files (same
        dataset, arch, epochs, lr, bs, depth and seed) is counted once, with a warning.
    """
    if not paths:
        raise CnnDepthError("give at least one results.csv, e.g. cnn-depth report runs/<sweep>/results.csv")
    frames, seen = [], set()
    for p in paths:
        df = load_results(p)
        real = Path(p).expanduser().resolve()
        if real in seen:
            continue
        seen.add(real)
        df["source"] = str(p)
        frames.append(df)
    results = pd.concat(frames, ignore_index=True)
    dup_keys = [c for c in KEYS + ["seed", "lr", "bs"] if c in results.columns]
    dups = results.duplicated(dup_keys)
    if dups.any():
        first = results[dups].iloc[0]
        warnings.warn(f"{int(dups.sum())} run(s) appear in more than one file (first: {first['run_id']} in "
                      f"{first['source']}); each is counted once", stacklevel=2)
        results = results[~dups]
    summary = summarize(results)
    out = Path(out) if out is not None else Path("runs") / "report"
    try:
        out.mkdir(parents=True, exist_ok=True)
        summary.to_csv(out / "summary.csv", index=False)
    except OSError as e:
        raise CnnDepthError(f"cannot write to {out} ({e.strerror or e}); pick a folder you can write to with "
                            f"--out") from e
    plot_accuracy_vs_depth(summary, out / "comparison.png", title="accuracy vs depth, compared")
    folders = [Path(p).expanduser() if Path(p).expanduser().is_dir() else Path(p).expanduser().parent for p in paths]
    activations = _read_activations([f / "activations.csv" for f in folders])
    if activations is not None:  # the sweeps' per-layer statistics side by side
        plot_activations(activations, out / "activations.png")
    summary.attrs["out"] = str(out)
    return summary
