"""Forward statistics of the calibration set, for the activation-based importances.

- :func:`input_stats`: per-feature count, sum and sum of squares of the inputs of every layer's
  ``o_proj`` and ``down_proj`` in one forward pass (FLAP's fluctuation and means, Wanda-sp's norms).
- :func:`layerwise_input_stats`: the same, layer by layer, each layer fed the outputs of the
  earlier layers *as pruned* (Wanda-sp's sequential setting): a callback decides what to remove in
  a layer from its statistics, and that layer's outputs are recomputed with it removed.
- :func:`block_influence`: ShortGPT's ``1 - cos(h_in, h_out)`` per layer.
- :func:`compensation_hooks`: during a gradient pass, the mean input of every ``o_proj`` /
  ``down_proj`` feature and either the gradient of their outputs summed over tokens (compensated
  Taylor scores, :func:`gisp.saliency.compensated_saliency`) or the Fisher moments of their inputs
  (:func:`gisp.saliency.fisher_moments`).

Padding (``attention_mask`` 0) is excluded from every statistic. Hooks are registered for one
pass and always removed; the model's weights are never modified here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import nn

from gisp import distributed, saliency
from gisp.adapters.base import ModelAdapter
from gisp.compensation import InputMeans
from gisp.batches import to_device, token_mask
from gisp.masking import feature_mask_hooks
from gisp.runtime import progress_bar


@dataclass
class FeatureStats:
    """Running per-feature statistics of a linear layer's input, in float64."""

    count: int = 0
    total: torch.Tensor | None = None  # [n]
    squares: torch.Tensor | None = None  # [n]

    def add(self, x: torch.Tensor) -> None:
        """Accumulate tokens ``x`` [N, n]."""
        x = x.detach().double()
        if self.total is None:
            self.total = torch.zeros(x.shape[-1], dtype=torch.float64, device=x.device)
            self.squares = torch.zeros_like(self.total)
        self.count += x.shape[0]
        self.total += x.sum(0)
        self.squares += x.pow(2).sum(0)

    @property
    def mean(self) -> torch.Tensor:
        return (self.total / max(self.count, 1)).float().cpu()

    @property
    def variance(self) -> torch.Tensor:
        """Unbiased sample variance over tokens."""
        n = max(self.count, 2)
        return ((self.squares - self.total.pow(2) / self.count) / (n - 1)).clamp(min=0).float().cpu()

    @property
    def sq_norm(self) -> torch.Tensor:
        """Squared L2 norm of each feature over all tokens."""
        return self.squares.float().cpu()


@dataclass
class LayerStats:
    """Input statistics of one layer's ``o_proj`` (attention) and ``down_proj`` (mlp)."""

    attention: FeatureStats = field(default_factory=FeatureStats)
    mlp: FeatureStats = field(default_factory=FeatureStats)


def _tokens(x: torch.Tensor, valid: torch.Tensor | None) -> torch.Tensor:
    """Real tokens of ``x`` [B, T, n] -> [N, n] (padding dropped)."""
    return x.flatten(0, -2) if valid is None else x[valid]  # flatten, not reshape(-1, n): n may be 0 (an emptied MLP)


@contextmanager
def _hooks(handles: list) -> Iterator[None]:
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def _stats_hooks(adapter: ModelAdapter, layer: nn.Module, stats: LayerStats, valid: list, replaying: list | None = None) -> list:
    """Pre-hooks that feed ``o_proj`` / ``down_proj`` inputs into ``stats``; ``valid[0]`` is the
    current batch's token mask; nothing is added while ``replaying[0]`` (a checkpointed layer
    re-run in the backward pass sees the same inputs again)."""
    mods = adapter.layer_modules(layer)
    replaying = replaying or [False]

    def feed(into: FeatureStats):
        return lambda m, args: None if replaying[0] else into.add(_tokens(args[0].detach(), valid[0]))  # no graph
    return [mods.o.register_forward_pre_hook(feed(stats.attention)), mods.down.register_forward_pre_hook(feed(stats.mlp))]


@torch.no_grad()
def input_stats(model: nn.Module, adapter: ModelAdapter, batches: list[dict], progress: bool = True) -> list[LayerStats]:
    """Statistics of every layer's ``o_proj`` / ``down_proj`` inputs over the calibration set."""
    layers = adapter.layers(model)
    stats = [LayerStats() for _ in layers]
    valid: list = [None]
    handles = [h for layer, s in zip(layers, stats) for h in _stats_hooks(adapter, layer, s, valid)]
    device = next(model.parameters()).device
    with _hooks(handles):
        for batch in progress_bar(batches, desc="activations", enabled=progress, leave=False):
            batch = to_device(batch, device)
            valid[0] = token_mask(batch)
            model(input_ids=batch["input_ids"], attention_mask=batch.get("attention_mask"), use_cache=False)
    return stats


