"""The ``cnn-depth`` command line: a thin typer layer over the library functions notebooks call too.

Every command parses its options, calls one library function and prints. Errors a user can cause (a
:class:`CnnDepthError` from the library, or a usage error from typer) become one line on stderr and exit code
2, never a traceback: :class:`OneLineErrors` is the one place that does it. The sweep's options take their
defaults and help from :class:`~cnn_depth.config.SweepConfig`, and ``--config`` is merged with the flags given
by ``SweepConfig.from_toml``.

Start-up: this module imports neither torch nor fastai (seconds): ``--help``, the usage errors and the
options' defaults need only :mod:`cnn_depth.config`; each command imports what it needs when it runs.
``tests/test_cli_startup.py`` checks it.
"""
from __future__ import annotations

import inspect
import re
import signal
import sys
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Optional

import typer
from typer.core import TyperCommand, TyperGroup

from .config import config_field, config_keys, default, shown_default
from .errors import CnnDepthError


@contextmanager
def imports_held():
    """A Ctrl-C while a command imports torch and fastai is held until the imports end, then acts as usual
    (one line, exit 130): a KeyboardInterrupt raised inside torch's import can leave it half set up and the
    process aborting at exit (SIGABRT, exit -6, a C-level stack) instead."""
    old = signal.getsignal(signal.SIGINT)
    if threading.current_thread() is not threading.main_thread() or not callable(old):
        yield  # not ours to hold (SIG_IGN, SIG_DFL or a handler set outside Python)
        return
    held: list = []
    signal.signal(signal.SIGINT, lambda signum, frame: held.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, old)
    if held:
        old(signal.SIGINT, sys._getframe())


class FlagHelp:
    """``--help`` listed as the flag it is: typer's rich help shows a value type for every option, so it
    read ``--help <bool>``; a flag takes no value (the sweep's own flags have ``metavar=""`` too)."""

    def get_help_option(self, ctx):
        option = super().get_help_option(ctx)
        if option is not None:
            option.metavar = ""
        return option


class Command(FlagHelp, TyperCommand):
    """Every ``cnn-depth`` command. Its line in ``cnn-depth --help`` is its docstring's first paragraph as one
    paragraph (typer's rich help kept the docstring's line breaks there, mid-sentence)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.help and not self.short_help:
            self.short_help = " ".join(inspect.cleandoc(self.help).split("\n\n")[0].split())


class OneLineErrors(FlagHelp, TyperGroup):
    """Usage errors (``--depth x``, an unknown option) and :class:`CnnDepthError` as one line on stderr and
    exit code 2, instead of typer's boxed usage text or a traceback."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        global _said_interrupted, command_ended
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        _said_interrupted = command_ended = False
        try:
            rv = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
            command_ended = True
        except typer.TyperException as e:  # click's usage errors (typer vendors click; this is its public base)
            command_ended = True
            if type(e).__name__ == "NoArgsIsHelpError":  # `cnn-depth` alone: the help, already printed
                sys.exit(0)
            ctx = getattr(e, "ctx", None)
            hint = f" (see: {ctx.command_path} --help)" if ctx is not None and hasattr(e, "cmd") else ""
            echo_error(" ".join(e.format_message().split()) + hint)
            sys.exit(e.exit_code)
        except CnnDepthError as e:
            command_ended = True
            echo_error(str(e))
            sys.exit(getattr(e, "exit_code", 2))  # 2: bad input; 1 for errors that carry it (a full disk)
        except typer.Abort:
            command_ended = True
            echo_error("aborted")
            sys.exit(1)
        # typer turns a KeyboardInterrupt while parsing into exit code 130 (``invoke`` below says it for one
        # inside a command); say so unless a command did
        if rv == 130 and not _said_interrupted:
            echo_error("interrupted; nothing was changed", code=130)
        sys.exit(rv if isinstance(rv, int) else 0)

    def invoke(self, ctx):
        """A KeyboardInterrupt that a command leaves to us (say, while it imports torch): one line saying
        what that command may have kept, and exit code 130."""
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt:
            if not _said_interrupted:
                name = ctx.invoked_subcommand or ""
                echo_error(f"interrupted{INTERRUPTED.get(name, '; nothing was changed')}", code=130)
            raise typer.Exit(130) from None


