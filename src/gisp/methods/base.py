"""A pruning method is an importance plus a ranking scope, registered by name.

Adding a method is one file that calls :func:`register_method` (imported from
:mod:`gisp.methods`) and its test; the driver, trajectory, export and evaluation need nothing new.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from gisp.errors import GispError
from gisp.methods.names import BUILTIN, DEFAULT_METHOD

if TYPE_CHECKING:  # annotations only: the registry itself needs no torch
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

    def validate(self, config: Any) -> None:
        """Fill what ``config`` (a :class:`gisp.config.PruneConfig`, which imports this registry, so
        not named here) leaves to the method (steps, scope, normalisation, Taylor options,
        compensation) and refuse what this method cannot take, one line each: every rule that
        depends on the method lives here, naming methods from the registry."""
        from gisp.errors import check_choice
        from gisp.saliency import check_columns
        from gisp.selection import SCOPES

        config.steps = self.steps if config.steps is None else config.steps
        config.scope = self.scope if config.scope is None else config.scope
        check_choice("scope", config.scope, SCOPES)
        if config.normalize is None:
            config.normalize = self.normalize if config.scope == "global" else "none"
        elif config.normalize != "none" and config.scope != "global":
            raise GispError(f"--normalize {config.normalize} does not apply to method {self.name} with scope "
                            f"{config.scope}: only a global ranking compares heads with channels")
        taylor = names_where(lambda m: m.taylor_weights is not None)
        if self.taylor_weights is None and (config.taylor_weights is not None or config.saliency is not None):
            flag = "--taylor-weights" if config.taylor_weights is not None else "--saliency"
            raise GispError(f"{flag} applies to Taylor methods ({taylor}), not {self.name}")
        config.taylor_weights = config.taylor_weights or self.taylor_weights
        if config.normalize == "search" and not self.searchable:
            raise GispError(f"--normalize search rescales nonnegative scores per parameter; {self.name}'s are "
                            "standardised (signed), use its default")
        if config.compensate is None:  # compensated scores exist for output columns only
            config.compensate = self.compensate and config.taylor_weights != "all"
        elif config.compensate and not self.can_compensate:
            raise GispError(f"--compensate needs a method that measures input means "
                            f"({names_where(lambda m: m.can_compensate)}), not {self.name}")
        if config.saliency is None:  # Fisher scores exist for output columns only
            config.saliency = "first-order" if self.saliency and config.taylor_weights == "all" else self.saliency
        if config.taylor_weights is not None:
            check_columns(config.taylor_weights, config.saliency, bool(config.compensate))
        if config.compact_every and not (self.uses_gradients and config.taylor_weights == "output"
                                         and self.head_unit == "head"):
            raise GispError(f"--compact-every applies to gradient scoring of o/down columns per head "
                            f"({names_where(lambda m: m.uses_gradients and m.head_unit == 'head')} with "
                            f"--taylor-weights output), not {self.name} with --taylor-weights {config.taylor_weights}")
        if config.fsdp and not self.uses_gradients:
            raise GispError(f"--fsdp shards gradient scoring ({names_where(lambda m: m.uses_gradients)}); {self.name}, "
                            "which scores forward statistics, is not supported sharded")


_METHODS: dict[str, Method] = {}


def register_method(method: Method) -> Method:
    """Register ``method`` under its name (a later registration of the same name replaces it)."""
    _METHODS[method.name] = method
    return method


def _load_builtin() -> None:
    """Import the built-in method modules (each registers itself) once."""
    for module in BUILTIN:
        importlib.import_module(f"gisp.methods.{module}")


def method_names() -> list[str]:
    """Registered method names, the default first."""
    _load_builtin()
    return sorted(_METHODS, key=lambda n: (n != DEFAULT_METHOD, n))


def names_where(test: Callable[[Method], bool]) -> str:
    """``a, b`` of the registered methods that pass ``test``: messages name them from the registry."""
    return ", ".join(n for n in method_names() if test(_METHODS[n]))


def method_for(name: str) -> Method:
    """The method registered as ``name``; a clear error naming every registered one otherwise."""
    _load_builtin()
    if name not in _METHODS:
        raise GispError(f"unknown method {name!r}; choose from {', '.join(method_names())}")
    return _METHODS[name]
