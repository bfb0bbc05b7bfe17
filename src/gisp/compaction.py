"""Progressive compaction: score a physically smaller copy of the working model.

After some steps most of a model's heads and channels may be gone, yet the masked model still
multiplies by their zeroed rows and columns. ``--compact-every K`` rebuilds, every K steps, a
copy of the working model with the removed structures sliced out (the export's slicing,
:func:`gisp.slicing.build_sliced_model`, compensation biases included), runs the gradient pass on
that copy, and maps its scores back to the dense model's head and channel indices. The masked
model stays the source of truth for masks, compensation and the trajectory; the gradient pass and
the candidate losses of ``--normalize search`` (:func:`compact_view`) run on the smaller copy.

Scores of removed structures are zero on the masked path (a zero ``o``/``down`` column gets no
gradient); expanded scores put zero there too, and the input means of removed features (which only
ever multiply zero columns) are zero. So the ranking sees the same numbers up to the float rounding
of matmuls of another size: the trajectory is the masked path's unless two structures tie to the
last bits (identical in ``tests/test_compaction.py``). The copy costs memory: while it is built,
the working model's state, the sliced tensors and the new model coexist (``gisp plan
--compact-every`` counts the copy at the dense size).

Between rebuilds the copy is kept current before every pass: structures removed since it was built
are zeroed in it and its ``o``/``down`` biases are copied from the working model.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from gisp.adapters import adapter_for
from gisp.adapters.base import ModelAdapter
from gisp.balance import View
from gisp.compensation import InputMeans
from gisp.errors import GispError
from gisp.slicing import build_sliced_model
from gisp.importance import LayerScores, Scores, StepContext
from gisp.gradients import TaylorImportance
from gisp.masking import feature_mask_hooks, masked_view, zero_structures
from gisp.structures import Masks


@dataclass
class CompactModel:
    """A sliced copy of a masked model and where each of its structures came from.

    ``layers[i]``: the dense layer behind compact layer ``i`` (empty layers are dropped);
    ``heads[i][j]``: the dense query head behind compact head ``j`` (``None``: a zero padding head
    of a regular GQA layout); ``channels[i]``: the dense MLP channels behind compact channels.
    """

    model: nn.Module
    adapter: ModelAdapter
    layers: list[int]
    heads: list[tuple[int | None, ...]]
    channels: list[torch.Tensor]
    masks: Masks  # the masks it was built (or last refreshed) for


def added_bias_modules(model: nn.Module) -> list[str]:
    """Linear modules that carry a bias the stock class does not have (compensation added it)."""
    with torch.device("meta"):
        reference = type(model)(model.config)
    stock = set(reference.state_dict())
    return [key.removesuffix(".bias") for key in model.state_dict() if key.endswith(".bias") and key not in stock]


@torch.no_grad()
def compact(model: nn.Module, adapter: ModelAdapter, masks: Masks) -> CompactModel:
    """A copy of ``model`` (already masked by ``masks``) without its removed structures."""
    device = next(model.parameters()).device
    with torch.device(device):  # built where it runs: no host copy of a GPU model
        pruned, _, sliced = build_sliced_model(model, masks, added_biases=added_bias_modules(model))
    pruned.requires_grad_(False).to(device)
    channels = [masks.channels[i].nonzero()[:, 0] for i in sliced.kept_layers]
    return CompactModel(pruned, adapter_for(pruned.config, pruned_ok=True), list(sliced.kept_layers),
                        list(sliced.head_sources), channels, masks.clone())


@torch.no_grad()
def refresh(target: CompactModel, model: nn.Module, adapter: ModelAdapter, masks: Masks) -> None:
    """Bring ``target`` to ``masks`` (a subset of the masks it holds): zero the structures removed
    since, and copy the working model's ``o``/``down`` biases (which hold their compensation)."""
    hd = adapter.geometry().head_dim
    full = adapter.all_layer_modules(model)
    for i, mods in enumerate(target.adapter.all_layer_modules(target.model)):
        layer = target.layers[i]
        gone = [j for j, h in enumerate(target.heads[i]) if h is not None and not bool(masks.heads[layer, h])]
        head_rows = torch.zeros(len(target.heads[i]) * hd, dtype=torch.bool)
        for j in gone:
            head_rows[j * hd:(j + 1) * hd] = True
        zero_structures(mods, head_rows, ~masks.channels[layer][target.channels[i]])
        for role in ("o", "down"):
            source, copy = getattr(full[layer], role), getattr(mods, role)
            if source.bias is not None:
                if copy.bias is None:
                    copy.bias = nn.Parameter(torch.zeros_like(source.bias), requires_grad=False)
                copy.bias.copy_(source.bias)
    target.masks = masks.clone()


