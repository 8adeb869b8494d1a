"""The report figures: accuracy against depth (with what it costs), learning curves, activations by layer.

Each function draws from a table the reports computed (the summary, history.csv, activations.csv) and
nothing else, so a figure shows exactly the numbers of the CSV files beside it. Figures are matplotlib
``Figure`` objects (no pyplot: no global state, safe inside notebooks and worker processes).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from .errors import CnnDepthError
from .files import PathLike

DPI = 110


def _figure(w: float, h: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(w, h), dpi=DPI, layout="constrained")


def group_colours(n: int) -> list:
    """``n`` distinct colours: tab10, then tab20, then evenly spaced hues."""
    from matplotlib import colormaps

    if n <= 10:
        return [colormaps["tab10"](i) for i in range(n)]
    if n <= 20:
        return [colormaps["tab20"](i) for i in range(n)]
    return [colormaps["hsv"](i / n) for i in range(n)]


def wrap(text: str, width: int) -> str:
    """``text`` with every line longer than ``width`` characters broken at spaces, or inside a long path or
    file name after a ``/``, ``_`` or ``-`` (a name without any is cut), so that a title never runs off the
    figure."""
    import re

    out = []
    for line in text.split("\n"):
        current = ""
        for token in re.findall(r"\s+|[^\s/_-]*[/_-]+|[^\s/_-]+", line):
            if len(current) + len(token) > width and current.strip():
                out.append(current.rstrip())
                current = ""
            if not current and token.isspace():
                continue
            while len(token) > width:  # one name longer than a line: cut it
                out.append(token[:width])
                token = token[width:]
            current += token
        out.append(current.rstrip())
    return "\n".join(out)


def _chars(width_in: float, fontsize: float) -> int:
    """How many characters of DejaVu Sans at ``fontsize`` fit in ``width_in`` inches, with a margin: its
    widest common glyphs are about 0.7 em, a typical line's average under 0.6 em."""
    return max(20, int(width_in * 72 / (0.66 * fontsize)))


def _message_figure(title: str, message: str):
    """A figure that says why there is nothing to draw, instead of empty axes."""
    fig = _figure(7.5, 3)
    ax = fig.subplots()
    ax.set_axis_off()
    ax.set_title(wrap(title, _chars(7.0, 12)))
    ax.text(0.5, 0.5, message, ha="center", va="center", wrap=True, fontsize=11, transform=ax.transAxes)
    return fig


def _depth_axis(ax, depths) -> bool:
    """Ticks at the depths run; a log2 axis when they span more than ×4. Returns whether it is log2."""
    from matplotlib.ticker import FixedLocator, NullLocator, StrMethodFormatter

    depths = sorted(set(int(d) for d in depths))
    log = len(depths) > 1 and depths[-1] / depths[0] > 4
    if log:
        ax.set_xscale("log", base=2)
    ax.xaxis.set_major_locator(FixedLocator(depths))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.xaxis.set_major_formatter(StrMethodFormatter("{x:g}"))
    return log


def _dodge(depths: np.ndarray, i: int, n: int, log: bool) -> np.ndarray:
    """Shift group ``i`` of ``n`` a little sideways so that error bars at one depth do not hide each other."""
    k = i - (n - 1) / 2
    return depths * 2 ** (0.035 * k) if log else depths + 0.07 * k


def _n_seeds(runs: pd.Series) -> str:
    lo, hi = int(runs.min()), int(runs.max())
    return f"n={lo}" if lo == hi else f"n={lo}-{hi}"


def _samples(summary: pd.DataFrame, one: bool = False) -> str:
    """What the summary's samples are: ``images`` (also for summaries from before the kind was recorded),
    ``series`` or ``volumes``; ``samples`` for a mix; ``one``: the singular (``image``, ...)."""
    kinds = set(summary["kind"].dropna().astype(str)) - {""} if "kind" in summary.columns else set()
    kind = kinds.pop() if len(kinds) == 1 else "image" if not kinds else "sample"
    return kind if one else {"series": "series", "volume": "volumes"}.get(kind, kind + "s")


