"""Materialise a level of a trajectory as a physically smaller Hugging Face checkpoint.

The export holds ``model.safetensors``, ``config.json``, the tokenizer and ``gisp_export.json``
(provenance). Layers with no head and no channel left (and no output bias) are dropped:
``num_hidden_layers`` shrinks and the remaining layers are renumbered, so layer indices and KV
caches stay consistent. When every remaining layer has the same sizes, no projection gained a
bias, and the stock config accepts them, it is a plain stock checkpoint. Otherwise it carries
``modeling_gisp.py`` (copied from :mod:`gisp.remote`), which subclasses the stock class, reads
transformers' ``per_layer_config`` and adds the biases named in ``added_biases`` (FLAP's
compensation); it loads with ``AutoModelForCausalLM.from_pretrained(DIR, trust_remote_code=True)``
without gisp installed.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from gisp import models
from gisp.adapters import ModelAdapter, adapter_for
from gisp.compensation import compensate
from gisp.errors import GispError
from gisp.masking import apply_masks
from gisp.remote import modeling_gisp
from gisp.structures import (
    LayerShape,
    Masks,
    decoder_params,
    dense_layer_params,
    kv_values_per_token,
    layer_shape,
    model_parameters,
)
from gisp.slicing import build_pruned_model, export_config, sliced_state_dict
from gisp.trajectory import Trajectory

REMOTE_FILE = Path(modeling_gisp.__file__)
EXPORT_INFO = "gisp_export.json"


@dataclass
class ExportInfo:
    """What an export holds, also written to ``gisp_export.json``."""

    out: str
    requested_sparsity: float
    sparsity: float
    step: int
    decoder_parameters: int
    dense_decoder_parameters: int
    parameters: int
    dense_parameters: int
    remote_code: bool
    base_model: dict
    kv_values_per_token: int = 0  # K and V values a token adds to the KV cache (x2 bytes at 16 bits)
    dense_kv_values_per_token: int = 0


def check_out_dir(out: str | Path, force: bool = False) -> Path:
    """Refuse an existing non-empty output directory (nothing gets overwritten), unless ``force``
    and it holds an earlier gisp export, which the new one then replaces atomically."""
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        if not force:
            raise GispError(f"export directory {out} already exists and is not empty (--force replaces an earlier export)")
        if not (out / EXPORT_INFO).is_file():
            raise GispError(f"{out} holds something other than a gisp export; --force only replaces an earlier export")
    return out


@contextmanager
def atomic_dir(out: Path) -> Iterator[Path]:
    """A private temporary sibling of ``out`` to fill; renamed to ``out`` on success, removed on failure.

    ``out`` must not exist, be empty, or be an export to replace (see :func:`check_out_dir`).
    """
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    umask = os.umask(0)
    os.umask(umask)
    tmp.chmod(0o777 & ~umask)  # mkdtemp makes it private; the result is an ordinary directory
    try:
        yield tmp
        old = None
        if out.exists():  # empty, or an earlier export being replaced (--force): moved aside, then removed
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old.", dir=out.parent))
            out.rename(old / "replaced")
        tmp.rename(out)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def save_export(pruned: nn.Module, tokenizer, remote: bool, info: ExportInfo, out: Path) -> None:
    """Write the model, tokenizer, remote code if needed and provenance into ``out``, atomically."""
    with atomic_dir(out) as tmp:
        pruned.save_pretrained(tmp)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        if remote:
            shutil.copyfile(REMOTE_FILE, tmp / REMOTE_FILE.name)
        (tmp / EXPORT_INFO).write_text(json.dumps(asdict(info), indent=2) + "\n")


def save_dense(model: nn.Module, tokenizer, out: Path) -> None:
    """Save an unpruned model (e.g. one dequantised from GGUF) as a plain checkpoint, atomically."""
    with atomic_dir(out) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)


def base_model(traj: Trajectory, model: nn.Module | None = None, tokenizer=None, device: str = "cpu"):
    """The dense model ``traj`` pruned: loaded from its record unless given, verified by fingerprint."""
    if model is None:
        model, tokenizer = models.load(traj.model["spec"], traj.config.get("dtype", "float32"), device)
    if models.fingerprint(model) != traj.model.get("fingerprint"):
        raise GispError(
            f"the model given is not the dense model this run pruned ({traj.model.get('spec')}); "
            "pass the original weights, not a model already pruned in place"
        )
    return model, tokenizer


@torch.no_grad()
def masked_level(run: str | Path | Trajectory, sparsity: float, *, model: nn.Module | None = None,
                 tokenizer=None) -> tuple[nn.Module, object]:
    """The dense base model with the level of ``run`` at ``sparsity`` applied in place: its removed
    heads and channels zeroed and, for a compensating run, the compensation biases added, which is
    the model an export of that level must equal (the check a new family's adapter wants). The
    base model is loaded from the run's record unless ``model`` is given (it is then edited)."""
    traj = run if isinstance(run, Trajectory) else Trajectory.load(run)
    traj.check_reachable(sparsity)
    model, tokenizer = base_model(traj, model, tokenizer)
    adapter = adapter_for(model.config)
    shape = layer_shape(model, adapter, compensate=traj.compensated)
    masks, _ = traj.masks_at_sparsity(sparsity, shape)
    if traj.input_means is not None:  # biases from the dense columns, before they are zeroed
        compensate(model, adapter, Masks.dense(shape.geometry), masks, traj.input_means)
    apply_masks(model, adapter, masks)
    return model.eval(), tokenizer


def export(
    run: str | Path | Trajectory, sparsity: float, out: str | Path, *,
    model: nn.Module | None = None, tokenizer=None, format: str = "hf", outtype: str = "f32", force: bool = False,
) -> ExportInfo:
    """Export the level of ``run`` at ``sparsity`` to ``out`` as a smaller checkpoint.

    ``format="hf"``: a Hugging Face directory; ``"gguf"``: one GGUF file for llama.cpp
    (:mod:`gisp.export_gguf`, ``outtype`` f32, f16 or q8_0). The base model is loaded from the
    run's record unless ``model`` (and ``tokenizer``) are given; either way it must be the model
    the run pruned. ``force`` replaces an earlier export at ``out``.
    """
    traj = run if isinstance(run, Trajectory) else Trajectory.load(run)
    if format not in FORMATS:
        raise GispError(f"unknown --format {format!r}; choose from {', '.join(FORMATS)}")
    out = check_out_dir(out, force) if format == "hf" else check_out_file(out, force)
    if not 0.0 < sparsity < 1.0:
        raise GispError(f"sparsity must be in (0, 1), got {sparsity:g}")
    traj.check_reachable(sparsity)
    if format == "gguf":
        from gisp.export_gguf import OUTTYPES
        if outtype not in OUTTYPES:
            raise GispError(f"unknown --outtype {outtype!r}; choose from {', '.join(OUTTYPES)}")
        check_gguf_family(model.config if model is not None else models.load_config(traj.model["spec"]))
    model, tokenizer = base_model(traj, model, tokenizer)
    adapter = adapter_for(model.config)
    shape = layer_shape(model, adapter, compensate=traj.compensated)
    masks, step = traj.masks_at_sparsity(sparsity, shape)
    pruned, remote = build_pruned_model(model, masks, traj.input_means)
    if not all(bool(torch.isfinite(p).all()) for p in pruned.parameters()):
        raise GispError(f"the level's weights hold NaN or Inf (the base model {traj.model.get('spec')} does, or its "
                        f"compensation means do); nothing was written to {out}")
    info = _info(out, sparsity, step, masks, shape, model, pruned, remote and format == "hf", traj.model)
    if format == "gguf":
        write_gguf_with_tokenizer(pruned, adapter, out, outtype, traj.model.get("spec"), tokenizer)
    else:
        save_export(pruned, tokenizer, remote, info, out)
    return info


FORMATS = ("hf", "gguf")


def check_out_file(out: str | Path, force: bool = False) -> Path:
    """Refuse an existing output file (nothing gets overwritten), unless ``force`` and it is a GGUF
    file, which the new one then replaces atomically."""
    out = Path(out)
    if out.exists():
        if not force:
            raise GispError(f"{out} already exists; choose a new file (--force replaces an earlier GGUF export)")
        if not out.is_file() or out.suffix != ".gguf":
            raise GispError(f"{out} is not a .gguf file; --force only replaces an earlier GGUF export")
    return out


def check_gguf_family(config) -> None:
    """Refuse, before loading weights, a family with no llama.cpp mapping."""
    from gisp.export_gguf import check_gguf_architecture

    check_gguf_architecture(adapter_for(config))


def write_gguf_with_tokenizer(model: nn.Module, adapter: ModelAdapter, out: Path, outtype: str, spec: str | None,
                              tokenizer) -> dict:
    """:func:`gisp.export_gguf.write_gguf` with the source model's tokenizer: the keys of its
    GGUF file when it was loaded from one, else its ``tokenizer.json``."""
    from gisp.export_gguf import write_gguf

    try:
        source = models.resolve(spec) if spec else None
    except GispError:  # the base model moved (export --model): its tokenizer object still serves
        source = None
    if source is not None and source.gguf_file:
        return write_gguf(model, adapter, out, outtype=outtype, tokenizer_source={"gguf": f"{source.location}/{source.gguf_file}"})
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer.save_pretrained(tmp)
        return write_gguf(model, adapter, out, outtype=outtype, tokenizer_source={"dir": tmp})


def _info(out, requested, step, masks, shape: LayerShape, model, pruned, remote, base) -> ExportInfo:
    dense = dense_layer_params(shape) * shape.geometry.num_layers
    kept = decoder_params(masks, shape)
    return ExportInfo(
        out=str(out), requested_sparsity=requested, sparsity=1 - kept / dense, step=step,
        decoder_parameters=kept, dense_decoder_parameters=dense,
        parameters=model_parameters(pruned), dense_parameters=model_parameters(model),
        remote_code=remote, base_model=base, kv_values_per_token=kv_values_per_token(masks, shape),
        dense_kv_values_per_token=kv_values_per_token(Masks.dense(shape.geometry), shape),
    )


class _Unfit(Exception):
    """An adapter that does not describe its model (reported as is)."""


def check_exportable(config) -> None:
    """Refuse, before any weights load, a family gisp cannot prune *and* export exactly.

    Builds the dense model on the meta device (no memory), checks that the adapter finds every
    layer and projection with the shapes the config implies, then slices a non-uniform mask
    (different heads and channels per layer) and builds the export's class from it, comparing
    every tensor's name and shape with the sliced state dict. Raises :class:`GispError` with one
    line naming the family and the first problem.
    """

    adapter = adapter_for(config)
    what = f"gisp cannot prune and export {adapter.name!r} models (adapter {type(adapter).__name__})"
    try:
        with torch.device("meta"):
            model = models.model_from_config(config)
        _check_projections(model, adapter)
        masks = _probe_masks(adapter.geometry(), adapter.prunable_heads)
        sliced = sliced_state_dict(model, adapter, masks)
        built, remote = export_config(model.config, adapter, sliced, adapter.export_classes(model))
        with torch.device("meta"):
            pruned = (modeling_gisp.GispForCausalLM if remote else type(model))(built)
        expected = {k: tuple(v.shape) for k, v in pruned.state_dict().items()}
        got = {k: tuple(v.shape) for k, v in sliced.state.items()}
        for name in sorted(set(expected) | set(got)):
            if expected.get(name) != got.get(name):
                raise _Unfit(f"the export's {name} would be {got.get(name, 'missing')} but its model expects "
                                 f"{expected.get(name, 'no such tensor')} (a tensor the adapter does not slice?)")
    except (GispError, _Unfit) as exc:
        raise GispError(f"{what}: {exc}") from exc
    except Exception as exc:  # an adapter that does not fit its family
        raise GispError(f"{what}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}") from exc


def _check_projections(model: nn.Module, adapter: ModelAdapter) -> None:
    """Every layer's projections have the shapes the config implies."""
    g = adapter.geometry()
    layers = adapter.layers(model)
    if len(layers) != g.num_layers:
        raise _Unfit(f"found {len(layers)} decoder layers at {adapter.layers_path!r}, the config says {g.num_layers}")
    d, q, kv, f = g.hidden_size, g.num_heads * g.head_dim, g.num_kv_heads * g.head_dim, g.intermediate_size
    want = {"q": (q, d), "k": (kv, d), "v": (kv, d), "o": (d, q), "gate": (f, d), "up": (f, d), "down": (d, f)}
    for i, layer in enumerate(layers):
        mods = adapter.layer_modules(layer)
        if (mods.gate is not None) != g.gated_mlp:
            raise _Unfit(f"layer {i}: gate is {'present' if mods.gate is not None else 'missing'} but "
                             f"{type(adapter).__name__}.gated_mlp is {g.gated_mlp}")
        for role, projection in mods.linears().items():
            if tuple(projection.weight.shape) != want[role]:
                raise _Unfit(f"layer {i}: the {role!r} projection is {tuple(projection.weight.shape)}, "
                                 f"expected {want[role]} from the config")


def _probe_masks(g, heads: bool) -> Masks:
    """A mask that differs per layer: layer ``l`` loses ``l % H`` heads (if heads may go) and
    ``l + 1`` channels, so the probe export is non-uniform and exercises every slicing path."""
    masks = Masks.dense(g)
    for layer in range(g.num_layers):
        if heads:
            masks.heads[layer, : layer % g.num_heads] = False
        masks.channels[layer, : min(layer + 1, g.intermediate_size - 1)] = False
    return masks