# What a command interrupted outside its own handling has kept (the sweep says more when it can).
INTERRUPTED = {"sweep": "; the runs recorded before it are kept (rerun the same command to resume)",
               "report": "; its summary.csv and comparison.png may be missing (rerun the same command)",
               "explain": "; some of its images may be missing (rerun the same command)"}


app = typer.Typer(help="How does a CNN's depth change what it learns, and what does it cost?", cls=OneLineErrors,
                  add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False)
_said_interrupted = False
command_ended = False  # True once the command has returned or raised (read by cnn_depth.__main__)


def echo_error(message: str, code: int = 2) -> None:
    """Print ``error: message`` as one line on stderr (on a line of its own after a progress bar)."""
    global _said_interrupted
    if code == 130:
        _said_interrupted = True
        if sys.stdout.isatty():  # a progress bar may have left the cursor mid-line
            typer.echo("")
    typer.echo(f"error: {message}", err=True)


def fail(message: str, code: int = 2):
    """Print one line naming the fix and exit with ``code``."""
    echo_error(message, code)
    raise typer.Exit(code)


@app.command("models", cls=Command)
def models_cmd(depth: int = typer.Option(8, help="Depth of the family models counted (a preset has its own)."),
               n_in: int = typer.Option(3, help="Input channels (3 RGB, 1 grayscale; a series' or volume's channels)."),
               img_size: int = typer.Option(32, help="Image size in px (the presets' flatten size depends on it)."),
               n_out: int = typer.Option(10, help="Number of classes."),
               dims: Optional[int] = typer.Option(None, help="Only the models that take inputs of this dimension (1 "
                                                             "series, 2 images, 3 volumes), with params and MACs at "
                                                             "--size."),
               size: Optional[str] = typer.Option(None, help="Input size for params and MACs: a length (150), HxW "
                                                             "(32x32) or DxHxW (28x28x28); one number is every side "
                                                             "of --dims (default 2).")):
    """List the registered models, the input dimensions each takes and its parameters; with --dims or --size,
    the MACs per input too.

    Examples: cnn-depth models --depth 20; cnn-depth models --dims 1 --size 150 --depth 8;
    cnn-depth models --size 28x28x28 --n-in 1
    """
    with imports_held():
        from .models import AXES, DIM_NAMES, NDIMS, input_size, model_table

    sides = None
    if size is not None:
        if not re.fullmatch(r"[1-9]\d*(x[1-9]\d*){0,2}", size.strip()):
            fail(f"--size {size!r} is not a size; give a length (150), HxW (32x32) or DxHxW (28x28x28)")
        sides = [int(v) for v in size.strip().split("x")]
        if dims is None:
            dims = len(sides) if len(sides) > 1 else 2
        elif len(sides) not in (1, dims) and dims in NDIMS:
            fail(f"--size {size} has {len(sides)} sides; --dims {dims} takes one number or {dims} ({AXES[dims]})")
    if dims is None:  # the registry as an image model sees it: the dims each takes, params at --img-size
        rows = model_table(None, depth, n_in, n_out, img_size, macs=False)
        typer.echo(f"{'arch':<13} {'dims':<9} {'depth':>5} {'params':>10}  description")
        for r in rows:
            typer.echo(f"{r['arch']:<13} {r['dims']:<9} {r['depth']:>5} {r['params']:>10,}  {r['description']}"
                       + (" (any depth)" if r["family"] else ""))
        typer.echo(f"params of {n_in}×{img_size}×{img_size} images, {n_out} classes; series, volumes and MACs: "
                   f"cnn-depth models --dims 1 --size 150")
        return
    given = img_size if sides is None else sides[0] if len(sides) == 1 else sides
    rows = model_table(dims, depth, n_in, n_out, given)
    shape = "×".join(map(str, (n_in, *input_size(given, dims))))
    typer.echo(f"{dims}D inputs ({DIM_NAMES[dims]}) of {shape} (channels, {AXES[dims]}), {n_out} classes; "
               f"families at depth {depth}")
    typer.echo(f"{'arch':<13} {'depth':>5} {'params':>11} {'MACs':>15}  description")
    for r in rows:
        typer.echo(f"{r['arch']:<13} {r['depth']:>5} {r['params']:>11,} {r['macs']:>15,}  {r['description']}")
    others = [r["arch"] for r in model_table(None, depth, n_in, n_out, img_size, macs=False)
              if r["arch"] not in {x["arch"] for x in rows}]
    if others:
        typer.echo(f"2D only: {', '.join(others)}")


