"""Crashes and the library path: a kill during gallery_add keeps a whole gallery file.

The clean stops are checked where a server already runs: SIGINT (and no process left behind) when
test_server's module server stops, SIGTERM in the load-test benchmark's test.
"""
from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from _serving import ROOT, gallery_labels, pixels, start_server, write_gallery

from engine.client import ServerError, TritonClient
from engine.gallery import Gallery
from serve.server import python_library_first, remove_stale_regions

pytestmark = pytest.mark.serve
ADD_BATCH = 8


def test_python_library_goes_first_once(monkeypatch):
    import sysconfig

    libdir = sysconfig.get_config_var("LIBDIR")
    env = {"LD_LIBRARY_PATH": f"/opt/x:{libdir}:/opt/y"}
    assert python_library_first(env) == f"{libdir}:/opt/x:/opt/y"
    assert python_library_first({}) == libdir


def _added_batch(j: int) -> tuple[np.ndarray, np.ndarray]:
    return pixels(ADD_BATCH, seed=100 + j), np.arange(ADD_BATCH, dtype=np.int64) + 1000 * (j + 1)


def test_kill_during_adds_keeps_a_whole_gallery(serve_artifact, local_embedder, gallery_images, tmp_path):
    """The saved file is always the base gallery plus a whole number of completed adds, in order."""
    path = write_gallery(tmp_path / "gallery.npz", local_embedder, gallery_images)
    server = start_server(serve_artifact, tmp_path / "server.log", path)
    done, errors = [], []

    def add_forever() -> None:
        with TritonClient(server.grpc) as c:
            try:
                for j in range(10_000):
                    c.add(*_added_batch(j))
                    done.append(j)
            except ServerError as exc:
                errors.append(exc)

    adder = threading.Thread(target=add_forever)
    adder.start()
    while len(done) < 3 and adder.is_alive():
        time.sleep(0.01)
    server.kill_all()
    adder.join(timeout=60)
    assert errors and len(done) >= 3  # the client saw the crash as a ServerError, not a hang
    assert any(name.startswith(f"jlml{server.proc.pid}_") for name in remove_stale_regions())

    saved = Gallery.load(path)
    added, rest = divmod(len(saved) - len(gallery_images), ADD_BATCH)
    assert rest == 0 and len(done) <= added <= len(done) + 1
    expected = Gallery(local_embedder.spec.embedding_dim)
    expected.add(local_embedder(gallery_images), *gallery_labels(len(gallery_images)))
    for j in range(added):
        batch, ids = _added_batch(j)
        expected.add(local_embedder(batch), ids)
    queries = local_embedder(pixels(5, seed=7))
    np.testing.assert_array_equal(saved.search(queries, 20)[1], expected.search(queries, 20)[1])


KILLED_SAVE = """
import sys, time, numpy as np
from pathlib import Path
import engine.search.file
from engine import Embedder
from serve.models import GalleryService

def half_then_hang(fh, **arrays):
    fh.write(b"PK half a zip")
    fh.flush()
    print("saving", flush=True)
    time.sleep(600)

with Embedder(sys.argv[1], backend="ort", device="cpu") as embedder:
    service = GalleryService(embedder, embedder.spec, Path(sys.argv[2]))
    engine.search.file.np.savez = half_then_hang
    images = np.zeros((2, *embedder.spec.image_shape), np.uint8)
    service.add({"images": images, "ids": np.array([7, 8], np.int64)})
"""


def test_process_killed_mid_save_leaves_the_last_saved_file(serve_artifact, local_embedder, gallery_images,
                                                            tmp_path):
    path = write_gallery(tmp_path / "gallery.npz", local_embedder, gallery_images)
    before = path.read_bytes()
    proc = subprocess.Popen([sys.executable, "-c", KILLED_SAVE, str(serve_artifact), str(path)], cwd=ROOT,
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "saving"
    finally:
        proc.kill()
        proc.wait()
    assert path.read_bytes() == before and len(Gallery.load(path)) == len(gallery_images)


def test_shared_memory_of_killed_servers_is_removed_and_a_running_ones_kept(tmp_path):
    """The Python backend's regions are named jlml<pid>_...; a SIGKILLed server leaves them behind."""
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    for name in (f"jlml{dead.pid}_a", f"jlml{dead.pid}_b", f"jlml{os.getpid()}_c", "other_1_d"):
        (tmp_path / name).write_bytes(b"x")
    assert sorted(remove_stale_regions(tmp_path)) == [f"jlml{dead.pid}_a", f"jlml{dead.pid}_b"]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([f"jlml{os.getpid()}_c", "other_1_d"])
