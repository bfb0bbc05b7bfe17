"""Pruning methods, registered by name: ``gisp`` and the baselines it is measured against.

| name | importance | scope |
|---|---|---|
| ``gisp`` | compensated ``|W * dL/dW|`` of ``o_proj`` / ``down_proj`` columns per query head / channel, per parameter, head/channel rate searched, bias compensation | global, iterative |
| ``wanda-sp`` | ``|W| * ||X||`` of ``o_proj`` / ``down_proj`` columns, layers in order | per layer |
| ``flap`` | fluctuation of ``o_proj`` / ``down_proj`` inputs, standardised per block, bias compensation | global |
| ``llm-pruner`` | ``|W * dL/dW|`` per coupled KV group / channel | per layer |
| ``shortgpt`` | block influence ``1 - cos(h_in, h_out)`` | whole layers |
| ``magnitude`` | squared weight norm per parameter | global |
| ``random`` | seeded random scores | global |
"""

from __future__ import annotations

from gisp.methods.names import BUILTIN, DEFAULT_METHOD, LEGACY_METHOD

_LAZY = ("Method", "MethodInputs", "method_for", "method_names", "register_method")
__all__ = ["BUILTIN", "DEFAULT_METHOD", "LEGACY_METHOD", *_LAZY]


def __getattr__(name: str):
    """The registry on first use, so that reading :data:`DEFAULT_METHOD` (the CLI's help, the
    config's default) imports no importance and no torch."""
    if name in _LAZY:
        from gisp.methods import base

        return getattr(base, name)
    raise AttributeError(f"module 'gisp.methods' has no attribute {name!r}")
