"""The one exception type for bad user input.

The CLI turns a :class:`GispError` into a one-line message and exit code 2; anything else is a bug
and keeps its traceback.
"""


class GispError(Exception):
    """Bad input or state the user can fix: unknown architecture, missing file, bad sparsity..."""


def check_choice(name: str, value: str, allowed: tuple[str, ...]) -> None:
    """``unknown NAME 'value'; choose from a, b``: the one message for a value off a list."""
    if value not in allowed:
        raise GispError(f"unknown {name} {value!r}; choose from {', '.join(allowed)}")


def check_positive(config: object, names: tuple[str, ...], flag: str = "") -> None:
    """``NAME must be a positive integer, got v`` for the first of ``config``'s ``names`` below 1;
    ``flag`` prefixes the option's name as the user typed it (``--``)."""
    for name in names:
        value = getattr(config, name)
        if value < 1:
            raise GispError(f"{flag}{name.replace('_', '-')} must be a positive integer, got {value}")
