"""What a user looks for in a project: a licence matching the package metadata, a changelog, how to cite."""
from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_license_is_the_one_pyproject_declares():
    declared = re.search(r'^license = \{ text = "(\w+)" \}', (ROOT / "pyproject.toml").read_text(), flags=re.M)
    assert declared and (ROOT / "LICENSE").read_text().startswith(f"{declared.group(1)} License")


def test_changelog_has_an_unreleased_section_with_entries():
    text = (ROOT / "CHANGELOG.md").read_text()
    unreleased = text.split("## Unreleased", 1)[1].split("\n## ", 1)[0]
    assert len(re.findall(r"^- ", unreleased, flags=re.M)) >= 5


def test_citation_names_the_jlml_paper():
    text = (ROOT / "CITATION.cff").read_text()
    assert text.startswith("cff-version: 1.2.0") and "preferred-citation:" in text
    assert 'title: "Person Re-Identification by Deep Joint Learning of Multi-Loss Classification"' in text
    assert all(f"family-names: {name}" in text for name in ("Li", "Zhu", "Gong")) and "year: 2017" in text
