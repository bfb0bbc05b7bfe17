"""GGUF files that llama.cpp runs, written with the ``gguf`` package from a (pruned) model.

Layers of equal sizes with no added bias use llama.cpp's plain ``llama`` architecture. Otherwise
the file uses ``deci``, which reads the query heads, KV heads and feed-forward size of every
layer as arrays. Two of deci's special cases matter, as llama.cpp's ``models/deci.cpp`` builds
the graph:

- ``n_head == 0``: an attention-free layer (the residual stream goes straight to the MLP). An
  attention block with no head left and no output bias is written that way (exact);
- ``n_ff == 0``: the layer is skipped *entirely*, attention included, so it cannot stand for an
  empty MLP under a kept attention block. An MLP with no channel left is written as one zero
  channel (zero gate/up rows and down column: its output is exactly zero, or its bias).

Layers with neither are already dropped by the export. Q/K rows are permuted from the Hugging Face
rotate-half layout to GGML's interleaved RoPE layout, head by head, as llama.cpp's converter does.
The tokenizer comes from the source model: copied key by key from its GGUF file when it was one,
else built from ``tokenizer.json`` (gguf's ``BpeVocab`` / ``SpecialVocab``).
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from gisp.adapters import ModelAdapter
from gisp.errors import GispError

OUTTYPES = ("f32", "f16", "q8_0")


@dataclass(frozen=True)
class LayerPlan:
    """What one layer becomes in the file: its head counts and feed-forward size, and whether
    its attention or MLP is written as a zero stand-in."""

    n_head: int
    n_head_kv: int
    n_ff: int
    zero_mlp: bool


def _rope_permute(weight: torch.Tensor, head_dim: int) -> torch.Tensor:
    """Rows of each head from rotate-half order to interleaved pairs: [n*hd, ...] -> same shape."""
    shape = weight.shape
    # [n*hd, in] -> [n, 2, hd/2, in] -> [n, hd/2, 2, in] -> [n*hd, in]
    return weight.reshape(-1, 2, head_dim // 2, *shape[1:]).transpose(1, 2).reshape(shape)


def layer_plans(state: dict[str, torch.Tensor], names: list[dict[str, str]], head_dim: int) -> list[LayerPlan]:
    """Each layer's sizes read off the sliced tensors (``names[i][role]`` is the weight's key)."""
    plans = []
    for roles in names:
        q, k, up = (state[roles[r]] for r in ("q", "k", "up"))
        o_bias = roles["o"].replace(".weight", ".bias") in state
        heads, kv = q.shape[0] // head_dim, k.shape[0] // head_dim
        empty_attention = not o_bias and bool((q == 0).all() and (state[roles["o"]] == 0).all())
        n_ff = up.shape[0]
        plans.append(LayerPlan(0 if empty_attention else heads, 0 if empty_attention else kv, max(n_ff, 1), n_ff == 0))
    return plans


GGUF_ARCHITECTURES = ("llama",)  # what ModelAdapter.gguf_architecture() may name: this writer's mappings


def check_gguf_architecture(adapter: ModelAdapter) -> None:
    """Refuse a family whose adapter names no llama.cpp mapping this writer has (before any
    weights load, and again before writing)."""
    arch = adapter.gguf_architecture()
    if arch not in GGUF_ARCHITECTURES:
        why = "names no llama.cpp mapping" if arch is None else f"names {arch!r}, which gisp's GGUF writer does not map"
        raise GispError(f"GGUF export supports llama-style models (llama.cpp's llama/deci); the {adapter.name} "
                        f"adapter {why}")


def gguf_tensors(model: nn.Module, adapter: ModelAdapter) -> tuple[dict[str, np.ndarray], list[LayerPlan], int]:
    """The model's tensors under llama.cpp names (float32 numpy), each layer's plan, head_dim."""
    import gguf

    check_gguf_architecture(adapter)
    head_dim = adapter.geometry().head_dim
    state = {k: v.detach().float() for k, v in model.state_dict().items()}
    names = {id(m): n for n, m in model.named_modules()}
    output = model.get_output_embeddings()
    if output is not None and getattr(model.config, "tie_word_embeddings", False):
        state.pop(names[id(output)] + ".weight", None)  # tied: llama.cpp reuses token_embd
    layer_names = [{role: names[id(p)] + ".weight" for role, p in adapter.layer_modules(layer).linears().items()}
                   for layer in adapter.layers(model)]
    plans = layer_plans(state, layer_names, head_dim)
    tmap = gguf.get_tensor_name_map(gguf.MODEL_ARCH.DECI, len(plans))
    out: dict[str, np.ndarray] = {}
    # attention-free layers carry no attention tensors and no attention norm (llama.cpp's names)
    skip = tuple(f"blk.{i}.attn_" for i, plan in enumerate(plans) if plan.n_head == 0)
    for plan, roles in zip(plans, layer_names):
        if plan.zero_mlp:
            d = state[roles["down"]].shape[0]
            state[roles["up"]] = torch.zeros(1, d)
            state[roles["down"]] = torch.zeros(d, 1)
            if "gate" in roles:
                state[roles["gate"]] = torch.zeros(1, d)
    for key, tensor in state.items():
        name = tmap.get_name(key, try_suffixes=(".weight", ".bias"))
        if name is None:
            raise GispError(f"no llama.cpp tensor name for {key}")
        if skip and name.startswith(skip):
            continue
        if name.endswith(("attn_q.weight", "attn_k.weight", "attn_q.bias", "attn_k.bias")):
            tensor = _rope_permute(tensor, head_dim)
        out[name] = tensor.numpy()
    return out, plans, head_dim


def write_gguf(model: nn.Module, adapter: ModelAdapter, out: str | Path, *, outtype: str = "f32", tokenizer_source: dict | None = None,
               name: str = "gisp export") -> dict:
    """Write ``model`` (dense, or pruned from the family of ``adapter``) to ``out``, atomically;
    returns the architecture and per-layer sizes.

    ``tokenizer_source``: ``{"gguf": PATH}`` (copy its ``tokenizer.*`` keys) or ``{"dir": PATH}``
    (a Hugging Face tokenizer directory).
    """
    import gguf

    if outtype not in OUTTYPES:
        raise GispError(f"unknown --outtype {outtype!r}; choose from {', '.join(OUTTYPES)}")
    out = Path(out)
    if out.exists():
        raise GispError(f"{out} already exists; choose a new file")
    tensors, plans, head_dim = gguf_tensors(model, adapter)
    c = model.config
    heads = [p.n_head for p in plans]
    uniform = (len({(p.n_head, p.n_head_kv, p.n_ff) for p in plans}) == 1 and not any(p.zero_mlp for p in plans)
               and heads[0] > 0 and not any(n.endswith("attn_output.bias") or n.endswith("ffn_down.bias") for n in tensors))
    arch = "llama" if uniform else "deci"
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", dir=out.parent)
    os.close(fd)
    try:
        writer = gguf.GGUFWriter(tmp, arch)
        writer.add_name(name)
        writer.add_context_length(int(c.max_position_embeddings))
        writer.add_embedding_length(int(c.hidden_size))
        writer.add_block_count(len(plans))
        per_layer = (lambda xs: xs[0]) if uniform else (lambda xs: xs)
        writer.add_feed_forward_length(per_layer([p.n_ff for p in plans]))
        writer.add_head_count(per_layer(heads))
        writer.add_head_count_kv(per_layer([p.n_head_kv for p in plans]))
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)
        writer.add_rope_dimension_count(head_dim)
        writer.add_rope_freq_base(float(_rope_theta(c)))
        writer.add_layer_norm_rms_eps(float(c.rms_norm_eps))
        writer.add_vocab_size(int(c.vocab_size))
        writer.add_file_type({"f32": 0, "f16": 1, "q8_0": 7}[outtype])
        _add_tokenizer(writer, tokenizer_source or {})
        for tname, data in tensors.items():
            _add_tensor(writer, tname, data, outtype)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return {"architecture": arch, "n_head": heads, "n_head_kv": [p.n_head_kv for p in plans],
            "n_ff": [p.n_ff for p in plans], "outtype": outtype, "bytes": out.stat().st_size}


def _rope_theta(config) -> float:
    params = getattr(config, "rope_parameters", None) or {}
    if params.get("rope_type", "default") != "default":
        raise GispError(f"GGUF export handles plain RoPE only; this model uses {params['rope_type']!r} scaling")
    return params.get("rope_theta", getattr(config, "rope_theta", 10000.0))


def _add_tensor(writer, name: str, data: np.ndarray, outtype: str) -> None:
    import gguf

    if data.ndim == 1 or outtype == "f32":  # norms and biases stay float32, as llama.cpp's converter keeps them
        writer.add_tensor(name, data.astype(np.float32))
    elif outtype == "f16" or data.shape[-1] % 32:  # q8_0 needs rows of whole 32-blocks; f16 otherwise
        writer.add_tensor(name, data.astype(np.float16))
    else:
        q = gguf.quants.quantize(data.astype(np.float32), gguf.GGMLQuantizationType.Q8_0)
        writer.add_tensor(name, q, raw_shape=q.shape, raw_dtype=gguf.GGMLQuantizationType.Q8_0)


def _add_tokenizer(writer, source: dict) -> None:
    """The source model's tokenizer: its GGUF keys, or built from a tokenizer directory."""
    import gguf

    if "gguf" in source:
        reader = gguf.GGUFReader(source["gguf"])
        for key, field in reader.fields.items():
            if key.startswith("tokenizer."):
                main = field.types[0]
                sub = field.types[1] if main == gguf.GGUFValueType.ARRAY else None
                writer.add_key_value(key, field.contents(), main, sub)
        return
    if "dir" in source:
        path = Path(source["dir"])
        if not (path / "tokenizer.json").is_file():
            raise GispError(f"GGUF export needs a tokenizer.json (BPE) in {path}")
        vocab = gguf.vocab.BpeVocab(path)
        tokens, types = [], []
        for text, _score, kind in vocab.all_tokens():
            tokens.append(text)
            types.append(kind)
        writer.add_tokenizer_model("gpt2")
        writer.add_tokenizer_pre("default")
        writer.add_token_list(tokens)
        writer.add_token_types(types)
        gguf.SpecialVocab(path, load_merges=True, n_vocab=len(tokens)).add_to_gguf(writer)
        return
    raise GispError("GGUF export needs the source model's tokenizer")