@app.command("datasets", cls=Command)
def datasets_cmd():
    """List the registered datasets: kind (image, series, volume), one input's shape (channels first), the
    train/valid sizes, classes, split folders (any folder or .tgz/.zip path works with --data too)."""
    with imports_held():
        from .data import dataset_spec, list_datasets  # the registry is in data.py, which imports fastai

    typer.echo(f"{'name':<17} {'kind':<6} {'input':<11} {'train/valid':>13} {'classes':>7}  {'splits':<17} description")
    for name in list_datasets():
        s = dataset_spec(name)
        sizes = "/".join(f"{n:,}" for n in s.sizes)
        typer.echo(f"{name:<17} {s.kind:<6} {s.shape:<11} {sizes:>13} {s.classes or '':>7}  "
                   f"{s.train_name + '/' + s.valid_name:<17} {s.description}")
    typer.echo("PATH: a folder or .tgz/.tar.gz/.zip laid out <root>/<train>/<class>/*, <root>/<valid>/<class>/* (images, "
               "or .npy/.npz arrays), a folder of a UCR problem's <Name>_TRAIN.ts and _TEST.ts, a MedMNIST-3D .npz")


@app.command("summary", cls=Command)
def summary_cmd(depth: Optional[int] = typer.Option(None, help="Number of conv layers (a preset's own when omitted)."),
                arch: str = typer.Option("bn", help=config_field("arch").metadata["help"]),  # the registry needs torch
                n_in: int = typer.Option(3, help="Input channels (3 RGB, 1 grayscale)."),
                img_size: int = typer.Option(32, help="Image size in px."),
                n_out: int = typer.Option(10, help="Number of classes.")):
    """Print the layer table of one model: output shapes and parameters.

    Example: cnn-depth summary --depth 7 --arch residual
    """
    with imports_held():
        from .models import count_params, depth_cnn, layer_table, list_models, model_spec

    if depth is None and model_spec(arch).depth is None:
        fail(f"--depth is required for the family archs ({', '.join(n for n in list_models() if model_spec(n).depth is None)})"
             f", e.g. --depth 4")
    model = depth_cnn(depth, n_in=n_in, n_out=n_out, arch=arch, img_size=img_size)
    typer.echo(f"{arch} depth={model.config['depth']} input=({n_in}, {img_size}, {img_size})")
    typer.echo(f"{'layer':<28} {'type':<18} {'output shape':<20} {'params':>9}")
    for r in layer_table(model, (n_in, img_size, img_size)):
        typer.echo(f"{r['layer']:<28} {r['type']:<18} {str(r['output_shape']):<20} {r['params']:>9,}")
    typer.echo(f"total params: {count_params(model):,}")


# ---------------------------------------------------------------------------------------------------------
# cnn-depth sweep


LIST_OPTIONS = ("--depths", "--seeds", "--track", "--compare")


def gather_list_values(args: list[str], names=LIST_OPTIONS) -> list[str]:
    """``--depths 2 3 4`` -> ``--depths 2,3,4``: the values after a list option, up to the next option.

    click gives an option one value (it has no public hook for an option with several), so the shell form is
    joined before parsing; it then works exactly as typed, next to ``--depths 2,3,4`` and ``--depths 2-8``. A
    negative number counts as a value (so ``--depths -1`` is reported as a bad depth, not an unknown option).
    """
    out = []
    for arg, name, values, _ in _options(args, lambda n: n in names,
                                         lambda a: not a.startswith("-") or re.fullmatch(r"-\d+", a)):
        if name is None:
            out.append(arg)
        else:
            out += [name, ",".join(values)] if values else [arg]
    return out


