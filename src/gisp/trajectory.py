"""The trajectory: the source of truth of a run, and what export replays.

For every head and channel it records the step at which it was removed and its global removal
order (``-1``: never removed). Any prefix of the removal order is a valid nested subnetwork, so one
run yields a checkpoint at any sparsity up to the run's final one.

On disk (a run directory): ``trajectory.safetensors`` (the four int tensors, plus for methods
that compensate the mean input of every removed ``o_proj`` / ``down_proj`` feature) and
``run.json`` (config, base-model identity, per-step records). Both are written to a temporary name
and renamed, ``run.json`` last: a crash leaves the previous complete state.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from gisp.compensation import InputMeans
from gisp.errors import GispError
from gisp.structures import LayerShape, Masks, Structure, dense_layer_params, removal_saving, remove

TRAJECTORY_FILE = "trajectory.safetensors"
RUN_FILE = "run.json"
#: How far a requested level may lie above what a step achieved and still name that step: half the
#: last digit of the 4-decimal figure runs print (``gisp info``, the export line).
LEVEL_TOLERANCE = 5e-5
FORMAT_VERSION = 3
READABLE_VERSIONS = (1, 2, 3)  # 1: before methods and compensation; 3: checksums required, input means covered
_ORDER_TENSORS = ("head_step", "head_order", "channel_step", "channel_order")


@dataclass
class StepRecord:
    """What one step did. ``loss`` is the mean calibration loss of the model at this step's level
    (filled in by the next scoring pass; step 0 is the dense model); ``seconds`` its wall time.
    With ``--normalize search``: the head/channel ``exchange_rate`` chosen and the ``candidates``
    tried: each a look-ahead to the run's final sparsity (its rates, the heads it would have
    removed by then, and its calibration-subset loss). ``processes``: how many shared its scoring
    (torchrun / accelerate; a resumed run may use another number), ``device`` where it ran."""

    step: int
    target_sparsity: float
    sparsity: float
    model_sparsity: float
    heads_removed: int
    channels_removed: int
    loss: float | None = None
    seconds: float | None = None
    exchange_rate: float | None = None
    candidates: list[dict] | None = None
    processes: int | None = None
    device: str | None = None  # where the step was scored (cpu, cuda:0); runs may resume on another


@dataclass
class Trajectory:
    """Removal step and order of every structure, plus per-step records."""

    head_step: torch.Tensor  # [L, H] int32, -1 = kept
    head_order: torch.Tensor  # [L, H] int32, -1 = kept
    channel_step: torch.Tensor  # [L, F] int32
    channel_order: torch.Tensor  # [L, F] int32
    steps: list[StepRecord] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)
    model: dict[str, Any] = field(default_factory=dict)
    input_means: InputMeans | None = None  # compensating methods: mean input of removed features
    calibration: dict[str, Any] = field(default_factory=dict)  # sequences and tokens scored

    @property
    def compensated(self) -> bool:
        """Whether exports of this run carry compensation biases (and their count includes them)."""
        return self.input_means is not None

    @classmethod
    def empty(cls, num_layers: int, num_heads: int, intermediate_size: int, *, compensated: bool = False,
              head_dim: int = 0) -> Trajectory:
        """A run that has removed nothing yet (``compensated``: it records input means)."""
        full = lambda n: torch.full((num_layers, n), -1, dtype=torch.int32)  # noqa: E731
        means = InputMeans.unmeasured(num_layers, num_heads * head_dim, intermediate_size) if compensated else None
        return cls(full(num_heads), full(num_heads), full(intermediate_size), full(intermediate_size), input_means=means)

    @property
    def completed_steps(self) -> int:
        """Number of pruning steps recorded (step 0, the dense record, excluded)."""
        return max((r.step for r in self.steps), default=0)

    @property
    def num_removed(self) -> int:
        return int((self.head_order >= 0).sum() + (self.channel_order >= 0).sum())

    def record(self, step: int, removed: list[Structure], means: InputMeans | None = None, head_dim: int = 0) -> None:
        """Append the structures removed at ``step``, in the order they were chosen, and (for a
        compensated run) the mean input of their ``o_proj`` / ``down_proj`` features."""
        start = self.num_removed
        for offset, s in enumerate(removed):
            steps, order = (self.head_step, self.head_order) if s.kind == "head" else (self.channel_step, self.channel_order)
            steps[s.layer, s.index] = step
            order[s.layer, s.index] = start + offset
        if self.input_means is not None and means is not None:
            heads = (self.head_step == step).repeat_interleave(head_dim, dim=1)  # [L, H] -> [L, H*hd]
            self.input_means.take(means, heads, self.channel_step == step)

    def masks_at_step(self, step: int) -> Masks:
        """Kept masks after ``step`` (0 = dense)."""
        keep = lambda removal: (removal < 0) | (removal > step)  # noqa: E731
        return Masks(keep(self.head_step), keep(self.channel_step))

    def removal_order(self) -> list[Structure]:
        """Every removed structure, in the order the run removed it."""
        items = [(int(o), Structure("head", int(l), int(i))) for (l, i), o in _entries(self.head_order)]
        items += [(int(o), Structure("channel", int(l), int(i))) for (l, i), o in _entries(self.channel_order)]
        return [s for _, s in sorted(items, key=lambda x: x[0])]

    @property
    def is_complete(self) -> bool:
        """True once every configured step has been recorded."""
        return self.completed_steps >= int(self.config.get("steps", 0))

    def reached_sparsity(self) -> float:
        """The highest sparsity a user may export: the run's target once complete, and any level a
        step achieved (with ``round_to`` a step may end a little past its target)."""
        achieved = max((r.sparsity for r in self.steps), default=0.0)
        if self.is_complete and "sparsity" in self.config:
            return max(float(self.config["sparsity"]), achieved)
        return achieved

    def check_reachable(self, sparsity: float) -> None:
        """Refuse a sparsity this run has not reached (checked before any model is loaded), saying
        whether the run is still short of it or never gets there; a level is matched to the figure
        the run prints for it (:data:`LEVEL_TOLERANCE`)."""
        reached = self.reached_sparsity()
        if 0.0 <= sparsity <= reached + LEVEL_TOLERANCE:
            return
        if not self.is_complete and sparsity <= float(self.config.get("sparsity", 1.0)) + LEVEL_TOLERANCE:
            raise GispError(f"sparsity {sparsity:g} is not saved yet: this run has finished {self.completed_steps} of "
                            f"{self.config.get('steps')} steps, up to {reached:.4f} (it is running, or was stopped: run "
                            "the same gisp prune to finish it); export a level up to that now")
        raise GispError(f"sparsity {sparsity:g} was never reached by this run (it reaches {reached:.4f} "
                        f"after {self.completed_steps} steps)")

    def masks_at_sparsity(self, sparsity: float, shape: LayerShape) -> tuple[Masks, int]:
        """The longest prefix of the removal order whose parameter sparsity does not exceed
        ``sparsity``, and the last step that prefix contains completely.

        At a step's target this is exactly that step's subnetwork: the prefix never runs past the
        first step whose target reaches ``sparsity`` (a compensating run's first removal in a block
        adds a bias, so a later step's removal could otherwise still squeeze into the gap a step
        left); between steps it continues into the next step's removals in the order that step
        chose them.
        """
        self.check_reachable(sparsity)
        if (self.config or {}).get("round_to", 1) > 1:  # only whole steps keep the multiples
            return self._step_level(sparsity)
        masks = Masks.dense(shape.geometry)
        budget = sparsity * dense_layer_params(shape) * shape.geometry.num_layers
        last = next((r.step for r in self.steps if r.step > 0 and r.target_sparsity >= sparsity - 1e-9), self.completed_steps)
        within = int(((self.head_step > 0) & (self.head_step <= last)).sum() + ((self.channel_step > 0) & (self.channel_step <= last)).sum())
        removed = 0
        for s in self.removal_order()[:within]:
            saving = removal_saving(s, masks, shape)
            if removed + saving > budget + 1e-6:
                break
            remove(s, masks)
            removed += saving
        step = max(
            (r.step for r in self.steps if masks.is_subset_of(self.masks_at_step(r.step))), default=0
        )
        return masks, step

    def _step_level(self, sparsity: float) -> tuple[Masks, int]:
        """The last step whose achieved sparsity does not exceed ``sparsity`` (runs with
        ``round_to`` > 1, whose levels are whole steps)."""
        # a step's level is asked for by the figure printed for what it achieved, or by its target exactly
        steps = [r for r in self.steps if r.step > 0 and (r.sparsity <= sparsity + LEVEL_TOLERANCE
                                                          or abs(r.target_sparsity - sparsity) <= LEVEL_TOLERANCE)]
        if not steps:
            first = min((r.sparsity for r in self.steps if r.step > 0), default=0.0)
            raise GispError(f"with round_to {self.config['round_to']} levels are whole steps; the first reaches "
                            f"{first:.4f}, above {sparsity:g}")
        step = max(r.step for r in steps)
        return self.masks_at_step(step), step

    # --- persistence -------------------------------------------------------------------------

    def save(self, run_dir: str | Path) -> None:
        """Write both files atomically (tensors first, then ``run.json``)."""
        run_dir = Path(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        tensors = {name: getattr(self, name) for name in _ORDER_TENSORS}
        if self.input_means is not None:
            tensors |= {"attention_input_mean": self.input_means.attention, "mlp_input_mean": self.input_means.mlp}
        _atomic(run_dir / TRAJECTORY_FILE, lambda p: save_file({k: v.contiguous() for k, v in tensors.items()}, p))
        meta = {
            "format_version": FORMAT_VERSION,
            "completed_steps": self.completed_steps,
            "config": self.config,
            "model": self.model,
            "calibration": self.calibration,
            "steps": [asdict(r) for r in self.steps],
            "order_sha256": order_checksum(_up_to({name: getattr(self, name).clone() for name in _ORDER_TENSORS},
                                                  self.completed_steps)),
        }
        if self.input_means is not None:
            meta["means_sha256"] = means_checksum(_up_to({k: v.clone() for k, v in tensors.items()}, self.completed_steps))
        meta["sha256"] = _meta_checksum(meta)
        _atomic(run_dir / RUN_FILE, lambda p: Path(p).write_text(json.dumps(meta, indent=2) + "\n"))

    @classmethod
    def load(cls, run_dir: str | Path) -> Trajectory:
        """Read a run directory; structures recorded past ``completed_steps`` are ignored."""
        run_dir = Path(run_dir)
        meta_path, tensor_path = run_dir / RUN_FILE, run_dir / TRAJECTORY_FILE
        if not meta_path.is_file() or not tensor_path.is_file():
            raise GispError(f"{run_dir} is not a gisp run directory (no {RUN_FILE} / {TRAJECTORY_FILE})")
        try:
            meta = json.loads(meta_path.read_text())
            tensors = load_file(str(tensor_path))
        except Exception as exc:  # corrupt files are the user's to fix, not a crash
            raise GispError(f"cannot read run directory {run_dir} ({str(exc).splitlines()[0][:120]}); the files are "
                            "truncated or corrupted: restore them or start a new --out") from exc
        if isinstance(meta, dict) and meta.get("format_version") not in READABLE_VERSIONS:
            raise GispError(f"{run_dir}: unsupported run format {meta.get('format_version')!r}")
        _check_record(meta, meta_path)
        version = meta["format_version"]
        required = ["sha256", "order_sha256"] + (["means_sha256"] if "attention_input_mean" in tensors else [])
        missing = [key for key in required if key not in meta] if version >= 3 else []
        if missing:
            raise GispError(f"{meta_path} has no {', '.join(missing)} (edited or corrupted); restore it or start a new --out")
        if "sha256" in meta and meta["sha256"] != _meta_checksum(meta):
            raise GispError(f"{meta_path} does not match its checksum (edited or corrupted); restore it or start a new --out")
        tensors = _up_to(tensors, int(meta["completed_steps"]))
        done = int(meta["completed_steps"])
        if "order_sha256" in meta and meta["order_sha256"] != order_checksum(tensors):
            raise GispError(f"{tensor_path} does not match the checksum in {RUN_FILE} (corrupted); restore it or "
                            "start a new --out")
        if "means_sha256" in meta and ("attention_input_mean" not in tensors or meta["means_sha256"] != means_checksum(tensors)):
            raise GispError(f"{tensor_path}'s input means do not match the checksum in {RUN_FILE} (corrupted); "
                            "restore it or start a new --out")
        means = None
        if "attention_input_mean" in tensors:
            means = InputMeans(tensors["attention_input_mean"], tensors["mlp_input_mean"])
        return cls(
            *(tensors[name] for name in _ORDER_TENSORS),
            steps=[StepRecord(**r) for r in meta["steps"] if r["step"] <= done],
            config=meta["config"], model=meta["model"], input_means=means, calibration=meta.get("calibration", {}),
        )


_NUMBER = (int, float)
#: run.json's fields and the JSON types each may hold (steps are checked against StepRecord's fields).
_RECORD = {"format_version": int, "completed_steps": int, "steps": list, "config": dict, "model": dict,
           "calibration": dict, "sha256": str, "order_sha256": str, "means_sha256": str}
_STEP = {"step": int, "target_sparsity": _NUMBER, "sparsity": _NUMBER, "model_sparsity": _NUMBER, "heads_removed": int,
         "channels_removed": int, "loss": _NUMBER, "seconds": _NUMBER, "exchange_rate": _NUMBER, "candidates": list,
         "processes": int, "device": str}


def _check_record(meta, path: Path) -> None:
    """run.json must have the shape :meth:`Trajectory.save` writes (valid JSON of the wrong shape,
    e.g. a field set to null, is refused like a corrupted file, by every command that reads it)."""
    def refuse(what: str) -> None:
        raise GispError(f"{path} is not a gisp run record ({what}); the files are truncated or corrupted: restore "
                        "them or start a new --out")
    if not isinstance(meta, dict):
        refuse(f"a JSON {type(meta).__name__}, not an object")
    for key in ("format_version", "completed_steps", "steps", "config", "model"):
        if key not in meta:
            refuse(f"no {key!r}")
    for key, kind in _RECORD.items():
        if key in meta and (not isinstance(meta[key], kind) or isinstance(meta[key], bool)):
            refuse(f"{key!r} is {json.dumps(meta[key])[:30]}")
    if meta["completed_steps"] < 0:
        refuse("negative 'completed_steps'")
    fields_ = {f.name for f in fields(StepRecord)}
    for i, record in enumerate(meta["steps"]):
        if not isinstance(record, dict) or "step" not in record or set(record) - fields_:
            refuse(f"step record {i} is not a step record")
        for key, value in record.items():
            optional = key not in ("step", "target_sparsity", "sparsity", "model_sparsity", "heads_removed",
                                   "channels_removed")
            if (value is None and not optional) or (value is not None and (not isinstance(value, _STEP[key])
                                                                          or isinstance(value, bool))):
                refuse(f"step record {i}: {key!r} is {json.dumps(value)[:30]}")


def _entries(order: torch.Tensor):
    idx = (order >= 0).nonzero().tolist()
    return [((l, i), order[l, i]) for l, i in idx]


def _up_to(tensors: dict[str, torch.Tensor], done: int) -> dict[str, torch.Tensor]:
    """Drop (in place) the records of steps after ``done``: what a crash mid-save left ahead
    (removal order, and the input means of structures removed after ``done``, back to NaN)."""
    late_heads, late_channels = tensors["head_step"] > done, tensors["channel_step"] > done
    if "attention_input_mean" in tensors:
        head_dim = tensors["attention_input_mean"].shape[1] // late_heads.shape[1]
        tensors["attention_input_mean"][late_heads.repeat_interleave(head_dim, dim=1)] = float("nan")  # [L, H*hd]
        tensors["mlp_input_mean"][late_channels] = float("nan")
    for name, late in (("head", late_heads), ("channel", late_channels)):
        tensors[f"{name}_step"][late] = -1
        tensors[f"{name}_order"][late] = -1
    return tensors


def order_checksum(tensors: dict[str, torch.Tensor]) -> str:
    """SHA-256 of the removal order (the four order/step tensors) up to the completed steps.

    Computed after dropping records past ``completed_steps``, so a crash between writing the
    tensors and ``run.json`` (tensors a step ahead) still verifies, while corruption does not.
    """
    h = hashlib.sha256()
    for name in _ORDER_TENSORS:
        t = tensors[name].contiguous().to(torch.int64)
        h.update(name.encode() + str(tuple(t.shape)).encode() + t.numpy().tobytes())
    return h.hexdigest()


def means_checksum(tensors: dict[str, torch.Tensor]) -> str:
    """SHA-256 of the recorded input means (compensation) up to the completed steps; NaN (never
    recorded) hashed as a mask, so its bit pattern does not matter."""
    h = hashlib.sha256()
    for name in ("attention_input_mean", "mlp_input_mean"):
        t = tensors[name].contiguous().to(torch.float32)
        nan = torch.isnan(t)
        h.update(name.encode() + str(tuple(t.shape)).encode() + nan.numpy().tobytes()
                 + torch.where(nan, torch.zeros_like(t), t).numpy().tobytes())
    return h.hexdigest()


def _meta_checksum(meta: dict) -> str:
    """SHA-256 of ``run.json``'s content without its own checksum (canonical JSON)."""
    body = {k: v for k, v in meta.items() if k != "sha256"}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def _atomic(path: Path, write) -> None:
    """Write through a temporary file, flushed to disk, then rename over ``path``."""
    tmp = path.with_name(f".{path.name}.tmp")
    write(str(tmp))
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)