def input_means(stats: list[LayerStats]) -> InputMeans:
    """Every layer's mean ``o_proj`` / ``down_proj`` input, as compensation stores it."""
    return InputMeans(torch.stack([s.attention.mean for s in stats]), torch.stack([s.mlp.mean for s in stats]))


@dataclass
class CompensationStats:
    """What compensated Taylor scoring needs of every layer's ``o_proj`` / ``down_proj``: input
    statistics (for the means) and the output gradient summed over real tokens, weighted by each
    batch's share as the weight gradients are (float32, ``[d]`` each). With ``fisher``, also the
    per-token moments of :func:`gisp.saliency.fisher_moments` per head (``o``) and channel
    (``down``), each batch's gradients scaled by its share."""

    inputs: list[LayerStats]
    o_grad: list[torch.Tensor | None]
    down_grad: list[torch.Tensor | None]
    o_moments: list[tuple | None]
    down_moments: list[tuple | None]
    valid: list = field(default_factory=lambda: [None])  # the current batch's token mask
    samples: list = field(default_factory=lambda: [None])  # the current batch's real tokens' sample index (margin)
    share: list = field(default_factory=lambda: [1.0])  # the current batch's loss weight
    replaying: list = field(default_factory=lambda: [False])  # True during backward: checkpointed layers re-run
    checkpointed: bool = False  # layers are gradient-checkpointed: inputs are taken from their replay
    replayed: dict = field(default_factory=dict)  # (store id, layer) -> replayed input tokens, until its gradient

    def means(self) -> InputMeans:
        return input_means(self.inputs)

    def all_reduce(self) -> None:
        """Sum every statistic over the data-parallel ranks (each saw its share of the batches)."""
        if distributed.world_size() == 1:
            return
        for s in self.inputs:
            for f in (s.attention, s.mlp):
                distributed.all_reduce_sum([f.total, f.squares])
                f.count = int(distributed.sum_float(float(f.count)))
        for store in (self.o_grad, self.down_grad, self.o_moments, self.down_moments):
            for value in store:
                if value is not None:
                    distributed.all_reduce_sum(value if isinstance(value, tuple) else [value])


def _accumulate(store: list, index: int, values) -> None:
    """Add a tensor (or a tuple of tensors) into ``store[index]``."""
    if store[index] is None:
        store[index] = values
    elif isinstance(values, tuple):
        store[index] = tuple(a + b for a, b in zip(store[index], values))
    else:
        store[index] = store[index] + values


@contextmanager
def compensation_hooks(model: nn.Module, adapter: ModelAdapter, fisher: bool = False,
                       checkpointed: bool = False) -> Iterator[CompensationStats]:
    """Hooks that fill a :class:`CompensationStats` during forward + backward passes; set its
    ``valid`` and ``share`` before each batch, and ``replaying`` during the backward pass when
    layers are gradient-checkpointed (``checkpointed``). Removed on exit.

    Without ``fisher``: input statistics and output gradients (first-order compensated scores).
    With ``fisher``: input statistics and the Fisher moments, from the gradient of each
    ``o_proj`` / ``down_proj`` input as autograd computes it (the first-order output gradients are
    not needed, so none are summed). Either way the hooks only see tensors that require grad.
    """
    layers = adapter.layers(model)
    n = len(layers)
    stats = CompensationStats([LayerStats() for _ in layers], [None] * n, [None] * n, [None] * n, [None] * n,
                              checkpointed=checkpointed)
    head_dim = adapter.geometry().head_dim

    def output_grad_sink(store: list, index: int):
        def on_output(module, args, output):
            valid, share = stats.valid[0], stats.share[0]
            if output.requires_grad and not stats.replaying[0]:  # [B, T, d] -> [N, d] -> [d]
                output.register_hook(lambda grad: _accumulate(store, index, (_tokens(grad, valid).float() * share).sum(0)))
        return on_output

    def input_grad_sink(moments: list, index: int, group: int):
        key = (id(moments), index)

        def on_input(module, args):
            x, valid, share, samples = args[0], stats.valid[0], stats.share[0], stats.samples[0]
            if stats.replaying[0]:  # a checkpointed layer re-run just before its gradients: its inputs, again
                stats.replayed[key] = _tokens(x.detach(), valid)
                return
            if not x.requires_grad:
                return
            # [B, T, n] -> [N, n]; under checkpointing not kept now (that is the memory saved) but replayed
            kept = None if stats.checkpointed else _tokens(x.detach(), valid)

            def on_grad(grad: torch.Tensor) -> None:  # dL/dx, [B, T, n] -> [N, n]
                inputs = kept if kept is not None else stats.replayed.pop(key)
                grad_in = _tokens(grad, valid).float() * share
                _accumulate(moments, index, saliency.fisher_moments(grad_in, inputs, group, samples))
            x.register_hook(on_grad)
        return on_input

    handles = []
    for i, layer in enumerate(layers):
        mods = adapter.layer_modules(layer)
        handles += _stats_hooks(adapter, layer, stats.inputs[i], stats.valid, stats.replaying)
        if fisher:
            handles += [mods.o.register_forward_pre_hook(input_grad_sink(stats.o_moments, i, head_dim)),
                        mods.down.register_forward_pre_hook(input_grad_sink(stats.down_moments, i, 1))]
        else:
            handles += [mods.o.register_forward_hook(output_grad_sink(stats.o_grad, i)),
                        mods.down.register_forward_hook(output_grad_sink(stats.down_grad, i))]
    with _hooks(handles):
        yield stats