def _options(args: list[str], picks, is_value):
    """``args`` as (arg, name, values, eq) per item: each option ``picks(name)`` chooses with the values that
    follow it (``is_value``; ``--name=v`` counts its ``v`` first), everything else as (arg, None, None, False);
    what follows ``--`` passes as it is."""
    i = 0
    while i < len(args):
        arg = args[i]
        i += 1
        if arg == "--":
            yield from ((a, None, None, False) for a in args[i - 1:])
            return
        name, eq, first = arg.partition("=")
        if not picks(name):
            yield arg, None, None, False
            continue
        values = [first] if eq else []
        while i < len(args) and is_value(args[i]):
            values.append(args[i])
            i += 1
        yield arg, name, values, bool(eq)


class ListOptionsCommand(Command):
    """A command whose ``--depths``/``--seeds`` take several space-separated values."""

    def parse_args(self, ctx, args):
        return super().parse_args(ctx, gather_list_values(list(args)))


def grid_flags() -> dict[str, str]:
    """``{flag: field}`` of the sweep options that take several values, a grid: every setting that decides a
    run's numbers (``config.settings``), ``--data`` for ``dataset`` too."""
    from .config import settings

    flags = {f"--{name.replace('_', '-')}": name for name in settings()}
    return dict(flags, **{"--data": "dataset"})


def gather_grid_values(args: list[str], command) -> list[str]:
    """The settings given several values (``--arch bn residual``, ``--lr 1e-3 3e-3``, ``--augment both`` or
    ``--augment on off``) as one hidden ``--grid NAME=V1<sep>V2`` each (``config.GRID_SEP``); one value stays
    as it was, so it parses (and fails) as before. Any other option followed by several values is one line
    naming the options that take them."""
    from .config import GRID_SEP

    grid = grid_flags()
    takes_value = {o: not p.is_flag for p in command.params for o in [*p.opts, *p.secondary_opts]
                   if hasattr(p, "is_flag")}  # the options (arguments have no is_flag)
    out = []
    for arg, name, values, eq in _options(args, lambda n: n.startswith("--") and n not in LIST_OPTIONS,
                                          lambda a: not a.startswith("-")):
        if name is None:
            out.append(arg)
            continue
        field = grid.get(name)
        switch = field is not None and not takes_value.get(name, True)
        if field is not None and (len(values) > 1 or (switch and values)):
            if not all(v.strip() for v in values):
                raise CnnDepthError(f"{name} has an empty value; give each value, e.g. {name} "
                                    f"{'on off' if switch else 'A B'}")
            out += ["--grid", f"{field}={GRID_SEP.join(values)}"]
            continue
        if len(values) > (1 if takes_value.get(name, True) else 0) and name in takes_value:
            several = sorted(f for f in grid if f != "--data") + ["--data"]
            what = "takes no value" if not takes_value[name] else "takes one value"
            raise CnnDepthError(f"{name} {what}, got {len(values)}: {' '.join(values)}; only the settings that "
                                f"decide a run's numbers take several (a grid): {', '.join(several)}")
        out += [arg] + values[1 if eq else 0:]
    return out


class SweepCommand(ListOptionsCommand):
    """``cnn-depth sweep``: lists for ``--depths``/``--seeds``/``--track`` and for every setting (a grid)."""

    def parse_args(self, ctx, args):
        return super().parse_args(ctx, gather_grid_values(list(args), self))


def option(name: str, *decls: str, typed: bool = True, **kw):
    """A ``sweep`` option for the SweepConfig field ``name``: its help and default come from the config.

    ``typed=False`` for the options parsed from a string at this boundary (depths, seeds, lr): their default
    is shown from the config but given as None.
    """
    value = default(name)
    flag = isinstance(value, bool)
    if flag and not decls:
        decls = (f"--{name.replace('_', '-')}/--no-{name.replace('_', '-')}",)
    return typer.Option(value if typed else None, *decls, help=config_field(name).metadata["help"],
                        show_default=shown_default(name), metavar="" if flag else None, **kw)


