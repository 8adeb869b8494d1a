"""The ``cnn-depth`` command line: a thin typer layer over the library functions notebooks call too.

Every command parses its options, calls one library function and prints. A :class:`CnnDepthError` (bad
input a user can fix) becomes one line on stderr and exit code 2, never a traceback.
"""
from __future__ import annotations

import functools
import re
import sys
import warnings
from pathlib import Path
from typing import Optional

import typer
from typer.core import TyperCommand, TyperGroup

from .errors import CnnDepthError

# The click exception classes typer parses with (typer 0.29 vendors its own click as typer._click, a private
# module): reached through the public typer.BadParameter, whose bases they are.
_CLICK = {c.__name__: c for c in typer.BadParameter.__mro__}
UsageError, ClickException = _CLICK["UsageError"], _CLICK["ClickException"]


class OneLineErrors(TyperGroup):
    """Usage errors (``--depth x``, an unknown option) as one line and exit code 2, like a CnnDepthError,
    instead of typer's boxed usage text."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        try:
            rv = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except ClickException as e:
            if type(e).__name__ == "NoArgsIsHelpError":  # `cnn-depth` alone: the help (rich already printed it)
                if e.format_message().strip():
                    e.show()
                sys.exit(e.exit_code)
            message = " ".join(e.format_message().split())
            ctx = getattr(e, "ctx", None)
            hint = f" (see: {ctx.command_path} --help)" if isinstance(e, UsageError) and ctx else ""
            typer.echo(f"error: {message}{hint}", err=True)
            sys.exit(e.exit_code)
        except typer.Abort:
            typer.echo("aborted", err=True)
            sys.exit(1)
        # Without standalone mode click returns typer.Exit's code instead of exiting with it.
        sys.exit(rv if isinstance(rv, int) else 0)


app = typer.Typer(help="How does a CNN's depth change what it learns, and what does it cost?", cls=OneLineErrors,
                  add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False)


def fail(message: str, code: int = 2):
    """Print one line naming the fix and exit."""
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def command(*args, **kw):
    """``app.command`` that turns a CnnDepthError into one line and exit code 2."""
    def deco(f):
        @functools.wraps(f)
        def wrapper(*a, **k):
            try:
                return f(*a, **k)
            except CnnDepthError as e:
                fail(str(e))
        return app.command(*args, **kw)(wrapper)
    return deco


def _model_help() -> str:
    from .models import list_models
    return ", ".join(list_models())


@command("models")
def models_cmd(depth: int = typer.Option(8, help="Depth at which to count the family models' parameters."),
               n_in: int = typer.Option(3, help="Input channels (3 RGB, 1 grayscale)."),
               img_size: int = typer.Option(32, help="Image size in px (the presets' flatten size depends on it)."),
               n_out: int = typer.Option(10, help="Number of classes.")):
    """List the registered models with their parameter counts.

    Example: cnn-depth models --depth 20
    """
    from .models import check_depth, count_params, depth_cnn, list_models, model_spec

    check_depth(depth)
    typer.echo(f"{'arch':<13} {'depth':>5} {'params':>10}  description")
    for name in list_models():
        spec = model_spec(name)
        d = spec.depth or depth
        n = count_params(depth_cnn(d, n_in=n_in, n_out=n_out, arch=name, img_size=img_size))
        typer.echo(f"{name:<13} {d:>5} {n:>10,}  {spec.description}" + ("" if spec.depth else " (any depth)"))


@command("datasets")
def datasets_cmd():
    """List the registered datasets (any folder or .tgz/.zip path works with --data too)."""
    from .data import dataset_spec, list_datasets

    for name in list_datasets():
        s = dataset_spec(name)
        typer.echo(f"{name:<15} {s.train_name}/{s.valid_name:<9} {s.description}")
    typer.echo("PATH            a folder or .tgz/.tar.gz/.zip laid out <root>/<train>/<class>/*, <root>/<valid>/<class>/*")


@command("summary")
def summary_cmd(depth: Optional[int] = typer.Option(None, help="Number of conv layers (a preset's own when omitted)."),
                arch: str = typer.Option("bn", help=f"Model: {_model_help()}."),
                n_in: int = typer.Option(3, help="Input channels (3 RGB, 1 grayscale)."),
                img_size: int = typer.Option(32, help="Image size in px."),
                n_out: int = typer.Option(10, help="Number of classes.")):
    """Print the layer table of one model: output shapes and parameters.

    Example: cnn-depth summary --depth 7 --arch residual
    """
    from .models import count_params, depth_cnn, layer_table

    if depth is None and arch in ("plain", "bn", "residual"):
        fail("--depth is required for the family archs (plain, bn, residual), e.g. --depth 4")
    model = depth_cnn(depth, n_in=n_in, n_out=n_out, arch=arch, img_size=img_size)
    typer.echo(f"{arch} depth={model.config['depth']} input=({n_in}, {img_size}, {img_size})")
    typer.echo(f"{'layer':<28} {'type':<18} {'output shape':<20} {'params':>9}")
    for r in layer_table(model, (n_in, img_size, img_size)):
        typer.echo(f"{r['layer']:<28} {r['type']:<18} {str(r['output_shape']):<20} {r['params']:>9,}")
    typer.echo(f"total params: {count_params(model):,}")


LIST_OPTIONS = ("--depths", "--seeds")


def gather_list_values(args: list[str], names=LIST_OPTIONS) -> list[str]:
    """``--depths 2 3 4`` -> ``--depths 2,3,4``: the values after a list option, up to the next option.

    click gives an option one value; joining them first lets the shell form work exactly as typed, next to
    ``--depths 2,3,4`` and ``--depths 2-8``. A negative number counts as a value (so ``--depths -1`` is
    reported as a bad depth, not as an unknown option).
    """
    out, i = [], 0
    while i < len(args):
        arg = args[i]
        i += 1
        if arg == "--":
            out += args[i - 1:]
            break
        name, eq, first = arg.partition("=")
        if name not in names:
            out.append(arg)
            continue
        values = [first] if eq else []
        while i < len(args) and (not args[i].startswith("-") or re.fullmatch(r"-\d+", args[i])):
            values.append(args[i])
            i += 1
        out += [name, ",".join(values)] if values else [arg]
    return out


class ListOptionsCommand(TyperCommand):
    """A command whose ``--depths``/``--seeds`` take several space-separated values."""

    def parse_args(self, ctx, args):
        return super().parse_args(ctx, gather_list_values(list(args)))


@command("sweep", cls=ListOptionsCommand)
def sweep_cmd(
    depths: Optional[str] = typer.Option(None, "--depths", help="Depths to train: 2 3 4, 2,3,4 or 2-8 "
                                         "(default 2 3 4; a preset's own depth)."),
    seeds: Optional[str] = typer.Option(None, "--seeds", help="Seeds, one run each per depth (default 0): 0 1 2 or 0-2."),
    epochs: Optional[int] = typer.Option(None, help="fit_one_cycle epochs per run (default 5)."),
    lr: Optional[str] = typer.Option(None, help="Peak learning rate (default 3e-3), or 'find': lr_find's valley "
                                     "per depth."),
    bs: Optional[int] = typer.Option(None, help="Batch size (default 64)."),
    arch: Optional[str] = typer.Option(None, help=f"Model (default bn): {_model_help()}."),
    dataset: Optional[str] = typer.Option(None, help="A registered dataset (default cifar10-sample); see "
                                          "cnn-depth datasets."),
    data: Optional[str] = typer.Option(None, help="Or a folder / .tgz / .zip laid out <train>/<class>/*, "
                                       "<valid>/<class>/*."),
    max_per_class: Optional[int] = typer.Option(None, help="Keep the first N images per class and split."),
    out: Optional[str] = typer.Option(None, help="Folder for the reports (default runs/<dataset>-<arch>-d<depths>-"
                                      "s<seeds>-e<epochs>[...]); rerun with it to resume."),
    device: Optional[str] = typer.Option(None, help="auto (CUDA when available), cpu or cuda; bf16 mixed "
                                         "precision on CUDA."),
    config: Optional[Path] = typer.Option(None, help="A TOML file of these options (keys as in SweepConfig: "
                                          "depths, seeds, epochs, lr, bs, arch, dataset, max_per_class, out, "
                                          "device, quiet, save_models, pipeline, augment); flags override it."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bars or per-run lines; just the summary."),
    pipeline: Optional[str] = typer.Option(None, help="Data pipeline (default fast): fast (images decoded once, "
                                           "batches from memory) or pil (fastai's per-item PIL decode)."),
    augment: Optional[bool] = typer.Option(None, "--augment/--no-augment", help="Random flip + pad-4-and-crop of "
                                           "training batches (default off)."),
    save_models: bool = typer.Option(False, "--save-models", help="Keep each trained model in OUT/models/ "
                                     "(for cnn-depth explain)."),
):
    """Train one model per depth and seed; write results.csv, history.csv, summary.csv, sweep.json, plots.

    Examples:
      cnn-depth sweep --depths 2 3 4
      cnn-depth sweep --depths 1-8 --seeds 0 1 2 --epochs 10 --arch residual --out runs/res
      cnn-depth sweep --data ~/mnist_png --depths 2,4,8 --lr find --device cuda

    Exit code: 0 when every run is ok, 1 when one diverged or failed, 2 for bad options, 130 when interrupted
    (rerun the same command to resume).
    """
    from .config import SweepConfig, read_toml
    from .reports import format_summary
    from .sweep import SweepInterrupted, run_sweep

    if dataset is not None and data is not None:
        fail("give --dataset NAME or --data PATH, not both")
    flags = dict(depths=depths, seeds=seeds, epochs=epochs, lr=lr, bs=bs, arch=arch,
                 dataset=data if data is not None else dataset, max_per_class=max_per_class, out=out,
                 device=device, quiet=quiet or None, save_models=save_models or None, pipeline=pipeline,
                 augment=augment)
    options = {**(read_toml(config) if config else {}), **{k: v for k, v in flags.items() if v is not None}}
    cfg = SweepConfig(**options)
    try:
        results = run_sweep(cfg, log=typer.echo)
    except SweepInterrupted as e:
        fail(str(e), code=130)
    typer.echo(format_summary(results.attrs["summary"]))
    bad = results[results["status"] != "ok"]
    typer.echo(f"reports: {results.attrs['out']}/ (results.csv, history.csv, summary.csv, sweep.json, "
               f"accuracy_vs_depth.png, curves.png, activations.png)")
    if len(bad):
        kinds = ", ".join(f"{k}: {v}" for k, v in bad["status"].value_counts().items())
        fail(f"{len(bad)} of {len(results)} runs did not finish ok ({kinds}); see the error column of "
             f"results.csv; rerun the same command to retry them", code=1)


@command("report")
def report_cmd(results: list[Path] = typer.Argument(..., help="results.csv files (or sweep folders)."),
               out: Optional[Path] = typer.Option(None, help="Folder for summary.csv and comparison.png "
                                                  "(default runs/report).")):
    """Summarise one or several sweeps side by side: a table grouped by dataset, arch, epochs and depth,
    summary.csv and comparison.png.

    Example: cnn-depth report runs/a/results.csv runs/b/results.csv --out runs/compare
    """
    from .reports import format_summary, report

    summary = report(results, out)
    typer.echo(format_summary(summary))
    typer.echo(f"reports: {summary.attrs['out']}/ (summary.csv, comparison.png)")


@command("explain")
def explain_cmd(run_dir: Path = typer.Argument(..., help="Folder a sweep wrote with --save-models (it holds models/*.pt)."),
                depth: Optional[int] = typer.Option(None, help="Depth of the model to explain (may be left out when "
                                                               "the run holds one depth)."),
                seed: Optional[int] = typer.Option(None, help="Seed of the model (default: the lowest saved)."),
                arch: Optional[str] = typer.Option(None, help="Arch of the model (may be left out when the run holds "
                                                              "one arch)."),
                image: Optional[Path] = typer.Option(None, help="An image file to explain: loaded like the dataset, "
                                                                "resized to the model's size."),
                index: Optional[int] = typer.Option(None, help="Explain the K-th validation image of the run's "
                                                               "dataset instead (default 0)."),
                target: Optional[str] = typer.Option(None, help="Class name or index for Grad-CAM (default: the "
                                                                "predicted class)."),
                out: Optional[Path] = typer.Option(None, help="Folder for the PNGs (default RUN_DIR/explain/{run_id}/).")):
    """Show what one saved model learned: input.png (top-3 predictions), feature_maps.png, gradcam.png.

    Example: cnn-depth explain runs/sweep --depth 8 --index 3 --target cat
    """
    from .explain import explain_run

    paths = explain_run(run_dir, depth, seed=seed, image=image, index=index, target=target, out=out, arch=arch,
                        log=lambda s: typer.echo(s, err=True))
    for p in paths:
        typer.echo(str(p))


def _one_line_warning(message, category, filename, lineno, file=None, line=None):
    print(f"warning: {message}", file=file or sys.stderr)


def main():
    """Console-script entry point."""
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.showwarning = _one_line_warning
    app()


if __name__ == "__main__":
    main()
