"""The Taylor gradient pass: :class:`TaylorImportance` and the hooks it runs under.

:class:`TaylorImportance` averages the objective's gradient over the whole calibration set in
float32 (gradients are taken only for the seven prunable projections, not embeddings or lm_head),
then sums ``|W * g|`` per structure with :mod:`gisp.saliency`: per query head (GISP) or per
coupled KV group (LLM-Pruner). With ``saliency="fisher"`` (GISP's default) no weight gradient is
taken: the backward pass collects per-token moments of ``o_proj`` / ``down_proj`` inputs and their
gradients, and each head / channel scores the squared per-token loss change of its removal,
summed over tokens.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from gisp import distributed, saliency
from gisp.adapters.base import ModelAdapter, parameter_rows
from gisp.batches import batch_size, to_device, token_mask, token_samples
from gisp.importance import LayerScores, Scores, StepContext
from gisp.objectives import Objective, lm_loss
from gisp.runtime import progress_bar
from gisp.statistics import CompensationStats, compensation_hooks

PROJECTIONS = ("q", "k", "v", "o", "gate", "up", "down")


@dataclass
class TaylorImportance:
    """``|W * dL/dW|`` summed per structure, ``dL/dW`` averaged over all calibration batches.

    Each micro-batch's loss is weighted by its share of the sequences, so the accumulated gradient
    is the calibration-set mean regardless of how it is split. ``aggregate``: ``"head"`` scores
    each query head, as GISP; ``"kv-group"`` scores each KV group and gives that score to each of
    its query heads, as LLM-Pruner's coupled groups. ``weights``: which weights a score sums:

    - ``"all"`` (the GISP reference, LLM-Pruner): a head's q rows and o columns (K/V rows too under
      multi-head attention; a KV group all its q/k/v rows and o columns), a channel's gate and up
      rows and down column;
    - ``"output"``: only the weights whose removal removes the structure's output, a head's
      ``o_proj`` columns and a channel's ``down_proj`` column. Gradients are then taken for
      ``o_proj`` and ``down_proj`` only.

    ``compensate`` (with ``"output"``): score each column as a removal whose mean input becomes a
    bias (:func:`gisp.saliency.compensated_saliency`), and return the input means the driver
    compensates with; the output gradients and means come from the same gradient pass.
    ``saliency`` (with ``"output"``): ``"first-order"`` sums ``|W * g|`` of the mean gradient;
    ``"fisher"`` scores each head / channel by the sum over tokens of its squared per-token
    first-order effect (:func:`gisp.saliency.fisher_scores`), from the same gradient pass.
    """

    batches: list[dict]
    objective: Objective = lm_loss
    progress: bool = True
    description: str = "gradients"
    aggregate: Literal["head", "kv-group"] = "head"
    weights: Literal["all", "output"] = "all"
    compensate: bool = False
    saliency: Literal["first-order", "fisher"] = "first-order"
    checkpointing: bool = False

    def __post_init__(self) -> None:
        saliency.check_columns(self.weights, self.saliency, self.compensate)  # the rule --taylor-weights obeys

    def average_gradients(self, model: nn.Module, weights: list[nn.Parameter],
                          comp: CompensationStats | None = None) -> tuple[list[torch.Tensor], float]:
        """Mean gradient of the objective for ``weights`` (float32) and the mean loss; ``comp``
        (hooks registered) is told each batch's token mask and share. With no ``weights`` the
        backward pass only feeds the hooks (Fisher scores) and no weight gradient is computed."""
        device = next(model.parameters()).device
        total = sum(batch_size(b) for b in self.batches)
        sharded = any(distributed.is_sharded(w) for w in weights)
        # FSDP: each backward's gradient is reduce-scattered into .grad of the rows each rank holds
        grads = [torch.zeros_like(distributed.local_rows(w)[0] if sharded else w, dtype=torch.float32) for w in weights]
        for w in weights if sharded else ():
            w.grad = None
        loss_sum = 0.0
        mine = distributed.shard(self.batches)  # every batch when alone; else every N-th, summed below
        for batch in progress_bar(mine, desc=self.description, enabled=self.progress, leave=False):
            share = batch_size(batch) / total
            batch = to_device(batch, device)
            if comp is not None:
                # under FSDP the loss itself carries the share (gradients accumulate in .grad), so the hooks must not
                comp.valid[0], comp.share[0] = token_mask(batch), 1.0 if sharded else share
                comp.samples[0] = token_samples(batch)
            loss = self.objective(model, batch)
            with replaying(comp):
                if weights and not sharded:
                    for acc, g in zip(grads, torch.autograd.grad(loss, weights)):
                        acc.add_(g.float(), alpha=share)
                else:  # hooks only (Fisher), or FSDP, whose gradients exist only as .grad of the shards
                    (loss * share if sharded else loss).backward()
                    for acc, w in zip(grads, weights if sharded else ()):  # summed in float32, not the weights' dtype
                        acc.add_(distributed.local_rows(w.grad)[0].float())
                        w.grad = None
            loss_sum += float(loss.detach()) * share
        if sharded:  # this rank's rows of the mean gradient: FSDP averaged the ranks' gradients
            for acc in grads:
                acc.mul_(distributed.world_size())
        else:
            distributed.all_reduce_sum(grads)  # float32, as accumulated
        if comp is not None:
            comp.all_reduce()
        return grads, distributed.sum_float(loss_sum)

    def __call__(self, model: nn.Module, adapter: ModelAdapter, context: StepContext | None = None) -> Scores:
        return self.layer_scores(model, adapter).stacked()

    def layer_scores(self, model: nn.Module, adapter: ModelAdapter) -> LayerScores:
        """The scores of every layer of ``model``, which may differ in size (a compacted model)."""

        geo = adapter.geometry()
        layers = adapter.all_layer_modules(model)
        fisher = self.saliency == "fisher"
        roles = () if fisher else PROJECTIONS if self.weights == "all" else ("o", "down")
        roles = tuple(r for r in roles if getattr(layers[0], r) is not None)  # a non-gated MLP has no gate
        # Gradients are taken of whole parameters (a fused qkv_proj once), then cut per role.
        places = [parameter_rows(getattr(mods, r)) for mods in layers for r in roles]
        weights = list({id(p): p for p, _ in places}.values())
        flags = [p.requires_grad for p in model.parameters()]
        try:
            for p in model.parameters():
                p.requires_grad_(False)
            for w in weights:
                w.requires_grad_(True)
            hooks = compensation_hooks(model, adapter, fisher, self.checkpointing) if self.compensate or fisher else nullcontext()
            root = differentiable_embeddings(model) if fisher else nullcontext()
            saving = gradient_checkpointing(model, adapter) if self.checkpointing else nullcontext()
            with torch.enable_grad(), hooks as comp, root, saving:
                full, loss = self.average_gradients(model, weights, comp)
        finally:
            for p, flag in zip(model.parameters(), flags):
                p.requires_grad_(flag)
        means = ([st.attention.mean for st in comp.inputs], [st.mlp.mean for st in comp.inputs]) if self.compensate else None
        if fisher:
            return self._fisher(comp, means, geo, loss)
        heads, channels = [], []
        n = len(roles)
        with torch.no_grad():  # scores hold no autograd graph
            by_param = {id(p): g for p, g in zip(weights, full)}
            # under FSDP the rows this rank holds (and their gradient), else the whole parameter
            held = [distributed.local_rows(p) for p, _ in places]
            # [rows of role, in] alone; under FSDP the parameter's held rows, cut per role below
            weights = [local if distributed.is_sharded(p) else local[rows] for (local, _), (p, rows) in zip(held, places)]
            grads = [by_param[id(p)] if distributed.is_sharded(p) else by_param[id(p)][rows] for p, rows in places]
            for i in range(len(layers)):
                if comp is None:
                    sal = {r: self._role_saliency(r, places[n * i + j], held[n * i + j], weights[n * i + j], grads[n * i + j])
                           for j, r in enumerate(roles)}
                else:  # o / down columns scored as removals that keep their mean (roles are o, down)
                    o_grad, down_grad = (_held_rows(g, held[n * i + j]) for j, g in enumerate((comp.o_grad[i], comp.down_grad[i])))
                    on = weights[n * i].device  # means are kept on the CPU (the trajectory's copy)
                    sal = {"o": saliency.compensated_saliency(weights[n * i], grads[n * i], o_grad, means[0][i].to(on)),
                           "down": saliency.compensated_saliency(weights[n * i + 1], grads[n * i + 1], down_grad,
                                                                 means[1][i].to(on))}
                heads.append(self._heads(sal, geo))
                channels.append(saliency.output_channel_scores(sal["down"]) if self.weights == "output"
                                else saliency.channel_scores(sal.get("gate"), sal["up"], sal["down"]))
            if any(distributed.is_sharded(p) for p, _ in places):  # each rank summed its rows of every column
                distributed.all_reduce_sum(heads + channels)
        return LayerScores(heads, channels, loss, *(means or (None, None)))

    @staticmethod
    def _role_saliency(role: str, place: tuple[nn.Parameter, slice], held: tuple[torch.Tensor, int],
                       weight: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
        """``|W * g|`` of one role's weights, in the role's own rows.

        Alone, the role's whole matrix. Under FSDP a rank holds rows ``[start, start + n)`` of the
        parameter: o / down (whose *columns* are heads and channels) keep those rows, and every
        column sum is this rank's part; a row role (q k v gate up, maybe a slice of a fused
        parameter) becomes its held rows' sums placed at their rows ([rows of role, 1], zero where
        another rank holds the row), so that the same head and channel sums, all-reduced, are the
        whole model's.
        """
        if role in ("o", "down") or not distributed.is_sharded(place[0]):
            return saliency.weight_saliency(weight, grad)
        param, rows = place
        start = held[1]  # weight and grad are the rows this rank holds, from parameter row ``start``
        first, stop, _ = rows.indices(param.shape[0])  # the role's rows of the (fused) parameter
        lo, hi = max(first, start), min(stop, start + weight.shape[0])  # the part this rank holds
        out = torch.zeros(stop - first, 1, device=weight.device)
        if hi > lo:
            sal = saliency.weight_saliency(weight[lo - start:hi - start], grad[lo - start:hi - start])
            out[lo - first:hi - first, 0] = sal.sum(1)  # [held rows, in] -> [held rows]
        return out

    def _fisher(self, comp: CompensationStats, means: tuple[list, list] | None, geo, loss: float) -> LayerScores:
        """Fisher scores of every head and channel from the hooks' moments (zero-mean removal
        when not compensating)."""
        heads, channels = [], []
        for i in range(len(comp.o_moments)):
            on = comp.o_moments[i][0].device  # means are kept on the CPU (the trajectory's copy)
            head = saliency.fisher_scores(*comp.o_moments[i], None if means is None else means[0][i].to(on))
            if self.aggregate == "kv-group":  # [H] -> [KV] -> [H]: each head carries its group's sum
                head = head.reshape(geo.num_kv_heads, geo.group_size).sum(1).repeat_interleave(geo.group_size)
            heads.append(head)
            channels.append(saliency.fisher_scores(*comp.down_moments[i], None if means is None else means[1][i].to(on)))
        return LayerScores(heads, channels, loss, *(means or (None, None)))

    def _heads(self, sal: dict[str, torch.Tensor], geo) -> torch.Tensor:
        if self.weights == "output":
            heads = saliency.output_head_scores(sal["o"], geo.head_dim)
            if self.aggregate == "kv-group":  # [H] -> [KV] -> [H]: each head carries its group's sum
                heads = heads.reshape(geo.num_kv_heads, geo.group_size).sum(1).repeat_interleave(geo.group_size)
            return heads
        if self.aggregate == "kv-group":
            groups = saliency.kv_group_scores(sal["q"], sal["k"], sal["v"], sal["o"], geo.head_dim, geo.group_size)
            return groups.repeat_interleave(geo.group_size)  # [KV] -> [H]: each head carries its group's score
        mha = geo.num_kv_heads == geo.num_heads
        return saliency.head_scores(sal["q"], sal["o"], geo.head_dim,
                                    k=sal["k"] if mha else None, v=sal["v"] if mha else None)

    def mean_loss(self, model: nn.Module) -> float:
        """The objective's mean over the calibration set, forward only."""
        return mean_objective(model, self.batches, self.objective)


