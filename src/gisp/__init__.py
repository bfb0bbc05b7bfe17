"""gisp: Global Iterative Structured Pruning for Hugging Face LLMs.

``gisp.prune`` runs GISP and records a trajectory; ``gisp.export`` turns any level of it into a
physically smaller checkpoint; ``gisp.load`` loads models and exports. ``gisp.register_adapter``
adds a model family (a :class:`ModelAdapter` subclass).
"""

from gisp.adapters import FusedRows, LayerModules, ModelAdapter, register_adapter, supported_model_types
from gisp.api import export, load, masked_level, prune, recover
from gisp.config import PruneConfig, RecoverConfig
from gisp.errors import GispError
from gisp.trajectory import Trajectory

__all__ = ["FusedRows", "GispError", "LayerModules", "ModelAdapter", "PruneConfig", "RecoverConfig", "Trajectory",
           "export", "load", "masked_level", "prune", "recover", "register_adapter", "supported_model_types"]
__version__ = "0.1.0"
