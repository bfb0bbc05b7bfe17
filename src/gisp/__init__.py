"""gisp: Global Iterative Structured Pruning for Hugging Face LLMs.

``gisp.prune`` runs GISP and records a trajectory; ``gisp.export`` turns any level of it into a
physically smaller checkpoint; ``gisp.load`` loads models and exports. ``gisp.register_adapter``
adds a model family (a :class:`ModelAdapter` subclass).

The names below are imported on first use (PEP 562), so ``import gisp`` and ``gisp --help`` do not
pay for torch and transformers until something needs them.
"""

from __future__ import annotations

import importlib
import sys
import types

_NAMES = {
    "FusedRows": "gisp.adapters", "LayerModules": "gisp.adapters", "ModelAdapter": "gisp.adapters",
    "register_adapter": "gisp.adapters", "supported_model_types": "gisp.adapters",
    "export": "gisp.api", "load": "gisp.api", "masked_level": "gisp.api", "prune": "gisp.api", "recover": "gisp.api",
    "PruneConfig": "gisp.config", "RecoverConfig": "gisp.config", "GispError": "gisp.errors",
    "Trajectory": "gisp.trajectory",
}
__all__ = sorted(_NAMES)
__version__ = "0.1.0"


def __getattr__(name: str):
    if name not in _NAMES:
        raise AttributeError(f"module 'gisp' has no attribute {name!r}")
    value = getattr(importlib.import_module(_NAMES[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_NAMES))


class _Package(types.ModuleType):
    """``gisp.export`` is the function, although ``gisp/export.py`` is also a module: importing
    that module binds its name on the package, which would hide the function; that binding is
    ignored (the module stays in ``sys.modules`` for ``from gisp.export import ...``; patch its
    attributes through ``sys.modules["gisp.export"]``). Anything else assigned (a test's stand-in)
    replaces the function until deleted."""

    @property
    def export(self):
        override = self.__dict__.get("_export_override")
        if override is not None:
            return override
        from gisp.api import export

        return export

    @export.setter
    def export(self, value) -> None:
        if not isinstance(value, types.ModuleType):
            self.__dict__["_export_override"] = value

    @export.deleter
    def export(self) -> None:
        self.__dict__.pop("_export_override", None)


sys.modules[__name__].__class__ = _Package
