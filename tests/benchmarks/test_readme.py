"""The README's "Library use" snippet runs as written, on a tiny artefact and a few generated crops."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
from PIL import Image

README = Path(__file__).resolve().parents[2] / "README.md"


def library_use_snippet() -> str:
    section = README.read_text().split("## Library use", 1)[1]
    match = re.search(r"```python\n(.*?)```", section, flags=re.S)
    assert match, "README.md's Library use section has no python block"
    return match.group(1)


def test_library_use_snippet_runs_as_written(tmp_path: Path, bench_artifacts: Path, monkeypatch) -> None:
    rng = np.random.default_rng(0)
    for folder, count in (("gallery_images", 12), ("query_images", 3)):
        (tmp_path / folder).mkdir()
        for i in range(count):  # not the model's size: the snippet's load_images resizes
            Image.fromarray(rng.integers(0, 256, (40, 20, 3), dtype=np.uint8)).save(tmp_path / folder / f"{i}.jpg")
    (tmp_path / "artifacts" / "demo").mkdir(parents=True)
    (tmp_path / "artifacts" / "demo" / "artifact").symlink_to(bench_artifacts)
    monkeypatch.chdir(tmp_path)
    scope: dict[str, object] = {}
    exec(compile(library_use_snippet(), "README.md", "exec"), scope)
    dist, ids, gallery = scope["dist"], scope["ids"], scope["gallery"]
    assert ids.shape == dist.shape == (3, 10) and ids.dtype == np.int64
    assert set(ids.ravel()) <= set(range(12)) and np.all(np.diff(dist, axis=1) >= 0)
    assert len(gallery) == 12 and (tmp_path / "gallery.npz").is_file()