def interval_words(summary: pd.DataFrame) -> str:
    """What the accuracy intervals of a summary are, in words: ``95% t interval over seeds``, ..."""
    methods = set(summary["interval"].dropna())
    t = any(m.startswith("t,") for m in methods)
    wilson = any(m.startswith("Wilson") for m in methods)
    none = any(m.startswith("n=1") for m in methods)
    anytime = any(m.startswith("anytime") for m in methods)
    gs = any(m.startswith("group-sequential") for m in methods)
    pct = f"{float(summary['confidence'].iloc[0]) * 100:g}%"
    parts = ([f"{pct} repeated confidence interval over seeds (group-sequential, --seeds auto)"] if gs else []) + \
        ([f"{pct} anytime-valid confidence sequence over seeds (--seeds auto)"] if anytime else []) + \
        ([f"{pct} t interval over seeds"] if t else []) + \
        ([f"{pct} Wilson interval over the validation {_samples(summary)} (1 seed: not training noise)"]
         if wilson else []) + \
        ([f"no interval (1 seed, {_samples(summary, one=True)} count unknown)"] if none else [])
    return "; ".join(parts)


def plot_accuracy_vs_depth(summary: pd.DataFrame, path: PathLike, title: str = "accuracy vs depth") -> Path:
    """Write :func:`accuracy_figure` of ``summary`` to ``path`` (a PNG); returns the path."""
    return _save(accuracy_figure(summary, title), path)


def _save(fig, path: PathLike) -> Path:
    """Write ``fig`` to ``path`` with :func:`cnn_depth.files.save_figure` (aside, then renamed: a failed write
    leaves the old figure, if any, whole). A full disk is its one line (:class:`cnn_depth.files.DiskFull`,
    exit 1); a folder that cannot be written is one line too (:func:`write_failed`), not a traceback."""
    from .files import save_figure, writing

    path = Path(path)
    try:
        with writing(path, "the figure"):
            path.parent.mkdir(parents=True, exist_ok=True)
        return save_figure(fig, path)
    except OSError as e:  # not a full disk (that is DiskFull already): no permission, a file in the way, ...
        raise CnnDepthError(write_failed(path, e)) from e


def write_failed(path: PathLike, error: OSError) -> str:
    """The one line for a figure that could not be written for another reason than a full disk: which file,
    why, and what to do."""
    return (f"cannot write {path} ({error.strerror or type(error).__name__}); give a folder you can write to "
            f"(--out) and rerun the same command: finished runs are kept and the reports are written again")


LEGEND_CHARS = 44  # legend labels are wrapped to this many characters, so the legend never squeezes the axes


def _short_labels(summary: pd.DataFrame) -> dict:
    """Each group's label as the figures show it: data sources named by their file name, not the whole path."""
    from .reports import group_labels, summary_groups

    try:
        groups = summary_groups(summary)
    except KeyError:  # a summary without its settings' columns: its own labels
        return {}
    return dict(zip(dict.fromkeys(summary["group"]), group_labels(groups, short=True)[0]))


def _header(fig, ax, title: str, summary: pd.DataFrame) -> None:
    """The figure's title and the settings every group shares (data sources by file name) above the axes,
    wrapped to the figure's width; over the axes, in red, what differs between the groups compared
    (:func:`cnn_depth.reports.comparison_note`)."""
    from .reports import comparison_note, group_labels, summary_groups

    try:
        groups = summary_groups(summary)
    except KeyError:
        groups = []
    context = group_labels(groups, short=True)[1] if groups else summary.attrs.get("context", "")
    width = fig.get_figwidth()
    fig.suptitle(wrap(title, _chars(width, 11)) + (f"\n{wrap(context, _chars(width, 9.5))}" if context else ""),
                 fontsize=10)
    note = comparison_note(summary, short=True) if groups else ""
    if note:  # centred over the axes, which leave the legend's width free on the right
        ax.set_title(wrap(note, _chars(width * 0.75, 9)), fontsize=9,
                     color="firebrick" if note.startswith("warning") else "0.2")


