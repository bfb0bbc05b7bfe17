"""gisp: Global Iterative Structured Pruning for Hugging Face LLMs.

``gisp.prune`` runs GISP and records a trajectory; ``gisp.export`` turns any level of it into a
physically smaller checkpoint; ``gisp.load`` loads models and exports.
"""

from gisp.api import export, load, prune
from gisp.config import PruneConfig
from gisp.errors import GispError
from gisp.trajectory import Trajectory

__all__ = ["GispError", "PruneConfig", "Trajectory", "export", "load", "prune"]
__version__ = "0.1.0"
