"""The README's "Library use" snippet runs as written, on a tiny artefact and a few generated crops."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from engine.errors import DataError

README = Path(__file__).resolve().parents[2] / "README.md"


def library_use_snippet() -> str:
    section = README.read_text().split("## Library use", 1)[1]
    match = re.search(r"```python\n(.*?)```", section, flags=re.S)
    assert match, "README.md's Library use section has no python block"
    return match.group(1)


def _crops(tmp_path: Path, bench_artifacts: Path, suffix: str, counts: tuple[int, int] = (12, 3)) -> None:
    """Crops in gallery_images/ (half in a subfolder) and query_images/, the artefact where the README says."""
    rng = np.random.default_rng(0)
    for folder, count in zip(("gallery_images", "query_images"), counts, strict=True):
        (tmp_path / folder / "sub").mkdir(parents=True)
        for i in range(count):  # not the model's size: the snippet's load_images resizes
            where = tmp_path / folder / ("sub" if i % 2 else "")
            Image.fromarray(rng.integers(0, 256, (40, 20, 3), dtype=np.uint8)).save(where / f"{i}{suffix}")
    (tmp_path / "artifacts" / "demo").mkdir(parents=True)
    (tmp_path / "artifacts" / "demo" / "artifact").symlink_to(bench_artifacts)


@pytest.mark.parametrize("suffix", [".jpg", ".PNG"])
def test_library_use_snippet_runs_as_written(tmp_path: Path, bench_artifacts: Path, monkeypatch, suffix) -> None:
    _crops(tmp_path, bench_artifacts, suffix)
    monkeypatch.chdir(tmp_path)
    scope: dict[str, object] = {}
    exec(compile(library_use_snippet(), "README.md", "exec"), scope)
    dist, ids, gallery = scope["dist"], scope["ids"], scope["gallery"]
    assert ids.shape == dist.shape == (3, 10) and ids.dtype == np.int64
    assert set(ids.ravel()) <= set(range(12)) and np.all(np.diff(dist, axis=1) >= 0)
    assert len(gallery) == 12 and (tmp_path / "gallery.npz").is_file()


def test_library_use_snippet_without_images_is_an_error_naming_the_folder(tmp_path: Path, bench_artifacts: Path,
                                                                          monkeypatch) -> None:
    """Crops of another kind (.gif) in gallery_images/: an error saying where and for what, no gallery.npz."""
    _crops(tmp_path, bench_artifacts, ".gif")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DataError, match=r"no \.jpg/\.jpeg/\.png/\.bmp images under .*gallery_images"):
        exec(compile(library_use_snippet(), "README.md", "exec"), {})
    assert not (tmp_path / "gallery.npz").exists()


def test_demo_figures_name_the_cpu_and_the_spread_holds_them() -> None:
    """The demo's figures are one CPU's: the README names it and states the spread over the machines
    seen, and the table's trained figures lie inside that spread."""
    section = README.read_text().split("## What `make demo` shows", 1)[1].split("\n## ", 1)[0]
    assert re.search(r"Measured on a \d+-core .+ with (AVX-512|AVX2)", section)
    spread = re.search(r"Spread across the machines seen.*?Rank-1 ([\d.]+)-([\d.]+),\s+mAP ([\d.]+)-([\d.]+)",
                       section, flags=re.S)
    assert spread, "the demo section should state the Rank-1 and mAP spread across machines"
    low_r1, high_r1, low_map, high_map = map(float, spread.groups())
    rows = [line.split("|")[1:-1] for line in section.splitlines() if line.startswith("| trained")]
    assert rows and all(low_r1 <= float(r[1]) <= high_r1 and low_map <= float(r[5]) <= high_map for r in rows)
