"""``cnn-depth`` and ``python -m cnn_depth``: start the CLI, with a one-line message for a Ctrl-C at any moment.

The CLI module imports torch and fastai (seconds); an interrupt while they load would otherwise print a long
traceback of the import. This module imports nothing heavy until inside ``main``.
"""
import sys
import warnings


def _one_line_warning(message, category, filename, lineno, file=None, line=None):
    print(f"warning: {message}", file=file or sys.stderr)


def main():
    """Console-script entry point."""
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.showwarning = _one_line_warning
    try:
        from cnn_depth.cli import app
    except KeyboardInterrupt:
        print("\nerror: interrupted during start-up; nothing was written", file=sys.stderr)
        sys.exit(130)
    app()


if __name__ == "__main__":
    main()
