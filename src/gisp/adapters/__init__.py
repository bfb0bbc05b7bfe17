"""Architecture knowledge: one adapter per model family, looked up by ``config.model_type``."""

from gisp.adapters import llama as _llama  # noqa: F401  (registers llama, mistral, qwen2, qwen3)
from gisp.adapters.base import (
    LayerModules,
    ModelAdapter,
    adapter_for,
    register_adapter,
    supported_model_types,
)

__all__ = ["LayerModules", "ModelAdapter", "adapter_for", "register_adapter", "supported_model_types"]
