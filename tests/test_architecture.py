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
    graph = {"gisp.importance": ["gisp.statistics"], "gisp.statistics": ["gisp.importance"],
             "gisp.export": ["gisp.pruner"], "gisp.pruner": []}
    assert docs.cycles(graph) == [["gisp.importance", "gisp.statistics"]]
    assert docs.layer_violations(graph) == ["gisp.export (outputs) imports gisp.pruner (driver)"]


def test_imports_inside_functions_and_type_checking_are_edges(tmp_path, monkeypatch):
    """An import circle counts wherever its imports sit: in a function or under TYPE_CHECKING."""
    pkg = tmp_path / "gisp"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "config.py").write_text("def f():\n    from gisp.ranking import X\n")
    (pkg / "ranking.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from gisp.config import Y\n")
    monkeypatch.setattr(docs, "SRC", pkg)
    graph = docs.import_graph()
    assert graph["gisp.config"] == ["gisp.ranking"] and graph["gisp.ranking"] == ["gisp.config"]
    assert docs.cycles(graph) == [["gisp.config", "gisp.ranking"]]


def _string_constants(path: Path):
    """(node, parent) of every string constant of a module that is not a docstring."""
    import ast

    tree = ast.parse(path.read_text())
    docstrings = {id(n.body[0].value) for n in ast.walk(tree)
                  if isinstance(n, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and ast.get_docstring(n)}
    for parent in ast.walk(tree):
        for child in ast.iter_child_nodes(parent):
            if isinstance(child, ast.Constant) and isinstance(child.value, str) and id(child) not in docstrings:
                yield child, parent


def hand_written_method_names(src: Path) -> list[str]:
    """Strings outside ``src/methods/`` that name a method as one (compared, a ``method`` value, or
    any name but the package's own) or list methods by hand (``a, b``)."""
    import ast
    import re

    from gisp.methods import method_names

    names = method_names()
    either = "|".join(map(re.escape, names))
    listing = re.compile(rf"(?<![\w-])({either}), ({either})(?![\w-])")
    found = []
    for path in sorted(src.rglob("*.py")):
        if "methods" in path.relative_to(src).parts:
            continue
        for node, parent in _string_constants(path):
            as_method = node.value in names and (
                isinstance(parent, ast.Compare)
                or (isinstance(parent, ast.Dict) and any(isinstance(k, ast.Constant) and k.value == "method" for k in parent.keys))
                or (isinstance(parent, ast.keyword) and parent.arg == "method"))
            if as_method or listing.search(node.value) or (node.value in names and node.value != "gisp"):
                found.append(f"{path.relative_to(src)}:{node.lineno}: {node.value[:60]!r}")
    return found


def test_no_method_name_hard_coded_outside_the_methods_package():
    """Code outside ``gisp/methods/`` reads method names from the registry."""
    assert hand_written_method_names(docs.SRC) == []


def test_the_name_check_finds_a_hand_written_list(tmp_path):
    (tmp_path / "cli.py").write_text('HELP = "Taylor methods (gisp, llm-pruner) only"\nx = {"method": "gisp"}\n'
                                     'logger = "gisp"\n')
    assert [f.split(":")[:2] for f in hand_written_method_names(tmp_path)] == [["cli.py", "1"], ["cli.py", "2"]]
