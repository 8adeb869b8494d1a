"""The one exception type a user can cause: its message is a single line that names the fix."""


class CnnDepthError(ValueError):
    """Bad input from a user (a path, a name, a number). The CLI prints it as one line and exits 2."""
