"""A pruning method is an importance plus a ranking scope, registered by name.

Adding a method is one file that calls :func:`register_method` (imported from
:mod:`gisp.methods`) and its test; the driver, trajectory, export and evaluation need nothing new.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal


from gisp.errors import GispError
from gisp.importance import Importance
from gisp.objectives import Objective
from gisp.selection import Scope


@dataclass(frozen=True)
class MethodInputs:
    """What an importance may be built from: the calibration batches every method shares, and the
    run's options."""

    batches: list[dict]
    objective: Objective
    seed: int = 0
    progress: bool = True
    taylor_weights: str = "all"
    compensate: bool = False
    saliency: str = "first-order"
    checkpointing: bool = False  # gradient checkpointing in gradient passes


@dataclass(frozen=True)
class Method:
    """A registered pruning method.

    ``build`` makes its importance; ``scope`` is how scores become a ranking (``global``, ``layer``,
    ``depth``, see :mod:`gisp.selection`); ``normalize`` the default normalisation of a global
    ranking; ``steps`` the default number of steps (the schedule is the same for every method);
    ``compensate``: the method adds output biases by default (FLAP), ``can_compensate``: its
    importance reports input means, so ``--compensate`` may turn them on or off; ``searchable``:
    its scores are nonnegative, so ``--normalize search`` may rescale them per parameter;
    ``head_unit``: heads are removed one query head at a time or as whole KV groups; ``uses_data`` / ``uses_gradients``: whether the
    calibration batches are read, and whether the objective is differentiated; ``taylor_weights``:
    for Taylor importances, which weights a structure's score sums by default (``None``: not a
    Taylor method); ``saliency``: Taylor methods' default per-structure score
    (``first-order`` or ``fisher``).
    """

    name: str
    summary: str
    build: Callable[[MethodInputs], Importance]
    scope: Scope = "global"
    normalize: str = "none"
    steps: int = 1
    compensate: bool = False
    can_compensate: bool = False
    searchable: bool = True
    head_unit: Literal["head", "kv-group"] = "head"
    uses_data: bool = True
    uses_gradients: bool = False
    taylor_weights: str | None = None
    saliency: str | None = None


_METHODS: dict[str, Method] = {}


def register_method(method: Method) -> Method:
    """Register ``method`` under its name (a later registration of the same name replaces it)."""
    _METHODS[method.name] = method
    return method


def method_names() -> list[str]:
    """Registered method names, ``gisp`` first."""
    return sorted(_METHODS, key=lambda n: (n != "gisp", n))


def method_for(name: str) -> Method:
    """The method registered as ``name``; a clear error naming every registered one otherwise."""
    if name not in _METHODS:
        raise GispError(f"unknown method {name!r}; choose from {', '.join(method_names())}")
    return _METHODS[name]
