"""The manual: README as a front page, docs/ that build as a site with no broken link or
anchor, and a configuration reference that says what the code accepts."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from serve_app.config import reference

pytestmark = pytest.mark.timeout(120)

ROOT = Path(__file__).resolve().parents[2]


def test_the_configuration_reference_is_the_one_the_models_give() -> None:
    page = (ROOT / "docs" / "configuration.md").read_text()
    assert page == reference.written(page), (
        "docs/configuration.md is stale: python -m serve_app.config.reference "
        "--write docs/configuration.md"
    )
    for name in ("max_backlog_s", "items_in_flight", "requests_per_s", "max_batch_size"):
        assert f"| `{name}` |" in page


def test_the_manual_builds_with_no_broken_link_or_anchor(tmp_path: Path) -> None:
    mkdocs = Path(sys.executable).with_name("mkdocs")
    result = subprocess.run(
        [str(mkdocs), "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=100,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    for page in ("api", "keys-and-limits", "configuration", "operations", "performance"):
        assert (tmp_path / "site" / page / "index.html").exists()


def test_the_readme_is_a_front_page_that_starts_with_the_two_commands() -> None:
    lines = (ROOT / "README.md").read_text().splitlines()
    assert lines[0] == "# Chorus"
    block = lines[lines.index("```bash") + 1 : lines.index("```")]
    assert [line.split()[:2] for line in block] == [["make", "serve"], ["make", "test"]]
    assert lines.index("```bash") <= 2  # first, under the title
    assert len(lines) <= 250
    ci = (ROOT / ".ci" / "run").read_text()
    assert "make test" in ci.splitlines()[-1]  # CI runs the README's test command
    pages = ("api", "keys-and-limits", "configuration", "operations", "performance")
    text = "\n".join(lines)
    assert all(f"docs/{page}.md" in text for page in pages)  # a front page into the manual


def test_no_module_of_the_app_is_over_400_lines() -> None:
    long = {
        str(p.relative_to(ROOT)): n
        for p in (ROOT / "serve_app").rglob("*.py")
        if (n := len(p.read_text().splitlines())) > 400
    }
    assert not long, long
