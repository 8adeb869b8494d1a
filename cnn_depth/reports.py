"""Reports from results.csv and history.csv: the summary table, its plots, and comparisons across sweeps.

Every number here is computed from the CSV files alone, so a report can be rebuilt (or checked) at any time
with ``cnn-depth report <out>/results.csv``.

A *group* is one setting of everything that decides a run's numbers except depth and seed (``GROUP``:
dataset and its source, arch, epochs, the lr setting, bs, max_per_class, pipeline, augment, compile, threads, device
and precision; the kind of data and, for arrays, dims, pad, fill and the validation split's seed). Runs are
pooled over seeds within a (group, depth) only; two rows are the same run only when their group, depth and seed
all match. Within a group, depths are compared to the best one paired by seed
(:mod:`cnn_depth.stats`), and the summary says how sure each comparison is.
"""
from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import pandas as pd

from . import stats
from .config import settings
from .errors import CnnDepthError
from .files import PathLike, output_folder, writing
from .plots import interval_words, plot_accuracy_vs_depth, plot_activations, plot_curves  # noqa: F401 (this API)
from .records import (RESULT_COLUMNS, SETTING_COLUMNS, RowWarning, check_results, read_activations, read_history,
                      read_results)

GROUP = ["dataset", "arch", *SETTING_COLUMNS]  # one line per group in plots; a summary row per group and depth
KEYS = GROUP + ["depth"]
VERDICT_BEST, VERDICT_TOP, VERDICT_ONLY, VERDICT_NONE = "best", "highest mean", "only depth", "no finished run"
SUMMARY_COLUMNS = [
    "group", *GROUP, "depth", "runs", "not_ok", "seeds",
    "accuracy_mean", "accuracy_std", "accuracy_low", "accuracy_high", "interval", "confidence",
    "diff_to_best", "diff_low", "diff_high", "diff_confidence", "p_adjusted", "paired_seeds", "prob_improvement", "verdict", "best", "note",
    "stopped", "seeds_rule",
    "train_loss_mean", "train_loss_low", "train_loss_high",
    "params", "macs", "peak_memory_mb", "train_seconds_mean", "images_per_second_mean", "classes", "valid_images",
]



# ---------------------------------------------------------------------------------------------------------
# Reading and grouping


def load_results(path: PathLike) -> pd.DataFrame:
    """A results.csv written by a sweep (or its folder), checked row by row: a missing file, another CSV or a
    bad value is a one-line error naming the file and line (see :func:`cnn_depth.records.read_results`)."""
    path = Path(path).expanduser()
    if path.is_dir() and (path / "results.csv").exists():
        path = path / "results.csv"
    if not path.is_file():
        raise CnnDepthError(f"no such file: {path}; give the results.csv of a sweep (in its --out folder)")
    if path.stat().st_size == 0:
        raise CnnDepthError(f"{path} is empty; give the results.csv of a sweep (in its --out folder)")
    df = read_results(path)
    df["file"] = str(path)
    return df


# Each group column's Setting (config.py) by its column: how an empty cell reads and how a value is shown.
COLUMN_SETTINGS = {s.column: s for s in settings().values()}
# The columns a row records of where it ran (records.RECORDED), and the run-identity ones, as labels show them.
SHOWN = {"threads": lambda v: f"{v} threads", "device": str, "precision": str, "dataset": str, "arch": str,
         "kind": lambda v: NOUNS.get(v, v)}
NOUNS = {"image": "images", "series": "series", "volume": "volumes"}  # what a group's samples are called
EMPTY = {"kind": "image"}  # a recorded column's empty cell: rows from before series and volumes were images
# What the shared line leaves out: each setting's unsaid values (compile off, dims auto, ...); the kind always,
# since the samples' noun says it ("all series"); the pipeline of arrays, which have only the one.
UNSAID = {s.column: s.unsaid for s in settings().values() if s.unsaid}


def _canon(column: str, v) -> str:
    """A group setting as one comparable string: ``find`` and ``0.003`` for lr, ``all`` for no max_per_class,
    ``none`` for no transfer, ``?`` where an old row did not record it (each setting's ``empty``)."""
    if v is None or v is pd.NA or (isinstance(v, float) and math.isnan(v)) or (isinstance(v, str) and v == ""):
        # transfer: empty from scratch; compile: rows from before it existed were eager
        return COLUMN_SETTINGS[column].empty if column in COLUMN_SETTINGS else EMPTY.get(column, "?")
    if column == "lr_setting" and not isinstance(v, str):
        return f"{float(v):.10g}"
    if isinstance(v, (bool, np.bool_)):
        return str(bool(v))
    if isinstance(v, (float, np.floating)) and float(v).is_integer():
        return str(int(v))
    return str(v)


def _shown(column: str, v: str, kind: str = "image") -> str:
    """A group setting as a label shows it: ``lr find``, ``5 ep``, ``50/class``, ``no augment`` (each
    setting's ``shown``); every sample of a group of series is ``all series`` (``kind``: the group's, or
    ``""`` for groups of several kinds: ``all samples``)."""
    if column == "max_per_class" and v == "all" and kind != "image":
        return f"all {NOUNS.get(kind, 'samples')}"
    return SHOWN[column](v) if column in SHOWN else COLUMN_SETTINGS[column].shown(v)


