"""The one exception type a user can cause, and the checks that raise it: its message is a single line that
names the fix."""
from __future__ import annotations

import operator


class CnnDepthError(ValueError):
    """Bad input from a user (a path, a name, a number). The CLI prints it as one line and exits 2."""


class SweepFailed(CnnDepthError):
    """Every run a sweep started failed: nothing was trained. Its one line says how many, the first error and
    where the rows are (they stay recorded; ``results`` holds results.csv). The CLI prints it and exits 1."""

    def __init__(self, message: str, results=None):
        super().__init__(message)
        self.results = results

    def __reduce__(self):
        return type(self), (self.args[0], self.results)


def check_int(value, name: str, minimum: int = 1, maximum: int | None = None, hint: str = "") -> int:
    """``value`` as an int in ``[minimum, maximum]``, else a one-line error naming ``name``.

    Library functions take ints: a bool, a float or a string is refused here (strings are coerced once, at the
    CLI/TOML boundary). ``hint`` is appended to the message (e.g. ``"; e.g. --epochs 5"``).
    """
    if isinstance(value, bool):
        raise CnnDepthError(f"{name} must be a whole number ≥ {minimum}, got {value!r}{hint}")
    try:
        n = operator.index(value)  # int and numpy integers; not float or str
    except TypeError as e:
        raise CnnDepthError(f"{name} must be a whole number ≥ {minimum}, got {value!r}{hint}") from e
    if n < minimum:
        raise CnnDepthError(f"{name} must be a whole number ≥ {minimum}, got {n}{hint}")
    if maximum is not None and n > maximum:
        raise CnnDepthError(f"{name} must be at most {maximum}, got {n}{hint}")
    return int(n)
