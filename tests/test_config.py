"""PruneConfig and the method's own rules (Method.validate): defaults filled from the registry,
one-line refusals that name methods from the registry, unknown keys refused."""

from __future__ import annotations

import dataclasses

import pytest

from gisp.config import PruneConfig
from gisp.errors import GispError
from gisp.methods import method_for, method_names, register_method
from gisp.methods.base import _METHODS


def test_defaults_come_from_the_method():
    for name in method_names():
        m = method_for(name)
        c = PruneConfig(model="m", data="d", method=name)
        assert (c.steps, c.scope) == (m.steps, m.scope)
        assert c.taylor_weights == m.taylor_weights
        assert c.normalize == (m.normalize if m.scope == "global" else "none")


@pytest.mark.parametrize("kw, message", [
    (dict(method="flap", taylor_weights="all"), "--taylor-weights applies to Taylor methods (gisp, llm-pruner), not flap"),
    (dict(method="wanda-sp", saliency="fisher"), "--saliency applies to Taylor methods (gisp, llm-pruner), not wanda-sp"),
    (dict(method="magnitude", compensate=True), "--compensate needs a method that measures input means (gisp, flap), not magnitude"),
    (dict(method="flap", normalize="search"), "--normalize search rescales nonnegative scores per parameter; flap's"),
    (dict(method="wanda-sp", normalize="params"), "--normalize params does not apply to method wanda-sp with scope layer"),
    (dict(taylor_weights="all", compensate=True), "--compensate scores o_proj/down_proj columns"),
    (dict(taylor_weights="all", saliency="fisher", compensate=False), "--saliency fisher scores o_proj/down_proj columns"),
    (dict(method="flap", fsdp=True), "--fsdp shards gradient scoring (gisp, llm-pruner); flap"),
    (dict(fsdp=True, compact_every=2), "--fsdp and --compact-every cannot be combined"),
    (dict(scope="diagonal"), "unknown scope 'diagonal'; choose from"),
    (dict(saliency="second-order"), "unknown saliency 'second-order'; choose from first-order, fisher"),
    (dict(method="obs"), "unknown method 'obs'; choose from gisp,"),
    (dict(normalize="params", search_every=1), "--search-every applies to --normalize search, not --normalize params"),
    (dict(method="flap", search_every=2), "--search-every applies to --normalize search, not --normalize none"),
    (dict(search_every=0), "search-every must be a positive integer, got 0"),
])
def test_refusals_are_one_line_and_name_the_fix(kw, message):
    with pytest.raises(GispError) as exc:
        PruneConfig(model="m", data="d", **kw)
    assert message in str(exc.value) and "\n" not in str(exc.value)


def test_search_every_is_filled_for_a_search_only():
    assert PruneConfig(model="m", data="d").search_every == 4
    assert PruneConfig(model="m", data="d", objective="margin").search_every == 4
    assert PruneConfig(model="m", data="d", search_every=1).search_every == 1
    assert PruneConfig(model="m", data="d", normalize="params").search_every is None
    assert PruneConfig(model="m", data="d", method="flap").search_every is None


def test_a_registered_method_joins_the_messages():
    """A plugin Taylor method is named where the built-in ones are: names come from the registry."""
    plugin = dataclasses.replace(method_for("llm-pruner"), name="my-taylor")
    register_method(plugin)
    try:
        with pytest.raises(GispError, match=r"Taylor methods \(gisp, llm-pruner, my-taylor\), not flap"):
            PruneConfig(model="m", data="d", method="flap", taylor_weights="all")
        assert PruneConfig(model="m", data="d", method="my-taylor").taylor_weights == "all"
    finally:
        _METHODS.pop("my-taylor")


def test_unknown_keys_are_refused_and_round_trip_is_exact():
    c = PruneConfig(model="m", data="d", method="flap", sparsity=0.3)
    assert PruneConfig.from_dict(c.to_dict()) == c
    with pytest.raises(GispError, match="sparsty"):
        PruneConfig.from_dict({**c.to_dict(), "sparsty": 0.2})
