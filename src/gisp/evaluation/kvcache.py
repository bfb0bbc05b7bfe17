"""The KV cache across transformers 5.x: passed and returned as ``cache`` by newer releases,
``past_key_values`` by older ones (deprecated in 5.2x, removed from forward in 5.40), so a
forward loop or a prefilled prefix works on every version gisp allows (``transformers>=5.20,<6``).
"""

from __future__ import annotations

import inspect

from torch import nn


def cache_kwargs(model: nn.Module, cache: object) -> dict:
    """Keyword arguments handing ``cache`` to ``model``'s forward (or to ``generate``) by the name
    this transformers version takes."""
    return {"cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values": cache}


def returned_cache(output: object) -> object:
    """The cache a forward returned (``output.cache``, else ``output.past_key_values``)."""
    cache = getattr(output, "cache", None)
    return cache if cache is not None else output.past_key_values
