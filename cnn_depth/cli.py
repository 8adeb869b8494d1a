"""The ``cnn-depth`` command line: a thin typer layer over the library functions notebooks call too.

Every command parses its options, calls one library function and prints. A :class:`CnnDepthError` (bad
input a user can fix) becomes one line on stderr and exit code 2, never a traceback.
"""
from __future__ import annotations

import functools
import sys
import warnings
from pathlib import Path
from typing import Optional

import typer

from .errors import CnnDepthError

app = typer.Typer(help="How does a CNN's depth change what it learns, and what does it cost?",
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
    from .models import count_params, depth_cnn, list_models, model_spec

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