@app.command("sweep", cls=SweepCommand)
def sweep_cmd(
    ctx: typer.Context,
    depths: Optional[str] = option("depths", typed=False),
    seeds: Optional[str] = option("seeds", typed=False),
    min_seeds: int = option("min_seeds"),
    max_seeds: int = option("max_seeds"),
    margin: Optional[float] = option("margin"),
    compare: Optional[str] = option("compare", typed=False),
    epochs: int = option("epochs"),
    lr: Optional[str] = option("lr", typed=False),
    bs: int = option("bs"),
    arch: str = option("arch"),
    pretrained: bool = option("pretrained"),
    transfer: Optional[str] = option("transfer"),
    dataset: str = option("dataset"),
    data: Optional[str] = typer.Option(None, help="A folder or .tgz/.tar.gz/.zip laid out <train>/<class>/*, "
                                                  "<valid>/<class>/* of images or .npy/.npz arrays, a UCR problem's "
                                                  "folder, a MedMNIST-3D .npz (instead of --dataset)."),
    max_per_class: Optional[int] = option("max_per_class"),
    pipeline: str = option("pipeline"),
    augment: bool = option("augment"),
    compile: bool = option("compile"),
    dims: Optional[int] = option("dims"),
    pad: bool = option("pad"),
    fill: Optional[float] = option("fill"),
    split_seed: int = option("split_seed"),
    out: Optional[str] = option("out"),
    device: str = option("device"),
    quiet: bool = option("quiet"),
    save_models: bool = option("save_models"),
    workers: Optional[str] = option("workers", typed=False),
    threads: Optional[str] = option("threads", typed=False),
    runs_per_gpu: Optional[str] = option("runs_per_gpu", typed=False),
    ray: Optional[str] = option("ray"),
    track: Optional[list[str]] = typer.Option(None, help=config_field("track").metadata["help"],
                                              show_default=shown_default("track"), metavar="NAME"),
    yes: bool = option("yes"),
    grid: Optional[list[str]] = typer.Option(None, hidden=True),  # --arch bn residual, ...: gather_grid_values
    config: Optional[Path] = typer.Option(None, help=f"A TOML file of these options, keys as in SweepConfig: "
                                                     f"{', '.join(config_keys())}; flags given override it."),
):
    """Train one model per depth and seed; write results.csv, history.csv, summary.csv, sweep.json, plots.

    Examples:
      cnn-depth sweep --depths 2 3 4
      cnn-depth sweep --depths 1-8 --seeds 0 1 2 --epochs 10 --arch residual --out runs/res
      cnn-depth sweep --data ~/mnist_png --depths 2,4,8 --lr find --device cuda
      cnn-depth sweep --depths 2 4 8 --seeds auto --max-seeds 8   # seeds until the answer is clear
      cnn-depth sweep --arch bn residual --lr 1e-3 3e-3 --depths 2 4 8 --seeds 0-2   # a grid
      cnn-depth sweep --dataset GunPoint --depths 1 2 4 8 --bs 16 --epochs 100   # series: the 1D family

    Exit code: 0 when every run is ok, 1 when one diverged or failed (every run failed: one line, no table),
    2 for bad options, 130 when interrupted (rerun the same command to resume).
    """
    from .config import SweepConfig
    from .errors import SweepFailed

    with imports_held():
        from .reports import format_summary
        from .sweep import SweepInterrupted, run_sweep

    given = {name: value for name, value in ctx.params.items()
             if ctx.get_parameter_source(name).name not in ("DEFAULT", "DEFAULT_MAP")}
    for entry in given.pop("grid", None) or []:  # several values of a setting (gather_grid_values)
        name, _, values = entry.partition("=")
        given[name if name != "dataset" or "dataset" not in given else "data"] = values
    if "dataset" in given and "data" in given:
        fail("give --dataset NAME or --data PATH, not both")
    if "data" in given:
        given["dataset"] = given.pop("data")
    given.pop("config", None)
    try:
        cfg = SweepConfig.from_toml(config, **given)
        results = run_sweep(cfg, log=typer.echo)
    except KeyboardInterrupt as e:  # run_sweep's SweepInterrupted says what was kept; before it, nothing was
        fail(str(e) if isinstance(e, SweepInterrupted) else "interrupted before the sweep started; nothing was "
             "written", code=130)
    except SweepFailed as e:  # every run failed: no summary to show; the rows and reports are written
        fail(str(e), code=1)
    typer.echo(format_summary(results.attrs["summary"]))
    bad = results[results["status"] != "ok"]
    typer.echo(f"reports: {results.attrs['out']}/ (results.csv, history.csv, summary.csv, sweep.json, "
               f"accuracy_vs_depth.png, curves.png, activations.png)")
    if len(bad):
        kinds = ", ".join(f"{k}: {v}" for k, v in bad["status"].value_counts().items())
        fail(f"{len(bad)} of {len(results)} runs did not finish ok ({kinds}); see the error column of "
             f"results.csv; rerun the same command to retry them", code=1)


