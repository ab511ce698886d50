"""The front door stays true: every link in README.md, docs/ and the results index points to a file that
exists, every results path named in backticks exists, and docs/config.md is what the code generates."""

from __future__ import annotations

import re
from pathlib import Path

from ffpipe.config.reference import reference

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", ROOT / "benchmarks" / "results" / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")
RESULT_PATH = re.compile(r"`(benchmarks/results/[^`\s*{]+)`")


def test_docs_exist():
    assert {p.name for p in PAGES[2:]} >= {"architecture.md", "pipeline.md", "config.md", "cli.md", "data.md",
                                            "benchmarks.md", "reproductions.md", "limitations.md"}


def test_every_link_and_results_path_exists():
    missing = []
    for page in PAGES:
        text = page.read_text()
        for target in LINK.findall(text):
            if not target.startswith(("http://", "https://")) and not (page.parent / target).exists():
                missing.append(f"{page.relative_to(ROOT)} -> {target}")
        missing += [f"{page.relative_to(ROOT)} -> {p}" for p in RESULT_PATH.findall(text)
                    if not (ROOT / p.rstrip("/.,")).exists()]
    assert not missing, missing


def test_readme_results_rows_each_link_an_artefact():
    readme = (ROOT / "README.md").read_text()
    table = readme.split("## Results", 1)[1].split("\n## ", 1)[0]
    rows = [ln for ln in table.splitlines() if ln.startswith("| ") and not ln.startswith("| what")]
    assert len(rows) >= 5
    assert all(LINK.search(row) for row in rows), [row for row in rows if not LINK.search(row)]


def test_config_reference_is_generated_from_the_code():
    assert (ROOT / "docs" / "config.md").read_text() == reference(), \
        "docs/config.md is stale: python -m ffpipe.config.reference > docs/config.md"
