"""The user guide's Python-client block runs as written against a real server, and answers as the engine does."""
from __future__ import annotations

import re

import numpy as np
import pytest
from _serving import ATOL, ROOT, pixels

from engine.gallery import Gallery

pytestmark = pytest.mark.serve
URL = "grpc://127.0.0.1:8001"


def client_snippet() -> str:
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "docs" / "GUIDE.md").read_text(), flags=re.S)
    found = [b for b in blocks if "TritonClient(" in b]
    assert len(found) == 1, "docs/GUIDE.md should hold one python block using TritonClient"
    assert URL in found[0]
    return found[0]


def test_python_client_block_runs_as_written(server, local_embedder, tmp_path, monkeypatch):
    from PIL import Image

    (tmp_path / "query_images").mkdir()
    queries = pixels(3, seed=50)
    for n, image in enumerate(queries):
        Image.fromarray(image).save(tmp_path / "query_images" / f"q{n}.png")
    searched = Gallery.load(server.gallery)  # what the snippet searches: its adds come after
    monkeypatch.chdir(tmp_path)
    scope: dict[str, object] = {}
    exec(compile(client_snippet().replace(URL, server.grpc), "docs/GUIDE.md", "exec"), scope)
    np.testing.assert_allclose(scope["embeddings"], local_embedder(queries), atol=ATOL)
    want_dist, want_ids = searched.search(local_embedder(queries), 5)
    for dist, ids in (scope["dist"], scope["ids"]), scope["same"]:
        np.testing.assert_array_equal(ids, want_ids)
        np.testing.assert_allclose(dist, want_dist, atol=ATOL)
    saved = Gallery.load(server.gallery)
    assert scope["size"] == len(searched) + 3 == len(saved)
    assert saved.search(local_embedder(queries), 1)[1].ravel().tolist() == [1000, 1001, 1002]