@app.command("report", cls=Command)
def report_cmd(results: list[Path] = typer.Argument(..., help="results.csv files (or sweep folders)."),
               out: Optional[str] = typer.Option(None, help="Folder for summary.csv and comparison.png "
                                                 "(default runs/report).")):
    """Summarise one or several sweeps side by side: per group of settings (labelled by what differs) and
    depth, mean accuracy with its 95% interval, each depth against the best, the costs; summary.csv and
    comparison.png.

    Example: cnn-depth report runs/a/results.csv runs/b/results.csv --out runs/compare
    """
    import warnings

    with imports_held():
        from .records import RowWarning
        from .reports import format_summary, report

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", RowWarning)
        summary = report(results, out)
    for w in caught:  # rows left out or counted once: one line each, not Python's warning format
        if issubclass(w.category, RowWarning):
            typer.echo(f"warning: {w.message}", err=True)
        else:
            warnings.showwarning(w.message, w.category, w.filename, w.lineno)
    typer.echo(format_summary(summary))
    typer.echo(f"reports: {summary.attrs['out']}/ (summary.csv, comparison.png)")


@app.command("explain", cls=ListOptionsCommand)
def explain_cmd(run_dir: Path = typer.Argument(..., help="Folder a sweep wrote with --save-models (it holds models/*.pt)."),
                depth: Optional[int] = typer.Option(None, help="Depth of the model to explain (may be left out when "
                                                               "the run holds one depth)."),
                depths: Optional[str] = typer.Option(None, help="Compare depths in one figure, a row each: 2 4 8, "
                                                                "2-8 or all (every saved depth)."),
                seed: Optional[int] = typer.Option(None, help="Seed of the model (default: the lowest saved)."),
                arch: Optional[str] = typer.Option(None, help="Arch of the model (may be left out when the run holds "
                                                              "one arch)."),
                image: Optional[Path] = typer.Option(None, help="An image file to explain: loaded like the dataset, "
                                                                "resized to the model's size."),
                index: Optional[int] = typer.Option(None, help="Explain the K-th validation image of the run's "
                                                               "dataset instead (default 0)."),
                target: Optional[str] = typer.Option(None, help="Class name or index for Grad-CAM (default: the "
                                                                "predicted class)."),
                out: Optional[str] = typer.Option(None, help="Folder for the PNGs (default RUN_DIR/explain/{run_id}/).")):
    """Show what one saved model learned: input.png (top-3 predictions), feature_maps.png, gradcam.png; or,
    with --depths, one depths.png with a row per depth (top-3, feature maps of each stage, Grad-CAM).

    Examples:
      cnn-depth explain runs/sweep --depth 8 --index 3 --target cat
      cnn-depth explain runs/sweep --depths 2 4 8 --index 3
    """
    with imports_held():
        from .explain import explain_depths, explain_run

    if depths is not None:
        from .config import parse_int_list

        if depth is not None:
            fail("give --depth N (one model) or --depths 2 4 8 (a figure comparing them), not both")
        chosen = None if depths.strip().lower() == "all" else parse_int_list(depths, "depths")
        typer.echo(str(explain_depths(run_dir, chosen, seed=seed, image=image, index=index, target=target, out=out,
                                      arch=arch, log=lambda s: typer.echo(s, err=True))))
        return
    paths = explain_run(run_dir, depth, seed=seed, image=image, index=index, target=target, out=out, arch=arch,
                        log=lambda s: typer.echo(s, err=True))
    for p in paths:
        typer.echo(str(p))
