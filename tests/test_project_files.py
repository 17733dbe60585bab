"""What a user looks for in a project: a licence matching the package metadata, a changelog, how to cite."""
from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_license_is_the_one_pyproject_declares():
    """pyproject declares an SPDX expression (PEP 639) and ships the LICENSE file it names."""
    text = (ROOT / "pyproject.toml").read_text()
    declared = re.search(r'^license = "(\w+)"$', text, flags=re.M)
    assert declared and (ROOT / "LICENSE").read_text().startswith(f"{declared.group(1)} License")
    assert re.search(r'^license-files = \["LICENSE"\]$', text, flags=re.M)


def test_changelog_has_an_unreleased_section_with_entries():
    text = (ROOT / "CHANGELOG.md").read_text()
    unreleased = text.split("## Unreleased", 1)[1].split("\n## ", 1)[0]
    assert len(re.findall(r"^- ", unreleased, flags=re.M)) >= 5


def test_citation_names_the_jlml_paper():
    text = (ROOT / "CITATION.cff").read_text()
    assert text.startswith("cff-version: 1.2.0") and "preferred-citation:" in text
    assert 'title: "Person Re-Identification by Deep Joint Learning of Multi-Loss Classification"' in text
    assert all(f"family-names: {name}" in text for name in ("Li", "Zhu", "Gong")) and "year: 2017" in text


def test_results_holds_records_only():
    """results/ keeps what runs recorded; code that makes records lives in the packages or tools/."""
    code = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "results").rglob("*") if p.suffix in (".py", ".sh"))
    assert not code, f"scripts in results/: {code}; move them to tools/ (or a package), or remove one-offs"


DOCS = ("README.md", "docs/GUIDE.md", "docs/REFERENCE.md", "RESULTS.md", "benchmarks/README.md", "CHANGELOG.md")


def _anchor(heading: str) -> str:
    """GitHub's anchor of a markdown heading: lower case, punctuation but _ and - dropped, spaces to hyphens."""
    return re.sub(r"[^a-z0-9 _\-]", "", heading.strip().lower()).replace(" ", "-")


def test_readme_is_a_quick_start_that_points_to_a_guide_and_a_reference():
    readme = (ROOT / "README.md").read_text()
    head = readme.split("\n## ", 1)[0]
    assert "make demo" in head and "make test" in head  # the two commands come first
    assert "(docs/GUIDE.md)" in readme and "(docs/REFERENCE.md)" in readme
    assert "## Command lines" in (ROOT / "docs" / "REFERENCE.md").read_text()
    assert readme.count("\n") < 200, "README.md is the quick start: the guide and reference hold the rest"


def test_every_relative_link_of_the_docs_resolves_to_a_file_and_a_heading():
    broken = []
    for doc in DOCS:
        path = ROOT / doc
        for target in re.findall(r"\]\(([^)\s]+)\)", path.read_text()):
            if re.match(r"[a-z]+:", target):
                continue  # https:, mailto: ...
            file_part, _, anchor = target.partition("#")
            linked = (path.parent / file_part).resolve() if file_part else path
            if not linked.exists():
                broken.append(f"{doc}: {target} (no such file)")
            elif anchor and linked.suffix == ".md":
                headings = re.findall(r"^#+ (.+)$", linked.read_text(), flags=re.M)
                if anchor not in {_anchor(h) for h in headings}:
                    broken.append(f"{doc}: {target} (no such heading)")
    assert not broken, "broken links:\n" + "\n".join(broken)
