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
