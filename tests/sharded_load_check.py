"""Run by tests/test_distributed.py under torchrun: load a model in shards (``--fsdp``'s loader)
and write, per rank, what it holds and whether it equals the model loaded whole, to
``OUT/rank<r>.json`` (files, not stdout: two processes' lines would interleave).

Usage: sharded_load_check.py MODEL_DIR OUT"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from gisp import distributed, models
from gisp.adapters import adapter_for
from gisp.compensation import give_output_biases


def prepare(model: torch.nn.Module) -> None:
    adapter = adapter_for(model.config)
    give_output_biases(model, adapter)  # as --fsdp with compensation: biases the checkpoint lacks
    distributed.shard_parameters(model, adapter.layers(model))


def main() -> None:
    distributed.init_from_env()
    whole, _ = models.load(sys.argv[1])
    ids = torch.arange(3, 35).reshape(2, 16)
    with torch.no_grad():
        expected_logits = whole(ids).logits
    expected = whole.state_dict()
    files = models.sharded_checkpoint(sys.argv[1])
    assert files, "a safetensors checkpoint loads in shards"
    model, _, fingerprint = models.load_sharded(sys.argv[1], files, prepare)
    state = model.state_dict()
    added = sorted(set(state) - set(expected))
    same = all(torch.equal(tensor.full_tensor() if distributed.is_sharded(tensor) else tensor, expected[name])
               for name, tensor in state.items() if name in expected)
    loaded = {"held": sum(distributed.local_rows(p)[0].numel() for p in model.parameters()),
              "all_sharded": all(distributed.is_sharded(p) for p in model.parameters())}  # before a forward gathers any
    layers = adapter_for(model.config).layers(model)
    gathered = []  # per layer forward: how many layers, and whether the root, hold whole (gathered) weights

    def count(module, args):
        whole_layers = sum(not any(distributed.is_sharded(p) for p in layer.parameters()) for layer in layers)
        gathered.append((whole_layers, not distributed.is_sharded(model.get_input_embeddings().weight)))

    handles = [layer.register_forward_pre_hook(count) for layer in layers]  # after FSDP's own (it gathers first)
    with torch.no_grad():
        logits = model(ids).logits
    # and a backward, where FSDP2 prefetches the next layer's weights while one runs
    handles += [layer.register_full_backward_pre_hook(lambda m, g: count(m, g)) for layer in layers]
    model(ids).logits.float().pow(2).mean().backward()
    for handle in handles:
        handle.remove()
    loaded |= {"gathered_layers_max": max(n for n, _ in gathered), "root_gathered": all(r for _, r in gathered)}
    report = Path(sys.argv[2]) / f"rank{distributed.rank()}.json"
    report.write_text(json.dumps(loaded | {
        "rank": distributed.rank(), "total": sum(p.numel() for p in whole.parameters()), "same_weights": same,
        "added": added, "added_zero": all(not state[n].full_tensor().any() for n in added),
        "fingerprint_equal": fingerprint == models.fingerprint(whole),
        "max_logit_diff": (logits - expected_logits).abs().max().item(),
    }))
    distributed.close()


if __name__ == "__main__":
    main()
