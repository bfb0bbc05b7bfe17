"""The documentation: a README a user reads in one go, pages generated from the results files and
current, and no link pointing nowhere."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parent.parent
LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")


def test_readme_is_short_and_starts_with_the_two_commands():
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= 250, len(lines)
    block = lines[lines.index("```bash") + 1:]
    assert [line.split()[:2] for line in block[:2]] == [["make", "demo"], ["make", "test"]]


def test_generated_pages_are_current():
    """A results file changed without ``python benchmarks/docs.py`` fails here, naming the page."""
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "docs.py"), "--check"], capture_output=True,
                          text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_check_names_a_stale_page(tmp_path, monkeypatch):
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import docs

    monkeypatch.setattr(docs, "DOCS", tmp_path)  # nothing generated there yet: every page is stale
    monkeypatch.setattr(sys, "argv", ["docs.py", "--check"])
    assert docs.main() == 1
    assert not any(tmp_path.iterdir())  # --check writes nothing


def test_every_relative_link_resolves():
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
    broken = []
    for page in pages:
        for target in LINK.findall(page.read_text()):
            if "://" in target or target.startswith("mailto:"):
                continue
            if not (page.parent / target).exists():
                broken.append(f"{page.relative_to(ROOT)} -> {target}")
    assert not broken, broken


def test_anchors_into_the_cli_reference_exist():
    """README links such as docs/cli.md#pruning-on-a-gpu land on a heading."""
    headings = {re.sub(r"[^a-z0-9 -]", "", h.lower()).replace(" ", "-")
                for h in re.findall(r"^#+ (.+)$", (ROOT / "docs" / "cli.md").read_text(), flags=re.M)}
    for page in [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]:
        for anchor in re.findall(r"cli\.md#([a-z0-9-]+)", page.read_text()):
            assert anchor in headings, (page.name, anchor)