def _held_rows(output_grad: torch.Tensor, held: tuple[torch.Tensor, int]) -> torch.Tensor:
    """The entries of an output projection's output gradient ([d]) for the weight rows this rank
    holds (all of them unless FSDP split the weight)."""
    local, start = held
    return output_grad[start:start + local.shape[0]]


@contextmanager
def replaying(comp: CompensationStats | None) -> Iterator[None]:
    """Mark the backward pass, in which gradient-checkpointed layers re-run their forward: the
    hooks must not count those inputs twice."""
    if comp is None:
        yield
        return
    comp.replaying[0] = True
    try:
        yield
    finally:
        comp.replaying[0] = False
        comp.replayed.clear()


@contextmanager
def gradient_checkpointing(model: nn.Module, adapter: ModelAdapter) -> Iterator[None]:
    """Checkpoint every decoder layer for the block (transformers' own mechanism, non-reentrant):
    a layer's activations are recomputed in the backward pass instead of kept, so a gradient pass
    holds one layer's activations rather than all of them. Same gradients.

    transformers checkpoints a layer only while that layer module is in training mode; only the
    layer objects are flagged (their children, dropout included, stay in eval mode), and every
    flag is restored on exit."""
    layers = adapter.layers(model)
    if model.is_activation_checkpointing:  # the caller's setting stands
        yield
        return
    training = [layer.training for layer in layers]
    model.activation_checkpointing_enable({"use_reentrant": False})
    for layer in layers:
        layer.training = True  # the layer itself only: not .train(), which would reach its children
    try:
        yield
    finally:
        for layer, flag in zip(layers, training):
            layer.training = flag
        model.activation_checkpointing_disable()
        if getattr(model, "_require_grads_hook", None) is not None:  # enable() hooked the embeddings; unhook
            model.disable_input_require_grads()


@contextmanager
def differentiable_embeddings(model: nn.Module) -> Iterator[None]:
    """Make the input embeddings a leaf that requires grad, so a backward pass reaches every
    layer's activations while no weight requires grad (activation gradients only, as the Fisher
    scores need: no weight-gradient matmuls). The hook is removed on exit."""
    handle = model.get_input_embeddings().register_forward_hook(lambda m, args, out: out.detach().requires_grad_())
    try:
        yield
    finally:
        handle.remove()


@torch.no_grad()
def mean_objective(model: nn.Module, batches: list[dict], objective: Objective = lm_loss) -> float:
    """Mean objective over the calibration batches, weighted by sequences (forward only; under
    ``torchrun`` each rank runs its share)."""
    device = next(model.parameters()).device
    total = sum(batch_size(b) for b in batches)
    mine = distributed.shard(batches, empty_ok=True)  # data-parallel: this rank's batches (maybe none), summed over ranks
    return distributed.sum_float(sum(float(objective(model, to_device(b, device))) * batch_size(b) / total for b in mine))
