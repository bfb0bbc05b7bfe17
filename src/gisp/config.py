"""Run configuration: one dataclass shared by the Python API and the CLI."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any

from gisp.device import check_spec
from gisp.errors import GispError, check_choice, check_positive
from gisp.methods import DEFAULT_METHOD

OBJECTIVE_NAMES = ("lm", "answer", "margin")


#: ``--normalize search`` measures candidates on every fourth calibration batch: a quarter of a
#: forward pass each. Measuring on all of them did not change the margin's held-out accuracy on PIQA
#: (``benchmarks/margin_search.py``, ``docs/results/history.md``), so no objective overrides it.
DEFAULT_SEARCH_EVERY = 4


@dataclass
class PruneConfig:
    """Everything that determines a pruning run (and so its trajectory).

    ``samples`` counts windows (``lm``), examples (``answer``) or questions (``margin``);
    ``max_tokens``, when set, budgets calibration by tokens instead.
    ``sparsity`` is the final *parameter* sparsity of the decoder layers' seven projections
    (weights and biases), counted as the exported model holds them. ``method`` names a registered
    pruning method (:mod:`gisp.methods`); ``steps``, ``normalize`` and ``scope`` left at ``None``
    take that method's defaults (``gisp``: 8 steps, ``search``, global; the baselines: one
    shot). ``scope`` overrides how scores are ranked (``global``, ``layer``, ``depth``), e.g. GISP's
    scores ranked within each layer, to separate what a method scores from how it ranks.
    ``taylor_weights`` (Taylor methods): which weights a structure's score sums, ``all`` (a head's
    q rows and o columns, a channel's gate/up rows and down column) or ``output`` (o columns /
    down column only). ``compensate``: removed ``o_proj`` / ``down_proj`` inputs are replaced by
    their calibration mean, carried as an output bias (FLAP's bias compensation; for ``gisp`` the
    Taylor scores then measure the compensated removal); ``None`` takes the method's default.
    ``search_every`` (``normalize="search"`` only): the rate search measures its candidates on every
    K-th calibration batch; ``None`` takes :data:`DEFAULT_SEARCH_EVERY`.
    ``saliency`` (Taylor methods with ``output`` weights): ``first-order`` (``|W * g|`` of the mean
    gradient) or ``fisher`` (per-token squared first-order effects, summed).
    ``gradient_checkpointing`` and ``loss_chunk`` (positions of next-token cross-entropy taken at a
    time, 0 = all) trade time for memory in gradient passes without changing what is computed;
    ``compact_every`` (K > 0) scores a copy of the model with the removed structures sliced out,
    rebuilt every K steps (:mod:`gisp.compaction`), trading a copy's memory for time. ``fsdp``
    (under ``torchrun``) shards every parameter over the ranks (:mod:`gisp.distributed`).
    ``device``: where the model, batches and every per-step tensor live (``auto``: CUDA when
    available; :mod:`gisp.device`); a ``torch.device`` is accepted and kept as its name. These five
    are the only settings a run may resume with changed (so a run scored on a GPU can go on on a CPU,
    and one that ran out of memory can go on with checkpointing or a loss chunk).
    """

    model: str
    data: str
    method: str = DEFAULT_METHOD
    objective: str = "lm"
    sparsity: float = 0.5
    steps: int | None = None
    schedule: str = "linear"
    samples: int = 64
    seq_len: int = 128
    batch_size: int = 8
    seed: int = 0
    max_tokens: int | None = None
    prompt_field: str = "prompt"
    answer_field: str = "answer"
    chat_template: bool = False
    normalize: str | None = None
    search_every: int | None = None
    scope: str | None = None
    taylor_weights: str | None = None
    compensate: bool | None = None
    saliency: str | None = None
    protect_first: float = 0.1
    protect_last: int = 1
    dtype: str = "float32"
    round_to: int = 1
    gradient_checkpointing: bool = False
    loss_chunk: int = 0
    compact_every: int = 0
    fsdp: bool = False
    device: str = "auto"

    # How the work is done, not what it computes: a run may resume with other values.
    EXECUTION = ("gradient_checkpointing", "loss_chunk", "compact_every", "fsdp", "device")

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Reject out-of-range values with a one-line message; fill method defaults."""
        from gisp.methods import method_for  # the registry imports the importances (and torch)
        from gisp.saliency import NORMALIZATIONS
        from gisp.schedule import SCHEDULES

        self.device = check_spec(str(self.device))  # a torch.device becomes its name: configs are JSON
        method_for(self.method).validate(self)  # every rule that depends on the method
        check_search_every(self)
        if not 0.0 < self.sparsity < 1.0:
            raise GispError(f"sparsity must be in (0, 1), got {self.sparsity:g}")
        check_positive(self, ("steps", "samples", "seq_len", "batch_size", "round_to"))
        if self.compact_every < 0:
            raise GispError(f"compact-every must be >= 0 (0: never), got {self.compact_every}")
        check_sharding(self.fsdp, self.compact_every)
        if self.loss_chunk < 0:
            raise GispError(f"loss-chunk must be >= 0 (0: the whole sequence at once), got {self.loss_chunk}")
        if self.max_tokens is not None and self.max_tokens < self.seq_len and self.objective == "lm":
            raise GispError(f"max-tokens {self.max_tokens} is less than one window of {self.seq_len} tokens")
        if self.max_tokens is not None and self.max_tokens < 1:
            raise GispError(f"max-tokens must be positive, got {self.max_tokens}")
        if self.seq_len < 2:
            raise GispError("seq-len must be at least 2 (one predicted token)")
        if not 0.0 <= self.protect_first < 1.0:
            raise GispError(f"protect-first is a fraction of layers in [0, 1), got {self.protect_first:g}")
        if self.protect_last < 0:
            raise GispError(f"protect-last must be >= 0, got {self.protect_last}")
        check_choice("objective", self.objective, OBJECTIVE_NAMES)
        check_chat_template(self.chat_template, self.objective)
        check_choice("schedule", self.schedule, SCHEDULES)
        check_choice("normalize", self.normalize, NORMALIZATIONS)
        check_choice("dtype", self.dtype, ("float32", "bfloat16", "float16"))

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> PruneConfig:
        """Build from a dict, refusing keys this version does not know."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise GispError(f"unknown config keys: {', '.join(unknown)}")
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def trajectory_keys(self) -> dict[str, Any]:
        """The settings a resumed run must share with the run it continues."""
        return {k: v for k, v in self.to_dict().items() if k != "model" and k not in self.EXECUTION}


def check_search_every(config: PruneConfig) -> None:
    """``search_every`` belongs to the rate search: filled with :data:`DEFAULT_SEARCH_EVERY` there,
    refused elsewhere (it would be recorded in the run as if it had changed something)."""
    if config.normalize != "search":
        if config.search_every is not None:
            raise GispError(f"--search-every applies to --normalize search, not --normalize {config.normalize}")
        return
    if config.search_every is None:
        config.search_every = DEFAULT_SEARCH_EVERY
    check_positive(config, ("search_every",))


def check_chat_template(chat_template: bool, objective: str) -> None:
    """``chat_template`` renders prompt/answer pairs as chat turns: only the answer objective has them."""
    if chat_template and objective != "answer":
        raise GispError(f"--chat-template renders prompt/answer data (--objective answer), not --objective {objective}")


RECOVERY_METHODS = ("lora", "distill")


@dataclass
class RecoverConfig:
    """A recovery run (``gisp recover`` / ``gisp.recover``): fine-tune the export ``model`` on
    ``data`` (the same specs as ``prune``; keep evaluation data out) and write ``out``.

    ``method``: ``lora`` (the data's objective) or ``distill`` (KL to ``teacher``'s next-token
    distribution, default the export's base model, plus ``lm_weight`` times the objective). Both
    train LoRA adapters (``lora_rank``, ``lora_alpha``, ``lora_targets``: ``all-linear`` or
    comma-separated module names), merged at the end. ``max_tokens`` training tokens (the data
    is cycled), ``batch_size`` sequences per micro-batch, ``grad_accum`` micro-batches per step,
    peak ``lr`` after a linear ``warmup`` (fraction of steps) then cosine decay to a tenth; a
    checkpoint every ``checkpoint_every`` steps.
    """

    model: str
    data: str
    out: str
    method: str = "lora"
    teacher: str | None = None
    objective: str = "lm"
    max_tokens: int = 100_000
    seq_len: int = 128
    batch_size: int = 8
    grad_accum: int = 1
    lr: float = 5e-4
    warmup: float = 0.05
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    lora_rank: int = 16
    lora_alpha: float = 32.0
    lora_targets: str = "all-linear"
    kd_weight: float = 1.0
    lm_weight: float = 0.0
    temperature: float = 1.0
    chat_template: bool = False
    checkpoint_every: int = 20
    seed: int = 0
    dtype: str = "float32"
    device: str = "cpu"

    def __post_init__(self) -> None:
        check_choice("method", self.method, RECOVERY_METHODS)
        check_choice("objective", self.objective, OBJECTIVE_NAMES)
        check_chat_template(self.chat_template, self.objective)
        check_choice("dtype", self.dtype, ("float32", "bfloat16", "float16"))
        check_positive(self, ("max_tokens", "seq_len", "batch_size", "grad_accum", "lora_rank", "checkpoint_every"))
        if self.seq_len < 2:
            raise GispError("seq-len must be at least 2 (one predicted token)")
        if not self.lr > 0 or not 0 <= self.warmup < 1:
            raise GispError(f"lr must be > 0 and warmup in [0, 1), got {self.lr:g} and {self.warmup:g}")
        for name in ("lr", "warmup", "weight_decay", "max_grad_norm", "lora_alpha", "kd_weight", "lm_weight", "temperature"):
            if not math.isfinite(getattr(self, name)):
                raise GispError(f"{name.replace('_', '-')} must be a finite number, got {getattr(self, name)}")
        if self.lora_alpha <= 0 or self.max_grad_norm <= 0 or self.weight_decay < 0:
            raise GispError("lora-alpha and max-grad-norm must be > 0 and weight-decay >= 0")
        if self.temperature <= 0 or self.kd_weight < 0 or self.lm_weight < 0:
            raise GispError("temperature must be > 0 and kd-weight, lm-weight >= 0")
        self.device = check_spec(str(self.device))
        if self.method == "lora" and self.teacher is not None:
            raise GispError("--teacher is for --method distill")

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> RecoverConfig:
        """Build from a dict, refusing keys this version does not know."""
        unknown = sorted(set(values) - {f.name for f in fields(cls)})
        if unknown:
            raise GispError(f"unknown config keys: {', '.join(unknown)}")
        return cls(**values)


def check_sharding(fsdp: bool, compact_every: int) -> None:
    """``--fsdp`` with ``--compact-every``: refused (prune and plan alike)."""
    if fsdp and compact_every:
        raise GispError("--fsdp and --compact-every cannot be combined yet: the compact copy would be unsharded")
