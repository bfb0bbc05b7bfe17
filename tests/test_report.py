"""gisp.report: the tables and figures the CLI, the demo and the benchmarks share."""

from pathlib import Path

import pytest

from gisp.report import markdown_table, plot_series, save_figure, subplots, table


def test_markdown_table_writes_cells_as_given():
    text = markdown_table(["method", "30%"], [["gisp", "**0.612**"], ["flap", 0.6]])
    assert text.splitlines() == ["| method | 30% |", "|---|---|", "| gisp | **0.612** |", "| flap | 0.6 |"]
    assert markdown_table(["a"], []) == "| a |\n|---|"


def test_text_table_aligns_columns_and_formats_floats_and_gaps():
    assert table(["x", "value"], [["a", 1.5], ["long", None]]).splitlines() == [
        "x     value", "----  ------", "a     1.5000", "long  -"]


def test_plot_series_draws_error_bars_only_when_every_point_has_one(tmp_path: Path):
    fig, ax = subplots()
    plot_series(ax, {"with": [(0.2, 0.3, 0.02), (0.1, 0.4, 0.03)], "without": [(0.1, 0.5), (0.2, 0.45)]},
                xlabel="sparsity", ylabel="exact match", dense=0.5, emphasise="with")
    assert len(ax.containers) == 1  # one errorbar container: "with"
    lines = {line.get_label(): line for line in ax.get_lines()}
    assert list(lines["without"].get_xdata()) == [0.1, 0.2]  # sorted by x
    bars = ax.containers[0]
    assert bars.get_label() == "with" and bars.lines[0].get_linewidth() == 2.5
    assert lines["without"].get_linewidth() == 1.2
    assert sorted(t.get_text() for t in ax.get_legend().get_texts()) == ["dense", "with", "without"]
    out = save_figure(fig, tmp_path / "plot.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in tmp_path.iterdir()] == ["plot.png"]  # the temporary name is gone


def test_save_figure_leaves_the_previous_file_whole_when_writing_fails(tmp_path: Path, monkeypatch):
    path = tmp_path / "plot.png"
    path.write_bytes(b"old")
    fig, _ = subplots()

    def torn(target, **kwargs):  # half a file, then a failure (a full disk, a kill)
        Path(target).write_bytes(b"\x89PNG half")
        raise OSError("No space left on device")

    monkeypatch.setattr(fig, "savefig", torn)
    with pytest.raises(OSError, match="No space"):
        save_figure(fig, path)
    assert path.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["plot.png"]
