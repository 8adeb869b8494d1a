"""The CLI's start: help and usage errors without torch or fastai, help that reads as typer's, and a
Ctrl-C during start-up or after the command as one line."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import textwrap

import pytest
import typer
from typer.testing import CliRunner

from cnn_depth.cli import app

HEAVY = ("torch", "fastai", "torchvision", "matplotlib", "pandas", "scipy")
runner = CliRunner()


def run_main(args: list[str], prelude: str = "", timeout: float = 120) -> subprocess.CompletedProcess:
    """``cnn-depth ARGS`` in a fresh Python (as the console script runs it), after ``prelude``; the heavy
    modules it imported are printed as a last line of JSON on stdout, from an exit hook."""
    code = textwrap.dedent(f"""
        import atexit, json, sys
        sys.argv = ["cnn-depth"] + {args!r}
        {prelude}
        from cnn_depth.__main__ import main
        atexit.register(lambda: print(json.dumps(sorted(m for m in {HEAVY!r} if m in sys.modules)), flush=True))
        main()
    """)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout)


def heavy_modules(r: subprocess.CompletedProcess) -> list[str]:
    return json.loads(r.stdout.strip().splitlines()[-1])


@pytest.mark.slow
@pytest.mark.parametrize("args,code", [
    (["--help"], 0), ([], 0), (["sweep", "--help"], 0), (["models", "--help"], 0), (["datasets", "--help"], 0),
    (["summary", "--help"], 0), (["report", "--help"], 0), (["explain", "--help"], 0),
    (["sweep", "--epochs", "x"], 2), (["sweep", "--no-such-option"], 2), (["nosuchcommand"], 2),
])
def test_help_and_usage_errors_import_neither_torch_nor_fastai(args, code):
    r = run_main(args)
    assert r.returncode == code, r.stderr
    assert heavy_modules(r) == [], r.stdout
    if code:
        assert len(r.stderr.strip().splitlines()) == 1 and r.stderr.startswith("error: "), r.stderr


@pytest.mark.slow
def test_models_needs_torch_and_lists_it():
    r = run_main(["models", "--depth", "20"])
    assert r.returncode == 0, r.stderr
    assert "1,078,170" in r.stdout and "torch" in heavy_modules(r)


def test_the_config_default_dataset_is_the_registry_default():
    from cnn_depth import config, data

    assert config.DEFAULT_SOURCE == data.DEFAULT_SOURCE


@pytest.mark.parametrize("args", [[], ["sweep"], ["models"], ["datasets"], ["summary"], ["report"], ["explain"]])
def test_help_lists_flags_without_a_value_type(args):
    r = runner.invoke(app, args + ["--help"], terminal_width=120)
    assert r.exit_code == 0, r.output
    assert "<bool>" not in r.output
    assert re.search(r"--help\s+Show this message and exit\.", r.output), r.output
    if args == ["sweep"]:  # its flags too
        assert re.search(r"--augment\s+--no-augment\s+Random flip", r.output), r.output


def test_command_list_shows_each_first_paragraph_as_one_paragraph():
    group = typer.main.get_command(app)
    for name, command in group.commands.items():
        assert command.short_help and "\n" not in command.short_help, name
    assert group.commands["report"].short_help.startswith("Summarise one or several sweeps side by side: per group "
                                                          "of settings (labelled by what differs) and depth, mean")


@pytest.mark.slow
def test_ctrl_c_while_the_sweep_imports_torch_is_one_line():
    """A real SIGINT, sent the moment the sweep command starts importing torch (an import hook sends it)."""
    prelude = textwrap.dedent("""
        import importlib.abc, os, signal, sys, time
        class CtrlC(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path, target=None):
                if name == "torch":
                    sys.meta_path.remove(self)
                    os.kill(os.getpid(), signal.SIGINT)
                    time.sleep(1)  # the signal is handled here
                return None
        sys.meta_path.insert(0, CtrlC())
    """).replace("\n", "\n        ")
    r = run_main(["sweep", "--depths", "1", "--out", os.devnull + "/never"], prelude)
    assert r.returncode == 130, r.stderr
    assert r.stderr.strip() == ("error: interrupted; the runs recorded before it are kept (rerun the same command "
                                "to resume)"), r.stderr


@pytest.mark.slow
def test_ctrl_c_after_the_command_ended_is_one_line():
    """A real SIGINT while Python runs its exit hooks, after `cnn-depth --help` printed everything (from a hook
    registered once the CLI loads, as multiprocessing's is)."""
    prelude = textwrap.dedent("""
        import atexit, importlib.abc, os, signal, sys, time
        def ctrl_c():
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(1)
        class Register(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path, target=None):
                if name == "cnn_depth.cli":
                    sys.meta_path.remove(self)
                    atexit.register(ctrl_c)
                return None
        sys.meta_path.insert(0, Register())
    """).replace("\n", "\n        ")
    r = run_main(["--help"], prelude)
    assert r.returncode == 130, r.stderr
    assert "Usage: cnn-depth" in r.stdout
    assert r.stderr.strip() == "error: interrupted as the command ended; it had finished, so nothing was cut short"


@pytest.mark.slow
def test_a_ctrl_c_that_library_code_swallows_still_ends_in_130():
    """A real SIGINT during start-up that a bare ``except:`` swallows (as fastai's ``_try_concat`` would):
    the command runs to its end, then says it was interrupted and exits 130, not 0."""
    prelude = textwrap.dedent("""
        import importlib.abc, os, signal, sys, time
        class Swallow(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path, target=None):
                if name == "cnn_depth.cli":
                    sys.meta_path.remove(self)
                    try:
                        os.kill(os.getpid(), signal.SIGINT)
                        time.sleep(1)
                    except:  # noqa: E722  (what the library code does)
                        pass
                return None
        sys.meta_path.insert(0, Swallow())
    """).replace("\n", "\n        ")
    r = run_main(["--help"], prelude)
    assert r.returncode == 130, r.stderr
    assert "Usage: cnn-depth" in r.stdout
    assert r.stderr.strip() == "error: interrupted as the command ended; it had finished, so nothing was cut short"
