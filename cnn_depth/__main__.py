"""``cnn-depth`` and ``python -m cnn_depth``: start the CLI; a Ctrl-C at any moment ends it with one line.

Where a Ctrl-C (SIGINT) can land, and who says what (always one ``error: interrupted ...`` line, exit 130):

- start-up (Python is up; the CLI's modules load, typer builds the commands): here, "nothing was written";
- inside a command: the command itself (the sweep says what it kept), else :class:`cnn_depth.cli.OneLineErrors`;
- after the command ended (its last lines, Python's exit hooks): here, "the command had ended".

After that line the process ends at once (``os._exit(130)``, once Python's exit hooks have run) rather than
by Python's normal finalisation: a KeyboardInterrupt that cut an import of torch short leaves it half made,
and finalising that can abort with ``Fatal Python error: PyThreadState_Get`` after the line. Nothing is cut
short by it: the command has closed what it wrote before its line is printed.

Only a SIGINT in the milliseconds before this module runs (Python starting) cannot be answered: Python
then either dies of the signal (the shell reports 130) or, once its handler is set, prints the
KeyboardInterrupt of its own start-up. This module imports nothing heavy until inside ``main``.
"""
import atexit
import os
import signal
import sys
import warnings

STARTING = "interrupted during start-up; nothing was written"
ENDED = "interrupted as the command ended; it had finished, so nothing was cut short"


def _one_line_warning(message, category, filename, lineno, file=None, line=None):
    print(f"warning: {message}", file=file or sys.stderr)


def _say(message: str) -> None:
    try:
        sys.stdout.flush()
    except Exception:  # a closed pipe: the line on stderr is what matters
        pass
    try:
        if sys.stderr.isatty():  # after the terminal's ^C (or a progress bar), on a line of its own
            sys.stderr.write("\n")
        sys.stderr.write(f"error: {message}\n")
        sys.stderr.flush()
    except Exception:
        pass


def _exit_now(code: int) -> None:
    """Python's exit hooks (multiprocessing removes its temporary folders), then exit without finalising
    the interpreter; a SIGINT from here on is ignored (the line has been printed)."""
    _ignore_sigint()
    try:
        atexit._run_exitfuncs()  # the hooks a normal exit runs; torch's state is never finalised
    except BaseException:
        pass
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:
            pass
    os._exit(code)


def _ignore_sigint() -> None:
    if signal.getsignal(signal.SIGINT) is not None:  # None: a handler not set from Python; leave it
        signal.signal(signal.SIGINT, signal.SIG_IGN)


_requested: list = []  # the SIGINTs our handler turned into a KeyboardInterrupt


def _on_sigint(signum, frame) -> None:
    """Python's own SIGINT handler (a KeyboardInterrupt), plus a note that it came: library code with a bare
    ``except:`` (fastai's ``_try_concat``, fastcore's caches, ...) can swallow the KeyboardInterrupt, and the
    command would then end as if no Ctrl-C had been pressed. (The sweep's driver loop has its own handler.)"""
    _requested.append(signum)
    raise KeyboardInterrupt


def _interrupted_while_exiting(signum, frame) -> None:
    """A Ctrl-C after the command ended, while Python runs its exit hooks (joining threads, removing
    temporary folders): one line and 130, not the traceback of the hook it cut short."""
    _say(ENDED)
    os._exit(130)


def main():
    """Console-script entry point."""
    # Registered before anything else, so it runs last of the exit hooks: a SIGINT after it (Python is
    # tearing down, its handlers gone) would otherwise kill the process with no line; the command has ended.
    atexit.register(_ignore_sigint)
    try:  # the outer try catches a KeyboardInterrupt that lands in the inner one's handling too
        if signal.getsignal(signal.SIGINT) is signal.default_int_handler:  # not SIG_IGN (`cnn-depth ... &`)
            signal.signal(signal.SIGINT, _on_sigint)
        try:
            warnings.filterwarnings("ignore", category=FutureWarning)
            warnings.filterwarnings("ignore", category=DeprecationWarning)
            warnings.showwarning = _one_line_warning
            from cnn_depth.cli import app

            app()  # standalone: ends in SystemExit
            code = 0
        except SystemExit as e:
            code = e.code
        if code == 130:  # interrupted: the command (or OneLineErrors) has printed its line
            _exit_now(130)
        if _requested:  # a Ctrl-C that library code swallowed: the command ran on to its end
            raise KeyboardInterrupt
        if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:
            signal.signal(signal.SIGINT, _interrupted_while_exiting)
    except KeyboardInterrupt:  # outside any command: start-up, or after the command ended
        cli = sys.modules.get("cnn_depth.cli")
        _say(ENDED if getattr(cli, "command_ended", False) else STARTING)
        _exit_now(130)
    sys.exit(code)


if __name__ == "__main__":
    main()