def _kind(group: tuple) -> str:
    """The kind of data (image, series, volume) of a group's settings (``GROUP`` order)."""
    return group[GROUP.index("kind")]


def _keys(results: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame({c: [_canon(c, v) for v in results[c]] for c in GROUP}, index=results.index)


def _prepare(results: pd.DataFrame) -> pd.DataFrame:
    """Rows checked and typed (a frame read with pandas works too), what older rows lack filled in, and each
    row's group (``_group``: its settings as one tuple)."""
    df = check_results(results.drop(columns=[c for c in ("_group", "_gid") if c in results.columns])
                       .reset_index(drop=True))
    no_setting = df["lr_setting"].isna()
    df.loc[no_setting, "lr_setting"] = df.loc[no_setting, "lr"]  # an older row: the lr it used
    df.loc[df["source"] == "", "source"] = df.loc[df["source"] == "", "dataset"]
    df["_group"] = list(map(tuple, _keys(df).values))
    ids = {g: i for i, g in enumerate(dict.fromkeys(df["_group"]))}
    df["_gid"] = [ids[g] for g in df["_group"]]  # a number per group, in order of appearance
    return df


def drop_repeated_runs(df: pd.DataFrame) -> pd.DataFrame:
    """Count each run once: rows with the same group, depth and seed are one run (the first ``ok`` row, else
    the first row), with a warning that names the files."""
    ident = pd.Series(list(zip(df["_gid"], df["depth"], df["seed"])), index=df.index)
    order = df.assign(_ok=df["status"] != "ok", _ident=ident).sort_values("_ok", kind="stable")
    keep = ~order.duplicated("_ident")
    dropped = order[~keep]
    if len(dropped):
        r = dropped.iloc[0]
        kept = order[keep & (order["_ident"] == r["_ident"])].iloc[0]
        where = (f" (first: {r['run_id']} in {kept['file']} and {r['file']})" if "file" in df.columns
                 else f" (first: {r['run_id']})")
        warnings.warn(f"{len(dropped)} run(s) appear more than once with the same settings, depth and seed{where}; "
                      f"each is counted once", RowWarning, stacklevel=3)
    return df.loc[sorted(order.index[keep])]


def short_paths(paths: Sequence[str]) -> dict[str, str]:
    """Each path's shortest tail that still tells it from the others: its file name alone where that is
    unique (``/home/me/data/x.tgz`` -> ``x.tgz``), else as many folders above it as it takes (``d/toy`` and
    ``e/toy``). Registry names (no ``/``) stay as they are."""
    distinct = list(dict.fromkeys(paths))
    parts = {p: [q for q in str(p).replace("\\", "/").split("/") if q] or [str(p)] for p in distinct}
    out = {}
    for p in distinct:
        for k in range(1, len(parts[p]) + 1):
            tail = parts[p][-k:]
            if all(parts[q][-k:] != tail for q in distinct if q != p):
                break
        out[p] = "/".join(tail)
    return out


def _differs(cols: dict) -> list[str]:
    """The GROUP columns whose values differ between groups; ``source`` only where the dataset names do not
    already tell the sources apart; never ``kind``, which follows from the dataset and ``dims``."""
    differs = [c for c in GROUP if c != "kind" and len(set(cols[c])) > 1]
    if "source" in differs and len(set(zip(cols["dataset"], cols["source"]))) == len(set(cols["dataset"])):
        differs.remove("source")  # the dataset names already tell the sources apart
    return differs


def group_labels(groups: Sequence[tuple], short: bool = False) -> tuple[list[str], str]:
    """Labels that tell groups apart by what differs between them (``bn · lr find``, ``bn · lr 0.003``), and
    one line of what they share. A single group is labelled ``arch · dataset · N ep``.

    ``short``: data sources given as paths are named by their file name (or the shortest tail that tells
    them apart), as the figures show them; the printed table and summary.csv keep the whole path."""
    if not groups:
        return [], ""
    # groups from before a setting existed (compile, the last) lack it: as its old rows read
    groups = [tuple(g) + tuple(_canon(c, None) for c in GROUP[len(g):]) for g in groups]
    cols = {c: [g[i] for g in groups] for i, c in enumerate(GROUP)}
    differs = _differs(cols)
    if short:
        names = short_paths(cols["source"])
        cols["source"] = [names[v] for v in cols["source"]]
    shown = ["arch"] + [c for c in differs if c != "arch"] if len(groups) > 1 else ["arch", "dataset", "epochs"]
    labels = [" · ".join(_shown(c, cols[c][k], cols["kind"][k]) for c in shown) for k in range(len(groups))]
    kind = cols["kind"][0] if len(set(cols["kind"])) == 1 else ""
    common = [_shown(c, cols[c][0], kind) for c in GROUP if c not in shown and c not in differs
              and not (c == "source" and cols["source"][0] == cols["dataset"][0])
              and c != "kind" and cols[c][0] not in UNSAID.get(c, ())
              and not (c == "pipeline" and kind in ("series", "volume"))]
    return labels, " · ".join(common)


SETTING_NAMES = {"dataset": "dataset", **{s.column: s.words for s in settings().values()},
                 "threads": "torch threads", "device": "device", "precision": "precision", "kind": "kind of data"}


def summary_groups(summary: pd.DataFrame) -> list[tuple]:
    """Each group's settings (``GROUP``, as comparable strings), in the summary's order, from its columns
    alone: a summary read back from summary.csv gives the same."""
    if summary.empty:
        return []
    first = summary.drop_duplicates("group")
    return [tuple(_canon(c, v) for c, v in zip(GROUP, r)) for r in first.reindex(columns=GROUP).itertuples(index=False)]


def setting_differences(summary: pd.DataFrame, short: bool = False) -> list[tuple[str, list[str]]]:
    """The settings that decide a run's numbers and differ between the summary's groups, each with its
    values as the labels show them, in group order: e.g. ``[("arch", ["bn", "residual"]), ("epochs",
    ["2 ep", "1 ep"])]``. Empty for one group, or groups that differ in nothing else than, e.g., source paths
    the dataset names already tell apart."""
    groups = summary_groups(summary)
    if len(groups) < 2:
        return []
    cols = {c: [g[i] for g in groups] for i, c in enumerate(GROUP)}
    if short:
        names = short_paths(cols["source"])
        cols["source"] = [names[v] for v in cols["source"]]
    one_kind = len(set(cols["kind"])) == 1
    return [(c, list(dict.fromkeys(v if c == "source" else _shown(c, v, k if one_kind else "")
                                   for v, k in zip(cols[c], cols["kind"])))) for c in _differs(cols)]


def comparison_note(summary: pd.DataFrame, short: bool = False) -> str:
    """One line that says what differs between the groups compared: ``the groups differ in arch (bn vs plain)
    only; every other setting is the same``, or where they differ in more than one setting a warning, e.g.
    ``warning: the groups differ in 2 settings: arch (bn vs residual) and epochs (2 ep vs 1 ep); a gap
    between two groups may come from either, not from one alone``. Empty for one group."""
    diffs = setting_differences(summary, short)
    if not diffs:
        return ""
    parts = [f"{SETTING_NAMES[c]} ({' vs '.join(v) if len(v) == 2 else ', '.join(v)})" for c, v in diffs]
    if len(parts) == 1:
        return f"the groups differ in {parts[0]} only; every other setting is the same"
    if math.prod(len(v) for _, v in diffs) == len(summary_groups(summary)):  # every combination: a grid
        return (f"a grid over {' × '.join(parts)}: every combination, every other setting the same; each setting is "
                f"compared below at each depth with the others fixed")
    listed = ", ".join(parts[:-1]) + " and " + parts[-1]
    return (f"warning: the groups differ in {len(parts)} settings: {listed}; a gap between two groups may come "
            f"from {'either' if len(parts) == 2 else 'any of them'}, not from one alone")


def _compact(values) -> str:
    """``[0, 1, 2, 5]`` -> ``0-2 5``: the seeds of a summary row."""
    vals, parts = sorted(int(v) for v in values), []
    for v in vals:
        if parts and v == parts[-1][1] + 1:
            parts[-1][1] = v
        else:
            parts.append([v, v])
    return " ".join(str(a) if a == b else f"{a}-{b}" for a, b in parts)


# ---------------------------------------------------------------------------------------------------------
# The summary: one row per (group, depth), from which the table and the plots are drawn


def summarize(results: pd.DataFrame, confidence: float = 0.95, plan=None) -> pd.DataFrame:
    """Per (group, depth): runs, mean and spread of accuracy over seeds with its interval, each depth against
    the best depth of its group, and the costs.

    Args:
        results: rows of one or several results.csv files (as :func:`load_results` or ``pd.read_csv`` reads them).
        confidence: of every accuracy interval, and family-wise of each group's verdicts together.
        plan: a :class:`cnn_depth.sequential.Plan` when the number of seeds depended on the results (a sweep
            run in rounds): accuracy intervals and comparisons then use its method's intervals (the
            group-sequential repeated confidence intervals, ``interval``: ``group-sequential t, n=5``; or the
            anytime confidence sequences, ``anytime t, n=5``), which stay valid at whatever round it
            stopped; ``stopped`` says per depth why the rule gave it no more seeds (in a grid plan, the rule
            over every group at once, each named by its values of ``plan.grid``), ``seeds_rule`` the rule in
            words (both empty without a plan).

    Returns:
        one row per group and depth (``SUMMARY_COLUMNS``), groups in the order they first appear, depths
        ascending; ``summary.attrs["context"]`` is what every group shares. Only ``ok`` runs are averaged
        (``not_ok`` counts the others). Intervals: ``interval`` names the method: a Student-t interval of the
        mean over seeds, or for one seed a Wilson interval over its ``valid_images``. ``diff_*``,
        ``paired_seeds`` and ``prob_improvement``: this depth − the group's highest mean, paired by seed, and
        P(this depth > it) (:func:`cnn_depth.stats.compare_to_best`); the verdicts of a group go through
        Holm's step-down, corrected for the top depth being picked from the same seeds: ``diff_confidence`` is
        the two-sided confidence of this depth's interval (its step's), ``p_adjusted`` its adjusted p-value
        (separated where it is at most 1 - confidence). ``verdict``: ``best`` only where that
        depth is above every other depth of its group (paired intervals below 0); else the top depth is the
        ``highest mean`` and the others ``tied with best``, ``too few seeds``, ``below best`` or ``above best
        on shared seeds``. ``best`` is True where ``verdict`` is ``best``. ``note``: one line per group
        (:func:`cnn_depth.stats.best_note`).
    """
    if results.empty:
        return pd.DataFrame(columns=SUMMARY_COLUMNS)
    df = drop_repeated_runs(_prepare(results))
    groups = list(dict.fromkeys(df["_group"]))
    labels, context = group_labels(groups)
    reasons = _stopped_grid(df, plan) if plan is not None and plan.grid else {}
    out = []
    for gid, label in enumerate(labels):
        g = df[df["_gid"] == gid]
        ok = g[(g["status"] == "ok") & g["accuracy"].notna()]
        runs = {int(d): dict(zip(o["seed"].astype(int), o["accuracy"].astype(float)))
                for d, o in ok.groupby("depth")}
        test = None
        if plan is not None:
            from . import sequential
            test = sequential.sequential_test(plan)
        verdicts = stats.compare_to_best(runs, confidence, test)
        note = stats.best_note(verdicts)
        stopped = (_stopped(g, plan) if not plan.grid else reasons.get(gid, {})) if plan is not None else {}
        claim = len(verdicts) > 1 and all(v.verdict in (stats.BEST, stats.BELOW) for v in verdicts.values())
        for depth, d in g.groupby("depth", sort=True):
            depth = int(depth)
            o = ok[ok["depth"] == depth]
            valid = o["valid_images"].dropna()
            if plan is not None:
                iv = sequential.accuracy_sequence(o["accuracy"], plan)
            else:
                iv = stats.accuracy_interval(o["accuracy"], int(valid.iloc[0]) if len(o) == 1 and len(valid)
                                             else None, confidence)
            v = verdicts.get(depth)
            loss = stats.mean_interval(pd.to_numeric(o["train_loss"], errors="coerce"), confidence)
            verdict = (VERDICT_NONE if v is None else VERDICT_ONLY if len(verdicts) == 1
                       else (VERDICT_BEST if claim else VERDICT_TOP) if v.verdict == stats.BEST else v.verdict)
            row = dict(zip(GROUP, (d[c].iloc[0] for c in GROUP)), group=label, depth=depth, runs=len(o),
                       not_ok=len(d) - len(o), seeds=_compact(o["seed"]), accuracy_mean=iv.mean,
                       accuracy_std=iv.std, accuracy_low=iv.low, accuracy_high=iv.high,
                       interval=iv.method if len(o) else "", confidence=confidence,
                       diff_to_best=v.diff_mean if v else math.nan, diff_low=v.diff_low if v else math.nan,
                       diff_high=v.diff_high if v else math.nan, diff_confidence=v.level if v else math.nan,
                       p_adjusted=v.p_adjusted if v else math.nan, paired_seeds=v.n_pairs if v else 0,
                       prob_improvement=v.prob_improvement if v else math.nan, verdict=verdict,
                       best=verdict == VERDICT_BEST, note=note, stopped=stopped.get(depth, ""),
                       seeds_rule=sequential.describe(plan) if plan is not None else "", train_loss_mean=loss.mean,
                       train_loss_low=loss.low, train_loss_high=loss.high,
                       params=_first(d["params"]), macs=_first(d["macs"]), classes=_first(d["classes"]),
                       valid_images=_first(o["valid_images"]),
                       peak_memory_mb=o["peak_memory_mb"].max() if len(o) else math.nan,
                       train_seconds_mean=o["train_seconds"].mean() if len(o) else math.nan,
                       images_per_second_mean=o["images_per_second"].mean() if len(o) else math.nan)
            out.append(row)
    summary = pd.DataFrame(out, columns=SUMMARY_COLUMNS)
    for c in ("params", "macs", "classes", "valid_images"):
        summary[c] = summary[c].astype("Int64")
    summary.attrs["context"] = context
    # as records: attrs are compared when frames are concatenated, and a DataFrame cannot be
    summary.attrs["factors"] = compare_factors(df, confidence, test).to_dict("records")
    return summary


def _stopped_grid(df: pd.DataFrame, plan) -> dict:
    """``{group id: {depth: why}}`` for a ``--seeds auto`` grid: the rule run on every group's rows at once,
    each group named by its values of the settings the plan's grid varies (as the sweep named its cells,
    ``residual,lr=0.001``), its depths compared with its own top."""
    from .config import combination_name, key_column

    names = {}
    for gid, g in df.groupby("_gid", sort=False):
        first = g.iloc[0]
        names[gid] = combination_name({n: _canon(key_column(n), first[key_column(n)])
                                       for n in ["arch", *[v for v in plan.grid if v != "arch"]]})
    res: dict = {}
    for gid, g in df.groupby("_gid", sort=False):
        for d, o in g.groupby("depth"):
            cell = res.setdefault((names[gid], int(d)), {})
            cell.update({int(s): float(a) if st == "ok" and pd.notna(a) else math.nan
                         for s, a, st in zip(o["seed"], o["accuracy"], o["status"])})
    if plan.pairs is not None and not all(c in res for p in plan.pairs for c in p):
        return {}  # the named pair is not among these rows
    why = _reasons(res, plan, lambda c: c[0])
    return {gid: {int(d): why[(names[gid], int(d))] for d in g["depth"]} for gid, g in df.groupby("_gid", sort=False)}


def _reasons(res: dict, plan, group=None) -> dict:
    """Per cell of the rule, why it gets no more seeds, or which seed it would run next."""
    from . import sequential

    r = sequential.next_round(res, plan, group, sequential.cell_name)
    first = {"has its first seeds": f"waits for the other cells' first {plan.min_seeds} seeds" if plan.grid else
             f"waits for the other depths' first {plan.min_seeds} seeds",
             "in no comparison": "not in the compared pair: its first seeds only" if plan.pairs else
             "no finished run to compare"}
    return {c: f"not resolved: seed {r.next_seeds[c]} next (rerun the sweep to continue)" if c in r.next_seeds
            else first.get(r.stopped[c], r.stopped[c]) for c in res}


def _stopped(g: pd.DataFrame, plan) -> dict:
    """Per depth of one group, why ``--seeds auto``'s rule (:func:`cnn_depth.sequential.next_round` on the
    group's rows: a run not ``ok`` counts as run, with no accuracy) gives it no more seeds, or which seed it
    would run next (a sweep interrupted, or these rows not from a finished ``--seeds auto`` sweep)."""
    res = {int(d): {int(s): float(a) if st == "ok" and pd.notna(a) else math.nan
                    for s, a, st in zip(o["seed"], o["accuracy"], o["status"])} for d, o in g.groupby("depth")}
    if plan.pairs is not None and not all(c in res for p in plan.pairs for c in p):
        return {}  # the named pair is not in this group: the rule says nothing about it
    return _reasons(res, plan)


def factors_of(summary: pd.DataFrame) -> pd.DataFrame:
    """The factor comparison :func:`summarize` made with ``summary`` (:func:`compare_factors`)."""
    return pd.DataFrame(summary.attrs.get("factors") or [], columns=FACTOR_COLUMNS)


FACTOR_COLUMNS = ["setting", "depth", "others", "value", "runs", "seeds", "accuracy_mean", "diff_to_best", "diff_low",
                  "diff_high", "diff_confidence", "p_adjusted", "paired_seeds", "prob_improvement", "verdict"]


def compare_factors(df: pd.DataFrame, confidence: float = 0.95, test=None) -> pd.DataFrame:
    """A grid's other comparison: at each depth, the values of each setting that differs between the groups
    (arch: bn vs residual) against the one with the highest mean, paired by seed, among groups that are the
    same in every other setting (``others``: those settings, as the labels show them). The same machinery as
    the depths of a group (:func:`cnn_depth.stats.compare_to_best`: Holm's step-down over one depth's values,
    ``confidence`` family-wise); a depth where fewer than two values have an ok run is left out.

    ``df``: rows as :func:`summarize` prepares them (with ``_group``). One row per (setting, depth, others,
    value): ``FACTOR_COLUMNS``; empty without two groups that differ in exactly one setting."""
    groups = list(dict.fromkeys(df["_group"]))
    if len(groups) < 2:
        return pd.DataFrame(columns=FACTOR_COLUMNS)
    cols = {c: [g[i] for g in groups] for i, c in enumerate(GROUP)}
    differs = _differs(cols)
    ok = df[(df["status"] == "ok") & df["accuracy"].notna()]
    out = []
    for c in differs:
        i = GROUP.index(c)
        rest = [k for k, col in enumerate(GROUP) if col != c]
        shown_rest = [k for k in rest if GROUP[k] in differs]
        for depth in sorted(ok["depth"].unique()):
            at = ok[ok["depth"] == depth]
            slices = {}
            for g, o in at.groupby("_group", sort=False):
                slices.setdefault(tuple(g[k] for k in rest), {})[g[i]] = o
            for key, by_value in slices.items():
                if len(by_value) < 2:
                    continue
                kind = key[rest.index(GROUP.index("kind"))] if c != "kind" else ""
                runs = {_shown(c, v, kind): dict(zip(o["seed"].astype(int), o["accuracy"].astype(float)))
                        for v, o in by_value.items()}
                verdicts = stats.compare_to_best(runs, confidence, test)
                claim = all(v.verdict in (stats.BEST, stats.BELOW) for v in verdicts.values())
                others = " · ".join(_shown(GROUP[k], key[rest.index(k)], kind) for k in shown_rest)
                for value, v in verdicts.items():
                    top = v.verdict == stats.BEST
                    out.append(dict(setting=c, depth=int(depth), others=others, value=value, runs=v.runs,
                                    seeds=_compact(runs[value]), accuracy_mean=v.mean,
                                    diff_to_best=math.nan if top else v.diff_mean,
                                    diff_low=math.nan if top else v.diff_low,
                                    diff_high=math.nan if top else v.diff_high,
                                    diff_confidence=math.nan if top else v.level,
                                    p_adjusted=math.nan if top else v.p_adjusted,
                                    paired_seeds=v.n_pairs, prob_improvement=math.nan if top else v.prob_improvement,
                                    verdict=(VERDICT_BEST if claim else VERDICT_TOP) if top else v.verdict))
    return pd.DataFrame(out, columns=FACTOR_COLUMNS)


def format_factors(factors: pd.DataFrame) -> str:
    """The factor table as text: per setting, each depth's values against the best of them (one block per
    setting); empty when there is none."""
    if factors is None or factors.empty:
        return ""
    lines = []
    for c, f in factors.groupby("setting", sort=False):
        width = max(5, *(len(v) for v in f["value"]))
        wo = max(6, *(len(o) for o in f["others"]))
        lines.append(f"{SETTING_NAMES[c]} at each depth, the others fixed (paired by seed, Holm over each depth's "
                     f"{SETTING_NAMES[c]} values):")
        lines.append(f"{'depth':>5}  {'others':<{wo}}  {'value':<{width}} {'runs':>4}  {'accuracy':<8}  {'vs best':>7} "
                     f"{'interval (Holm)':<22} {'P(>best)':>8}  verdict")
        for r in f.itertuples():
            top = pd.isna(r.diff_to_best)
            lines.append(f"{r.depth:>5}  {r.others:<{wo}}  {r.value:<{width}} {r.runs:>4}  {_num(r.accuracy_mean, '.4f'):<8}"
                         f"  {'' if top else _num(r.diff_to_best, '+.4f'):>7} "
                         f"{'' if top else _interval(r.diff_low, r.diff_high, '+.4f'):<22} "
                         f"{'' if top else _num(r.prob_improvement, '.2f'):>8}  {r.verdict}")
    return "\n".join(lines)


def _first(s: pd.Series):
    s = s.dropna()
    return s.iloc[0] if len(s) else pd.NA


# ---------------------------------------------------------------------------------------------------------
# The printed table


def _num(v, fmt: str, empty: str = "-") -> str:
    return empty if v is None or v is pd.NA or (isinstance(v, float) and math.isnan(v)) else format(v, fmt)


def _si(v) -> str:
    """1622336 -> ``1.62M``: MACs at a glance (summary.csv holds the exact count)."""
    if v is None or v is pd.NA or (isinstance(v, float) and math.isnan(v)):
        return "-"
    v = float(v)
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(v) >= scale:
            return f"{v / scale:.3g}{unit}"
    return f"{v:.0f}"


def _interval(low, high, fmt: str) -> str:
    return f"[{format(low, fmt)}, {format(high, fmt)}]" if pd.notna(low) else "-"


def _cells(r) -> dict:
    """The formatted cells of one summary row that the text and Markdown tables share: accuracy and its
    interval; the difference to the best depth, its paired interval and P(> best), blank on the top depth;
    params."""
    top = r.verdict in (VERDICT_BEST, VERDICT_TOP, VERDICT_ONLY)
    return dict(acc=_num(r.accuracy_mean, ".4f"), iv=_interval(r.accuracy_low, r.accuracy_high, ".4f"),
                diff="" if top else _num(r.diff_to_best, "+.4f"),
                div="" if top else _interval(r.diff_low, r.diff_high, "+.4f"),
                p="" if top else _num(r.prob_improvement, ".2f"),
                params=f"{int(r.params):,}" if pd.notna(r.params) else "-")


def vs_best_words(g: pd.DataFrame) -> str:
    """How a group's "vs best" intervals were made, for the table's footnote: the test, the family-wise
    confidence, and the range of the per-comparison confidences of Holm's step-down."""
    pct = f"{float(g['confidence'].iloc[0]) * 100:g}%"
    levels = pd.to_numeric(g["diff_confidence"], errors="coerce").dropna()
    methods = g["interval"].astype(str)
    test = ("group-sequential t (repeated confidence interval)" if methods.str.startswith("group-sequential").any()
            else "anytime-valid t (confidence sequence)" if methods.str.startswith("anytime").any() else "t")
    each = (f", each at {levels.min() * 100:.4g}%" if levels.min() == levels.max() else
            f", each at {levels.min() * 100:.4g}-{levels.max() * 100:.4g}%") if len(levels) else ""
    return (f"{test} over the shared seeds, Holm step-down over the comparisons with the top depth: {pct} "
            f"family-wise, corrected for picking the top from the same seeds{each}")


def format_summary(summary: pd.DataFrame) -> str:
    """The summary as text: per group, a header line, one line per depth (mean accuracy and its interval,
    the paired difference to the best depth with its interval, P(> best), the verdict, the costs), and the
    group's note under it; for several groups, a last line says which settings differ between them
    (:func:`comparison_note`: a warning where more than one does). Every number is a column of ``summary``
    (summary.csv), rounded."""
    if summary.empty:
        return "no runs to summarise"
    pct = f"{float(summary['confidence'].iloc[0]) * 100:g}%"
    head = (f"{'depth':>5} {'runs':>4}  {'accuracy':<8} {pct + ' interval':<17}  {'vs best':>7} "
            f"{'interval (Holm)':<22} {'P(>best)':>8}  {'verdict':<26} {'params':>10} {'MACs':>7} "
            f"{'train_s':>8} {'peak_MiB':>8}")
    lines = []
    context = summary.attrs.get("context", "")
    for label, g in summary.groupby("group", sort=False):
        lines.append(f"{label}" + (f"   ({context})" if context else ""))
        lines.append(head)
        for r in g.itertuples():
            c = _cells(r)
            mark = " *" if r.best else ""
            extra = f"  ({r.not_ok} not ok)" if r.not_ok else ""
            lines.append(f"{r.depth:>5} {r.runs:>4}  {c['acc']:<8} {c['iv']:<17}  {c['diff']:>7} {c['div']:<22} "
                         f"{c['p']:>8}  {r.verdict + mark:<26} {c['params']:>10} {_si(r.macs):>7} "
                         f"{_num(r.train_seconds_mean, '.1f'):>8} {_num(r.peak_memory_mb, '.0f'):>8}{extra}")
        lines.append(f"  note: {g['note'].iloc[0]}")
        if g["runs"].any():
            lines.append(f"  intervals: accuracy: {interval_words(g[g['runs'] > 0])}; vs best: paired by seed (same "
                         f"seed, same data order), {vs_best_words(g)}")
        lines += _seeds_lines(g)
    compared = comparison_note(summary)
    factors = format_factors(factors_of(summary))  # before the line saying what differs, which ends the table
    method = method_line(summary)
    return "\n".join(lines + ([method] if method else []) + ([factors] if factors else []) +
                     ([compared] if compared else []))


def _seeds_lines(g: pd.DataFrame) -> list[str]:
    """Under a group of a ``--seeds auto`` sweep (its ``seeds_rule`` and ``stopped`` columns): the rule, how
    many seeds each depth got and why it stopped."""
    rule = _rule(g)
    if not rule:
        return []
    lines = [f"  {rule}; per depth, seeds run and why it stopped:"]
    for r in g.itertuples():
        n = int(r.runs) + int(r.not_ok)
        lines.append(f"    depth {r.depth}: {n} seed{'s' if n != 1 else ''}"
                     + (f" ({r.seeds})" if isinstance(r.seeds, str) and r.seeds else "")
                     + (f", {r.stopped}" if isinstance(r.stopped, str) and r.stopped else ""))
    return lines


def _rule(summary: pd.DataFrame) -> str:
    """The ``seeds_rule`` of a ``--seeds auto`` summary (empty for fixed seeds)."""
    rule = summary["seeds_rule"].fillna("").astype(str) if "seeds_rule" in summary.columns else pd.Series(dtype=str)
    return rule[rule != ""].iloc[0] if (rule != "").any() else ""


def method_line(summary: pd.DataFrame) -> str:
    """After a ``--seeds auto`` summary, once: the sequential method and what it assumes (empty otherwise)."""
    from .sequential import method_words

    rule = _rule(summary)
    return f"method: {method_words(rule)}" if rule else ""


def format_markdown(summary: pd.DataFrame) -> str:
    """The summary as a Markdown table (for a paper's notes or a study's page): per group and depth the
    runs, mean accuracy with its interval, the paired difference to the group's best depth with its interval,
    P(> best), the verdict, after ``--seeds auto`` why the rule stopped adding seeds (``stopped``), the final
    training loss (mean and t interval over seeds), params, MACs and mean training seconds. Every number is a
    column of ``summary`` (summary.csv), rounded; the groups' notes (and the seeds rule with its method)
    follow the table."""
    if summary.empty:
        return "no runs to summarise"
    pct = f"{float(summary['confidence'].iloc[0]) * 100:g}%"
    rule = _rule(summary)
    rows = [f"| group | depth | runs | accuracy | {pct} interval | vs best | interval (paired, Holm) | P(>best) "
            f"| verdict |{' stopped |' if rule else ''} train loss | {pct} interval | params | MACs | train s |",
            f"|---|--:|--:|--:|---|--:|---|--:|---|{'---|' if rule else ''}--:|---|--:|--:|--:|"]

    for r in summary.itertuples():
        c = _cells(r)
        stopped = [str(r.stopped) if isinstance(r.stopped, str) else ""] if rule else []
        rows.append(" | ".join([
            f"| {r.group}", str(r.depth), str(r.runs), c["acc"], c["iv"], c["diff"], c["div"], c["p"],
            r.verdict + (f" ({r.not_ok} not ok)" if r.not_ok else ""), *stopped, _num(r.train_loss_mean, ".3f"),
            _interval(r.train_loss_low, r.train_loss_high, ".3f"), c["params"], _si(r.macs),
            _num(r.train_seconds_mean, ".1f") + " |"]))
    notes = [f"- {label}: {g['note'].iloc[0]}" for label, g in summary.groupby("group", sort=False)]
    compared = [g for _, g in summary.groupby("group", sort=False) if g["diff_confidence"].notna().any()]
    if compared:
        notes.append(f"- vs best: paired by seed, {vs_best_words(pd.concat(compared))}.")
    if rule:
        notes += [f"- seeds: {rule}.", f"- {method_line(summary)}."]
    context = summary.attrs.get("context", "")
    return "\n".join(rows + [""] + ([f"All groups: {context}.", ""] if context else []) + notes)


# ---------------------------------------------------------------------------------------------------------
# Writing reports


def label_runs(results: pd.DataFrame) -> pd.DataFrame:
    """``results`` (checked) with a ``group`` column: each run's group label, as the summary writes it."""
    df = _prepare(results)
    labels = group_labels(list(dict.fromkeys(df["_group"])))[0]
    return df.assign(group=[labels[i] for i in df["_gid"]]).drop(columns=["_group", "_gid"])


def write_reports(out: PathLike) -> pd.DataFrame:
    """From ``<out>/results.csv``, ``history.csv`` and ``activations.csv``: ``summary.csv``,
    ``accuracy_vs_depth.png``, ``curves.png`` and ``activations.png``. Returns the summary."""
    out = Path(out)
    results = load_results(out / "results.csv")
    summary = summarize(results, plan=sweep_plan(out))
    summary.to_csv(out / "summary.csv", index=False)
    plot_accuracy_vs_depth(summary, out / "accuracy_vs_depth.png", title=f"accuracy vs depth ({out.name})")
    plot_curves(read_history(out / "history.csv"), label_runs(results) if len(results) else results,
                out / "curves.png")
    activations = _read_activations([out / "activations.csv"])
    if activations is not None:
        plot_activations(activations, out / "activations.png")
    _write_factors(summary, out)  # last: a figure the disk cannot hold leaves the files it left before
    return summary


def sweep_plan(folder: PathLike):
    """The :class:`cnn_depth.sequential.Plan` of the last ``--seeds auto`` run on a sweep folder (its
    sweep.json's invocations record it), or None when none ran there: once a folder's seeds depended on its
    results, its reports use the anytime-valid intervals, which hold for a fixed number of seeds too."""
    from .records import read_sweep_json
    from .sequential import plan_from_record

    plans = [inv["plan"] for inv in read_sweep_json(folder).get("invocations", []) if inv.get("plan")]
    return plan_from_record(plans[-1]) if plans else None


def _write_factors(summary: pd.DataFrame, out: Path) -> None:
    """``factors.csv`` beside summary.csv where the groups form one (:func:`compare_factors`); an old one
    that no longer applies is removed."""
    factors = factors_of(summary)
    path = out / "factors.csv"
    if factors.empty:
        path.unlink(missing_ok=True)
        return
    with writing(path, "the factor comparison"):
        factors.to_csv(path, index=False)


def _read_activations(paths: Sequence[Path]) -> Optional[pd.DataFrame]:
    """The rows of those activations.csv files that exist and are not empty (checked), or None."""
    frames = [read_activations(p) for p in paths if p.is_file() and p.stat().st_size]
    frames = [f for f in frames if not f.empty]
    return pd.concat(frames, ignore_index=True).drop_duplicates() if frames else None


def report(paths: Sequence[PathLike], out: Optional[PathLike] = None, confidence: float = 0.95) -> pd.DataFrame:
    """The summary of one or several sweeps side by side, with a comparison plot.

    Args:
        paths: results.csv files (or sweep folders holding one).
        out: where ``summary.csv`` and ``comparison.png`` go (default ``runs/report``).
        confidence: of every accuracy interval, and family-wise of each group's verdicts together.

    Returns:
        the summary (see :func:`summarize`) over every row of every file, grouped by every setting that
        decides a run's numbers and labelled by what differs between the groups; a run found twice (same
        settings, depth and seed) is counted once, with a warning.
    """
    if not paths:
        raise CnnDepthError("give at least one results.csv, e.g. cnn-depth report runs/<sweep>/results.csv")
    frames, seen = [], set()
    for p in paths:
        df = load_results(p)
        real = Path(df["file"].iloc[0] if len(df) else p).expanduser().resolve()
        if real in seen:
            continue
        seen.add(real)
        frames.append(df)
    results = pd.concat([f for f in frames if len(f)], ignore_index=True) if any(len(f) for f in frames) \
        else pd.DataFrame(columns=RESULT_COLUMNS)
    folders = [Path(p).expanduser() if Path(p).expanduser().is_dir() else Path(p).expanduser().parent for p in paths]
    plans = [p for p in map(sweep_plan, dict.fromkeys(folders)) if p is not None]  # --seeds auto sweeps among them
    summary = summarize(results, confidence, plan=plans[0] if plans else None)
    out = output_folder(Path("runs") / "report" if out is None else out)  # '' or a file in the way: one line
    with writing(out / "summary.csv", "the summary"):
        summary.to_csv(out / "summary.csv", index=False)
    plot_accuracy_vs_depth(summary, out / "comparison.png", title="accuracy vs depth, compared")
    activations = _read_activations(list(dict.fromkeys(f / "activations.csv" for f in folders)))
    if activations is not None:  # the sweeps' per-layer statistics side by side
        plot_activations(activations, out / "activations.png")
    _write_factors(summary, out)
    summary.attrs["out"] = str(out)
    return summary
