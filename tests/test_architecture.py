"""The package's shape: no import circle, imports only downward through the layers that
docs/architecture.md draws, and every module placed in a layer."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent.parent / "benchmarks"))
import docs  # noqa: E402


def test_every_module_has_a_layer():
    placed = {name for names in docs.LAYERS.values() for name in names}
    tops = {m.split(".")[1] if "." in m else m for m in docs.import_graph()}
    assert tops <= placed, f"place these in benchmarks/docs.py LAYERS: {sorted(tops - placed)}"


def test_no_import_circle():
    assert docs.cycles(docs.import_graph()) == []


def test_imports_point_down_the_layers():
    assert docs.layer_violations(docs.import_graph()) == []


def test_the_checks_catch_what_they_are_for():
    """A circle and an upward import (export -> pruner) in a made-up graph are both reported."""
    graph = {"gisp.importance": ["gisp.activations"], "gisp.activations": ["gisp.importance"],
             "gisp.export": ["gisp.pruner"], "gisp.pruner": []}
    assert docs.cycles(graph) == [["gisp.activations", "gisp.importance"]]
    assert docs.layer_violations(graph) == ["gisp.export (outputs) imports gisp.pruner (driver)"]


def test_type_checking_imports_are_not_edges():
    """``batches`` names ``PruneConfig`` for annotations only: not an import of the configuration layer."""
    assert "gisp.config" not in docs.import_graph()["gisp.batches"]