def accuracy_figure(summary: pd.DataFrame, title: str = "accuracy vs depth"):
    """Mean accuracy against depth, one colour per group, with what depth costs underneath.

    Top: mean validation accuracy with its interval as error bars (t over seeds; Wilson over the validation
    images for one seed: the axis says which), ``n`` seeds in the legend, the chance level (1/classes)
    dashed, and each group's verdicts marked: a filled star where one depth is above every other, a hollow
    star on the highest mean where it is not, rings on the depths that cannot be told from it. Bottom: MACs
    per image (solid) and parameters (dotted), log scale. Depth is on a log2 axis when the depths span more
    than ×4. The legend sits outside the axes. With no ``ok`` run, the figure says so. Above the axes: the
    title, the settings every group shares and, for several groups, which settings differ between them
    (:func:`cnn_depth.reports.comparison_note`), wrapped to fit; data sources by file name.
    """
    from matplotlib.lines import Line2D

    s = summary[summary["runs"] > 0] if len(summary) else summary
    if s.empty:
        why = ("no runs in results.csv yet" if summary.empty else
               f"none of the {int(summary['not_ok'].sum())} runs finished ok (all failed or diverged):\n"
               f"nothing to plot; see the status and error columns of results.csv")
        return _message_figure(title, why)
    groups = list(dict.fromkeys(s["group"]))
    colours = dict(zip(groups, group_colours(len(groups))))
    short = _short_labels(summary)
    fig = _figure(11, 6.6)
    ax, ax_cost = fig.subplots(2, 1, sharex=True, height_ratios=[2.4, 1])
    log = _depth_axis(ax, summary["depth"])
    handles, labels = [], []
    cost_columns = ["depth", "macs", "params"]
    costs = {label: tuple(map(tuple, summary.loc[summary["group"] == label, cost_columns].sort_values("depth")
                              .astype(float).fillna(-1).to_numpy())) for label in groups}
    same_cost = len(set(costs.values())) == 1  # e.g. one arch under several settings: one cost curve, in grey
    for i, label in enumerate(groups):
        full = summary[summary["group"] == label].sort_values("depth")  # a depth with no ok run breaks the line
        g = full.assign(**{c: full[c].where(full["runs"] > 0) for c in ("accuracy_mean", "accuracy_low",
                                                                        "accuracy_high")})
        c = colours[label]
        x = _dodge(g["depth"].to_numpy(float), i, len(groups), log)
        y = g["accuracy_mean"].to_numpy(float)
        low, high = g["accuracy_low"].to_numpy(float), g["accuracy_high"].to_numpy(float)
        yerr = np.vstack([np.where(np.isnan(low), 0, y - low), np.where(np.isnan(high), 0, high - y)])
        h = ax.errorbar(x, y, yerr=yerr, color=c, marker="o", ms=5, capsize=3, lw=1.6, elinewidth=1.2, zorder=3)
        handles.append(h)
        labels.append(wrap(f"{short.get(label, label)} ({_n_seeds(g.loc[g['runs'] > 0, 'runs'])})", LEGEND_CHARS))
        v = g["verdict"].to_numpy()
        best, top = v == "best", v == "highest mean"
        ring = np.isin(v, ["tied with best", "too few seeds", "above best on shared seeds"])
        ax.plot(x[best], y[best], "*", ms=17, color=c, mec="black", mew=0.8, zorder=4)
        ax.plot(x[top], y[top], "*", ms=17, mfc="white", mec=c, mew=1.6, zorder=4)
        ax.plot(x[ring], y[ring], "o", ms=12, mfc="none", mec=c, mew=1.3, zorder=4)
        if same_cost and i > 0:
            continue
        macs, params = full["macs"].astype(float).to_numpy(), full["params"].astype(float).to_numpy()
        xc, cc = g["depth"].to_numpy(float), "0.3" if same_cost else c
        if np.isfinite(macs).any():
            ax_cost.plot(xc, macs, "-", color=cc, marker="s", ms=4, lw=1.4)
        if np.isfinite(params).any():
            ax_cost.plot(xc, params, ":", color=cc, marker="^", ms=4, lw=1.6)
    chances = sorted({int(k) for k in s["classes"].dropna()})
    for k in chances:
        ax.axhline(1 / k, ls="--", color="0.45", lw=1, zorder=1)
        handles.append(Line2D([], [], ls="--", color="0.45", lw=1))
        labels.append(f"chance (1/{k})")
    verdicts = set(s["verdict"])
    for shown, h in (("best", Line2D([], [], ls="", marker="*", ms=13, color="0.3", mec="black")),
                     ("highest mean", Line2D([], [], ls="", marker="*", ms=13, mfc="white", mec="0.3", mew=1.4)),
                     ("ring", Line2D([], [], ls="", marker="o", ms=10, mfc="none", mec="0.3", mew=1.2))):
        if shown == "best" and "best" in verdicts:
            handles.append(h), labels.append("best: above every other depth\n(paired intervals)")
        elif shown == "highest mean" and "highest mean" in verdicts:
            handles.append(h), labels.append("highest mean, not separated\nfrom every other depth")
        elif shown == "ring" and verdicts & {"tied with best", "too few seeds", "above best on shared seeds"}:
            handles.append(h), labels.append("not separated from the highest\nmean (tied, or too few seeds)")
    for words in interval_words(s).split("; "):
        handles.append(Line2D([], [], ls="", marker="|", ms=14, mew=1.2, color="0.3"))
        labels.append("error bars: " + words.replace(" over ", "\nover ").replace(" (1 seed", "\n(1 seed"))
    ax.set_ylabel("validation accuracy (mean)")
    ax.grid(alpha=0.3)
    _header(fig, ax, title, summary)
    ax_cost.set_yscale("log")
    ax_cost.set_ylabel("cost (log scale)", fontsize=9)
    ax_cost.set_xlabel("depth (conv layers)" + (", log2 axis" if log else ""))
    ax_cost.grid(alpha=0.3, which="both")
    cost = [Line2D([], [], ls="-", marker="s", ms=4, color="0.3"), Line2D([], [], ls=":", marker="^", ms=4, color="0.3")]
    ax_cost.legend(cost, [f"MACs per {_samples(summary, one=True)}", "parameters"], loc="upper left",
                   bbox_to_anchor=(1.01, 1),
                   fontsize=8, title="cost: the same for every group" if same_cost and len(groups) > 1 else
                   "cost, in the group's colour" if len(groups) > 1 else "cost", title_fontsize=8, borderaxespad=0)
    ax.legend(handles, labels, loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=8, borderaxespad=0)
    return fig


