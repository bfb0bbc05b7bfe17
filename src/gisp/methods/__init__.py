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

from gisp.methods import flap, magnitude, random_order, shortgpt, taylor, wanda_sp  # noqa: F401  (register)
from gisp.methods.base import Method, MethodInputs, method_for, method_names, register_method

__all__ = ["Method", "MethodInputs", "method_for", "method_names", "register_method"]