def expand(scores: LayerScores, target: CompactModel, masks: Masks, head_dim: int) -> Scores:
    """Scores of the compact model at the dense model's indices: removed structures score 0, and
    the input means of removed features (which meet only zero columns) are 0."""
    num_layers, num_heads = masks.heads.shape
    heads = torch.zeros(num_layers, num_heads)
    channels = torch.zeros(masks.channels.shape)
    means = None
    if scores.attention_means is not None:
        means = InputMeans(torch.zeros(num_layers, num_heads * head_dim), torch.zeros(masks.channels.shape))
    for i, layer in enumerate(target.layers):
        for j, h in enumerate(target.heads[i]):
            if h is None:  # a padding head of the compact layout: no dense head behind it
                continue
            heads[layer, h] = scores.heads[i][j]
            if means is not None:
                means.attention[layer, h * head_dim:(h + 1) * head_dim] = scores.attention_means[i][j * head_dim:(j + 1) * head_dim]
        channels[layer, target.channels[i]] = scores.channels[i].float()
        if means is not None:
            means.mlp[layer, target.channels[i]] = scores.mlp_means[i].float()
    return Scores(heads, channels, scores.loss, input_means=means)


@contextmanager
def compact_view(target: CompactModel, masks: Masks, means: InputMeans | None = None) -> Iterator[nn.Module]:
    """The compact model as if ``masks`` (a subset of the masks it holds) were applied, with
    removed features fed their ``means`` (:func:`gisp.masking.masked_view` at compact indices);
    hooks removed on exit."""
    hd = target.adapter.geometry().head_dim
    device = next(target.model.parameters()).device
    handles = []
    for i, layer_module in enumerate(target.adapter.layers(target.model)):
        layer, heads, channels = target.layers[i], target.heads[i], target.channels[i]
        keep = torch.tensor([h is None or bool(masks.heads[layer, h]) for h in heads]).repeat_interleave(hd)  # [H_c*hd]
        fills = (None, None)
        if means is not None:  # a padding head's input meets a zero o column: its fill is 0
            zero = torch.zeros(hd)
            fills = (torch.cat([zero if h is None else means.attention[layer, h * hd:(h + 1) * hd] for h in heads]).to(device),
                     means.mlp[layer, channels].to(device))
        handles += feature_mask_hooks(target.adapter, layer_module, keep.to(device),
                                      masks.channels[layer, channels].to(device), *fills)
    try:
        yield target.model
    finally:
        for handle in handles:
            handle.remove()


class CompactedImportance:
    """An importance that scores a compacted copy of the model, rebuilt every ``every`` steps
    (kept current in between), and returns scores at the dense model's indices."""

    def __init__(self, inner, every: int) -> None:
        if not (isinstance(inner, TaylorImportance) and inner.weights == "output" and inner.aggregate == "head"):
            raise GispError("--compact-every applies to gradient scoring of o/down columns per head (--taylor-weights "
                            "output); this importance scores the whole model another way")
        self.inner, self.every = inner, every
        self.current: CompactModel | None = None
        self.built_at = 0

    def __call__(self, model: nn.Module, adapter: ModelAdapter, context: StepContext) -> Scores:
        if bool(context.masks.heads.all()) and bool(context.masks.channels.all()):  # nothing to slice out yet
            return self.inner(model, adapter, context)
        if self.current is None or context.step - self.built_at >= self.every:
            self.current = None  # the old copy's memory goes before the new one is built
            self.current = compact(model, adapter, context.masks)
            self.built_at = context.step
        else:  # idempotent: zeroing what is gone and copying two biases a layer
            refresh(self.current, model, adapter, context.masks)
        scores = self.inner.layer_scores(self.current.model, self.current.adapter).cpu()
        return expand(scores, self.current, context.masks, adapter.geometry().head_dim)

    def view(self, model: nn.Module, adapter: ModelAdapter) -> View:
        """Where this step's candidate masks are measured (:func:`gisp.balance.choose`): the
        compact copy scored this step when there is one, else ``model`` under hooks."""
        current = self.current

        def measure(masks: Masks, means: InputMeans | None):
            if current is None or not masks.is_subset_of(current.masks):
                return masked_view(model, adapter, masks, means)
            return compact_view(current, masks, means)
        return measure
