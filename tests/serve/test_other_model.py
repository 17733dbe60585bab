"""--allow-other-model through a real server: the check before tritonserver and the one in the search and
gallery_add models (which a plain tritonserver runs alone) both let the gallery through.

The refusals need no server: tests/serve/test_start_checks.py (the command) and test_models.py (the
models' own check, the stamp on a new gallery, the warning for a file that records no model).
"""
from __future__ import annotations

import signal

import numpy as np
import pytest
from _serving import other_model, pixels, write_gallery

from engine.client import TritonClient
from engine.gallery import Gallery
from serve.process import ServerProcess

pytestmark = pytest.mark.serve


def test_allow_other_model_serves_a_gallery_of_another_model(serve_artifact, local_embedder, gallery_images,
                                                            tmp_path):
    theirs = other_model(local_embedder.spec)
    path = write_gallery(tmp_path / "gallery.npz", local_embedder, gallery_images, fingerprint=theirs)
    queries = pixels(3, seed=21)
    expected = Gallery.load(path).search(local_embedder(queries), 5)[1]
    server = ServerProcess.start(serve_artifact, tmp_path / "server.log", gallery=path,
                                 extra=("--backend", "ort", "--device", "cpu", "--allow-other-model"))
    try:
        with TritonClient(server.grpc) as c:
            _, ids = c.search(5, images=queries)
            assert c.add(pixels(2, seed=22), ids=[800, 801]) == len(gallery_images) + 2
        np.testing.assert_array_equal(ids, expected)
        assert Gallery.load(path).model_fingerprint == theirs  # rows added to a file keep its record
    finally:
        assert server.stop(signal.SIGINT) == 0, server.log_tail()
