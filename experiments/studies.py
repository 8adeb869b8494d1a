"""The depth studies in ``experiments/<study>/``: rerun them, and keep each page's table in step with its data.

A study is a folder with a README.md (the page), one or more sweep configs (``*.toml``, each writing to
``experiments/<study>/results/<name>/``) and ``results/``. The page's table sits between two markers that
name the configs it summarises, in the order of its rows:

    <!-- begin summary: plain.toml bn.toml residual.toml -->
    ... the table, written by `update` ...
    <!-- end summary -->

The table is ``cnn_depth.reports.format_markdown`` of ``cnn_depth.reports.summarize`` over the configs'
results.csv files: the tool's own functions, so a page cannot say what its data does not (tests/test_studies.py
checks every page).

    python experiments/studies.py run degradation      # every sweep of the study, then update
    python experiments/studies.py update degradation   # results/summary.csv, figures and the page's table
    python experiments/studies.py check                # exit 1 when a page's table differs from its data
"""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import pandas as pd

from cnn_depth.config import SweepConfig
from cnn_depth.reports import format_markdown, load_results, report, summarize, sweep_plan

ROOT = Path(__file__).resolve().parents[1]
HERE = Path(__file__).resolve().parent
BLOCK = re.compile(r"<!-- begin (?P<kind>summary|paired): (?P<configs>[^>]*?) -->\n(?P<table>.*?)<!-- end (?P=kind) -->",
                   re.S)


def studies() -> list[str]:
    """The study folders: those holding a README.md and at least one ``*.toml``."""
    return sorted(p.name for p in HERE.iterdir() if (p / "README.md").is_file() and any(p.glob("*.toml")))


def page(study: str) -> Path:
    return HERE / study / "README.md"


def blocks(study: str) -> list[tuple[str, list[str], str]]:
    """The table blocks of a study's page: (kind, config file names, the table as written)."""
    return [(m["kind"], m["configs"].split(), m["table"]) for m in BLOCK.finditer(page(study).read_text())]


def config(study: str, name: str) -> SweepConfig:
    """A study's sweep config, as ``cnn-depth sweep --config`` reads it (its ``out`` relative to the repository
    root, where the page says to run it from)."""
    return SweepConfig.from_toml(HERE / study / name)


def results_csv(study: str, name: str) -> Path:
    return ROOT / config(study, name).out_dir / "results.csv"


def summary(study: str, names: list[str]) -> pd.DataFrame:
    """The summary of the configs' recorded results, rows in the configs' order."""
    frames = [load_results(results_csv(study, n)) for n in names]
    # a --seeds auto sweep's rows are judged by its rule (group-sequential intervals), as `cnn-depth report` does
    plans = [p for p in (sweep_plan(results_csv(study, n).parent) for n in names) if p is not None]
    return summarize(pd.concat(frames, ignore_index=True), plan=plans[0] if plans else None)


def paired(study: str, names: list[str]) -> str:
    """Config b against config a at each depth, paired by seed (``names`` = [a, b]): the mean of b − a with
    its 95% t interval over the shared seeds and P(b > a), by ``cnn_depth.stats.paired_difference``."""
    from cnn_depth.stats import paired_difference

    ra, rb = (load_results(results_csv(study, n)) for n in names)
    a, b = (Path(n).stem for n in names)
    rows = [f"| depth | {a} | {b} | {b} − {a} | 95% interval (paired) | shared seeds | P({b} > {a}) |",
            "|--:|--:|--:|--:|---|--:|--:|"]
    pairs = [(d, d) for d in sorted(set(ra["depth"]) & set(rb["depth"]))]
    if not pairs and ra["depth"].nunique() == rb["depth"].nunique() == 1:  # two presets: their own depths
        pairs = [(ra["depth"].iloc[0], rb["depth"].iloc[0])]
    for da, db in pairs:
        runs = [dict(zip(r.loc[(r["depth"] == d) & (r["status"] == "ok"), "seed"].astype(int),
                         r.loc[(r["depth"] == d) & (r["status"] == "ok"), "accuracy"].astype(float)))
                for r, d in ((ra, da), (rb, db))]
        depth = da if da == db else f"{da} vs {db}"
        d = paired_difference(runs[1], runs[0])
        iv = f"[{d.low:+.4f}, {d.high:+.4f}]" if pd.notna(d.low) else "-"
        mean = lambda r: f"{sum(r.values()) / len(r):.4f}" if r else "-"  # noqa: E731
        rows.append(f"| {depth} | {mean(runs[0])} | {mean(runs[1])} | {d.mean:+.4f} | {iv} | {d.n_pairs} "
                    f"| {d.prob_improvement:.2f} |")
    return "\n".join(rows) + "\n"


def table(study: str, names: list[str], kind: str = "summary") -> str:
    """What a block of ``kind`` over ``names`` holds: a summary (:func:`format_markdown`) or a paired table."""
    return paired(study, names) if kind == "paired" else format_markdown(summary(study, names)) + "\n"


