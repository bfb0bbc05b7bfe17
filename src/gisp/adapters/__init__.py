"""Architecture knowledge: one adapter per model family, looked up by ``config.model_type``."""

from gisp.adapters import llama as _llama  # noqa: F401  (llama, mistral, qwen2, qwen3, granite)
from gisp.adapters import olmo2 as _olmo2  # noqa: F401
from gisp.adapters import phi3 as _phi3  # noqa: F401
from gisp.adapters.base import (
    ROLES,
    AttentionGeometry,
    ExportClasses,
    FusedRows,
    LayerModules,
    ModelAdapter,
    Projection,
    adapter_for,
    base_linear,
    parameter_rows,
    register_adapter,
    supported_model_types,
)

__all__ = ["ROLES", "AttentionGeometry", "ExportClasses", "FusedRows", "LayerModules", "ModelAdapter", "Projection",
           "adapter_for", "base_linear", "parameter_rows", "register_adapter", "supported_model_types"]