def _first(output):
    return output[0] if isinstance(output, (tuple, list)) else output


@torch.no_grad()
def _layer_inputs(model: nn.Module, adapter: ModelAdapter, batches: list[dict]) -> tuple[list, list[list[dict]]]:
    """Hidden states entering the first layer, and every layer's keyword arguments, per batch."""
    layers = adapter.layers(model)
    hidden, kwargs = [], [[] for _ in batches]
    current = [0]

    def capture(index: int):
        def hook(module, args, kw):
            if index == 0:
                hidden.append((args[0] if args else kw["hidden_states"]).detach())
            kwargs[current[0]].append({k: v for k, v in kw.items() if k != "hidden_states"})
        return hook

    handles = [layer.register_forward_pre_hook(capture(i), with_kwargs=True) for i, layer in enumerate(layers)]
    device = next(model.parameters()).device
    with _hooks(handles):
        for b, batch in enumerate(batches):
            current[0] = b
            batch = to_device(batch, device)
            model(input_ids=batch["input_ids"], attention_mask=batch.get("attention_mask"), use_cache=False)
    return hidden, kwargs


LayerCallback = Callable[[int, LayerStats], tuple[torch.Tensor, torch.Tensor]]


@torch.no_grad()
def layerwise_input_stats(
    model: nn.Module, adapter: ModelAdapter, batches: list[dict], on_layer: LayerCallback, progress: bool = True,
) -> list[LayerStats]:
    """Sequential statistics: layer ``l`` sees the outputs of layers ``< l`` with their removals.

    For each layer in order: run it on every batch collecting its input statistics, call
    ``on_layer(l, stats)`` which returns the ``o_proj`` ([H*hd]) and ``down_proj`` ([F]) input
    features to keep, and recompute the layer's outputs with the others zeroed (hooks only; the
    weights are untouched). Memory: one hidden state per calibration token.
    """
    hidden, kwargs = _layer_inputs(model, adapter, batches)
    valid = [token_mask(to_device(b, hidden[0].device)) for b in batches]
    out: list[LayerStats] = []
    for index, layer in enumerate(progress_bar(adapter.layers(model), desc="layers", enabled=progress, leave=False)):
        stats = LayerStats()
        current: list = [None]
        with _hooks(_stats_hooks(adapter, layer, stats, current)):
            for b in range(len(batches)):
                current[0] = valid[b]
                layer(hidden[b], **kwargs[b][index])
        keep_attention, keep_mlp = on_layer(index, stats)
        with _hooks(feature_mask_hooks(adapter, layer, keep_attention.to(hidden[0].device), keep_mlp.to(hidden[0].device))):
            hidden = [_first(layer(hidden[b], **kwargs[b][index])) for b in range(len(batches))]
        out.append(stats)
    return out


@torch.no_grad()
def block_influence(model: nn.Module, adapter: ModelAdapter, batches: list[dict], progress: bool = True) -> torch.Tensor:
    """Mean ``1 - cos(h_in, h_out)`` of every layer over the calibration tokens -> [L] (ShortGPT)."""
    layers = adapter.layers(model)
    total = torch.zeros(len(layers), dtype=torch.float64)
    count = [0]
    valid: list = [None]

    def hook(index: int):
        def fn(module, args, kw, output):
            h_in = args[0] if args else kw["hidden_states"]
            bi = saliency.block_influence(_tokens(h_in, valid[0]), _tokens(_first(output), valid[0]))
            total[index] += float(bi.double().sum())
        return fn

    handles = [layer.register_forward_hook(hook(i), with_kwargs=True) for i, layer in enumerate(layers)]
    device = next(model.parameters()).device
    with _hooks(handles):
        for batch in progress_bar(batches, desc="block influence", enabled=progress, leave=False):
            batch = to_device(batch, device)
            valid[0] = token_mask(batch)
            count[0] += int(valid[0].sum()) if valid[0] is not None else batch["input_ids"].numel()
            model(input_ids=batch["input_ids"], attention_mask=batch.get("attention_mask"), use_cache=False)
    return (total / max(count[0], 1)).float()