def plot_curves(history: pd.DataFrame, results: pd.DataFrame, path: PathLike) -> Path:
    """Write :func:`curves_figure` to ``path`` (a PNG); returns the path."""
    return _save(curves_figure(history, results), path)


def curves_figure(history: pd.DataFrame, results: pd.DataFrame):
    """Per epoch, for the ``ok`` runs: training and validation loss (so over-fitting shows) and validation
    accuracy, one colour per depth, the mean over seeds as a line and the range over seeds (min to max) as
    a band. One row of panels per group (``results["group"]``, when there are several)."""
    from matplotlib import colormaps
    from matplotlib.lines import Line2D
    from matplotlib.ticker import MaxNLocator

    title = "learning curves"
    ok = results[results["status"] == "ok"] if len(results) else results
    h = history[history["run_id"].isin(set(ok["run_id"]))] if len(history) and len(ok) else history.iloc[:0]
    if h.empty:
        why = ("no runs in results.csv yet" if results.empty else "no finished (ok) run: nothing to plot; see the "
               "status and error columns of results.csv" if ok.empty else "history.csv holds no epoch of the ok runs")
        return _message_figure(title, why)
    group_of = dict(zip(ok["run_id"], ok["group"] if "group" in ok.columns else [""] * len(ok)))
    h = h.assign(group=h["run_id"].map(group_of))
    groups = list(dict.fromkeys(group_of[r] for r in ok["run_id"] if r in set(h["run_id"])))
    depths = sorted(int(d) for d in h["depth"].unique())
    cmap = colormaps["viridis"]
    colour = {d: cmap(0.9 * i / max(1, len(depths) - 1)) for i, d in enumerate(depths)}
    short = _short_labels(ok.drop_duplicates("group")) if "group" in ok.columns else {}
    fig = _figure(11.5, 0.4 + 3.6 * len(groups))
    rows = np.atleast_1d(fig.subfigures(len(groups), 1)) if len(groups) > 1 else [fig]
    for sub, label in zip(rows, groups):
        ax_loss, ax_acc = sub.subplots(1, 2)
        g = h[h["group"] == label]
        for depth, d in g.groupby("depth"):
            c = colour[int(depth)]
            by = d.groupby("epoch")
            n = d["run_id"].nunique()
            for ax, col, style in ((ax_loss, "train_loss", "-"), (ax_loss, "valid_loss", "--"),
                                   (ax_acc, "accuracy", "-")):
                m = by[col].agg(["mean", "min", "max"])
                ax.plot(m.index, m["mean"], style, color=c, marker="o", ms=3.5, lw=1.5)
                if n > 1:
                    ax.fill_between(m.index, m["min"], m["max"], color=c, alpha=0.15, lw=0)
        for ax, name in ((ax_loss, "loss"), (ax_acc, "validation accuracy")):
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.set_xlabel("epoch")
            ax.set_ylabel(name)
            ax.grid(alpha=0.3)
        seeds = g.groupby("depth")["run_id"].nunique()
        ns = (f"{seeds.min()} seed{'s' if seeds.max() > 1 else ''}" if seeds.min() == seeds.max() else
              f"{seeds.min()}-{seeds.max()} seeds")
        band = "; band: min to max over seeds" if seeds.max() > 1 else ""
        sub.suptitle(wrap(f"{short.get(label, label) + ': ' if label else ''}mean over seeds per depth ({ns}{band})",
                          _chars(fig.get_figwidth() * 0.8, 10)), fontsize=10)
        ax_loss.set_title("training and validation loss", fontsize=9)
        ax_acc.set_title("validation accuracy", fontsize=9)
        chance = ok.loc[ok["group"] == label, "classes"].dropna() if "group" in ok.columns else ok["classes"].dropna()
        if len(chance):
            ax_acc.axhline(1 / int(chance.iloc[0]), ls=":", color="0.45", lw=1)
    handles = [Line2D([], [], color=colour[d], marker="o", ms=4) for d in depths]
    labels = [f"depth {d}" for d in depths]
    handles += [Line2D([], [], ls="-", color="0.3"), Line2D([], [], ls="--", color="0.3"),
                Line2D([], [], ls=":", color="0.45")]
    labels += ["training loss (smoothed,\nend of epoch)", "validation loss", "chance accuracy"]
    fig.legend(handles, labels, loc="outside right upper", fontsize=8)
    return fig


def plot_activations(activations, out_png: PathLike) -> Path:
    """Plot ``activations.csv`` (a path or DataFrame): zero fraction and std by conv layer, a line per depth.

    Seeds are averaged; archs get their own line style. Returns the PNG path.
    """
    if isinstance(activations, pd.DataFrame):
        df = activations
    else:
        from .records import read_activations

        df = read_activations(activations)
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
    from matplotlib.ticker import MaxNLocator

    cmap = colormaps["viridis"]
    styles = ["-", "--", ":", "-."]
    fig = _figure(11, 4.2)
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
    return _save(fig, out_png)