def depth_figure(s: pd.DataFrame, path: Path, title: str) -> Path:
    """Two panels against depth, one line per group: the final training loss and the validation accuracy,
    each with its interval over seeds (what He et al.'s Fig. 6 shows as training and test error)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from cnn_depth.plots import group_colours

    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(11, 4.2), layout="constrained")
    groups = list(dict.fromkeys(s["group"]))
    for colour, label in zip(group_colours(len(groups)), groups):
        g = s[(s["group"] == label) & (s["runs"] > 0)].sort_values("depth")
        n = f"{g['runs'].min()}" if g["runs"].min() == g["runs"].max() else f"{g['runs'].min()}-{g['runs'].max()}"
        for ax, col in ((ax_loss, "train_loss"), (ax_acc, "accuracy")):
            y = g[f"{col}_mean"].to_numpy(float)
            err = [y - g[f"{col}_low"].to_numpy(float), g[f"{col}_high"].to_numpy(float) - y]
            ax.errorbar(g["depth"], y, yerr=err, marker="o", capsize=3, color=colour, label=f"{label} (n={n} seeds)")
    chance = s["classes"].dropna()
    if len(chance):
        ax_acc.axhline(1 / int(chance.iloc[0]), ls="--", color="0.5", lw=1, label=f"chance (1/{int(chance.iloc[0])})")
    ax_loss.set_ylabel("final training loss (smoothed, mean over seeds)")
    ax_acc.set_ylabel("validation accuracy (mean over seeds)")
    for ax in (ax_loss, ax_acc):
        ax.set_xlabel("depth (conv layers)")
        ax.set_xticks(sorted(set(s["depth"])))
        ax.grid(alpha=0.3)
    ax_acc.legend(fontsize=8)
    conf = float(s["confidence"].iloc[0]) * 100
    fig.suptitle(f"{title}\n{s.attrs.get('context', '')}; error bars: {conf:g}% t interval over seeds", fontsize=9)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def study_wide(study: str, names: list[str]) -> list[str]:
    """The configs the study-wide summary.csv and figures are made of: ``names`` in order, less any config
    that re-records runs an earlier one holds (same run ids: degradation's adaptive.toml repeats the three
    fixed sweeps' settings with more seeds); such a config has its own table on the page."""
    kept, seen = [], set()
    for n in names:
        ids = set(load_results(results_csv(study, n))["run_id"])
        if not ids & seen:
            kept.append(n)
            seen |= ids
    return kept


def update(study: str) -> None:
    """Rewrite the study's results/summary.csv and figures, and every summary block of its page."""
    text = page(study).read_text()
    names_all: list[str] = []
    for _, names, _ in blocks(study):
        names_all += [n for n in names if n not in names_all]
    if not names_all:
        raise SystemExit(f"{page(study)} has no '<!-- begin summary: x.toml ... -->' block")
    names_all = study_wide(study, names_all)
    out = HERE / study / "results"
    report([results_csv(study, n) for n in names_all], out=out)  # summary.csv and comparison.png
    s = summary(study, names_all)
    depth_figure(s, out / "depth.png", study)
    text = BLOCK.sub(lambda m: f"<!-- begin {m['kind']}: {m['configs']} -->\n"
                               f"{table(study, m['configs'].split(), m['kind'])}<!-- end {m['kind']} -->", text)
    page(study).write_text(text)


def run(study: str) -> None:
    """Every sweep of the study (resuming what is recorded), then :func:`update`."""
    from cnn_depth.sweep import run_sweep

    for toml in sorted((HERE / study).glob("*.toml")):
        print(f"== {study}/{toml.name}", flush=True)
        run_sweep(config(study, toml.name))
    update(study)


def check() -> list[str]:
    """The studies whose page's tables differ from what their data summarise to."""
    from cnn_depth.errors import CnnDepthError

    stale = []
    for study in studies():
        for kind, names, written in blocks(study):
            try:
                same = written == table(study, names, kind)
            except CnnDepthError:  # results not recorded yet
                same = False
            if not same and study not in stale:
                stale.append(study)
    return stale


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("command", choices=["run", "update", "check"])
    ap.add_argument("study", nargs="*", help=f"one or more of {', '.join(studies())} (default: all)")
    args = ap.parse_args(argv)
    unknown = [s for s in args.study if s not in studies()]
    if unknown:
        ap.error(f"no study {', '.join(unknown)}: choose from {', '.join(studies())}")
    import os
    os.chdir(ROOT)  # the configs' out folders are relative to the repository root
    if args.command == "check":
        stale = check()
        print("\n".join(f"{s}: the page's table differs from its data: run `python experiments/studies.py update {s}`"
                        for s in stale) or "every study page matches its data")
        return 1 if stale else 0
    for study in args.study or studies():
        run(study) if args.command == "run" else update(study)
    return 0


if __name__ == "__main__":
    sys.exit(main())
