"""The gallery service without a server: a failed save never leaves memory ahead of the file."""
from __future__ import annotations

import numpy as np
import pytest
from _serving import other_model, pixels, write_gallery

from engine import InputError
from engine.gallery import Gallery
from serve.models import GalleryService


def test_failed_save_reloads_the_saved_gallery(local_embedder, gallery_images, tmp_path, monkeypatch):
    path = write_gallery(tmp_path / "g.npz", local_embedder, gallery_images)
    service = GalleryService(local_embedder, local_embedder.spec, path)

    def broken_save(self, _path):
        raise OSError("disk full")

    monkeypatch.setattr(Gallery, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        service.add({"images": pixels(2, seed=1), "ids": np.array([5, 6], np.int64)})
    assert len(service.gallery) == len(gallery_images)


def test_gallery_of_another_dimension_is_refused(local_embedder, tmp_path):
    other = Gallery(local_embedder.spec.embedding_dim + 1)
    other.add(np.eye(3, local_embedder.spec.embedding_dim + 1, dtype=np.float32), [1, 2, 3])
    other.save(tmp_path / "g.npz")
    with pytest.raises(InputError, match="embed it again"):
        GalleryService(local_embedder, local_embedder.spec, tmp_path / "g.npz")


def test_add_without_a_gallery_file_is_refused(local_embedder):
    with pytest.raises(InputError, match="--gallery"):
        service = GalleryService(local_embedder, local_embedder.spec, None)
        service.add({"images": pixels(1, seed=0), "ids": np.array([1])})


def test_serve_command_with_a_missing_artefact_exits_2(tmp_path, capsys, monkeypatch):
    from serve.__main__ import main

    monkeypatch.setenv("LD_LIBRARY_PATH", "")  # the command edits it for tritonserver; keep the test's env
    assert main([str(tmp_path / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_rows_the_service_adds_are_described_in_the_same_file(local_embedder, gallery_images, tmp_path):
    """gallery_add on a gallery that records its images keeps one row path per row ("" for pixels)."""
    path = tmp_path / "g.npz"
    gallery = Gallery(local_embedder.spec.embedding_dim)
    gallery.images_root = str(tmp_path)
    gallery.add(local_embedder(gallery_images[:4]), [0, 0, 1, 1], paths=["a.png", "b.png", "c.png", "d.png"])
    gallery.save(path)
    service = GalleryService(local_embedder, local_embedder.spec, path)
    assert service.add({"images": pixels(2, seed=1), "ids": np.array([5, 6], np.int64)})["count"].tolist() == [6]
    saved = Gallery.load(path)
    assert saved.paths == ["a.png", "b.png", "c.png", "d.png", "", ""] and saved.images_root == str(tmp_path)


def test_search_follows_the_gallery_file_another_process_saved(local_embedder, gallery_images, tmp_path):
    """search and gallery_add are separate Triton model processes: the saved file is what they share."""
    path = write_gallery(tmp_path / "g.npz", local_embedder, gallery_images)
    searcher = GalleryService(local_embedder, local_embedder.spec, path)
    adder = GalleryService(local_embedder, local_embedder.spec, path)
    new = pixels(2, seed=3)
    assert adder.add({"images": new, "ids": np.array([77, 78], np.int64)})["count"].tolist() == [len(gallery_images) + 2]
    found = searcher.search({"images": new, "k": np.array([1], np.int32)})
    assert found["ids"][:, 0].tolist() == [77, 78] and len(searcher.gallery) == len(gallery_images) + 2


def test_settings_travel_through_the_environment():
    from serve.triton_models import Settings

    settings = Settings(backend="ort", device="cpu", precision=None, gallery="/g.npz")
    env = settings.to_env()
    assert env["JLML_PRECISION"] == "" and Settings.from_env(env) == settings
    assert Settings.from_env({}) == Settings()


def test_k_is_bounded_before_the_answer_is_allocated(local_embedder, gallery_images, tmp_path):
    """k beyond the gallery pads only up to MAX_PADDED_K; k = 10**6 on 40 rows is refused, not 10**6
    columns (k = 10**9 OOM-killed the server), and k up to the gallery's rows is always answered."""
    from engine.client import MAX_PADDED_K

    service = GalleryService(local_embedder, local_embedder.spec, write_gallery(tmp_path / "g.npz", local_embedder,
                                                                               gallery_images))
    query = {"embeddings": local_embedder(pixels(1, seed=2))}
    for k in (10**6, MAX_PADDED_K + 1, 2**31 - 1):
        with pytest.raises(InputError, match=f"k={k} is more than the gallery's {len(gallery_images)} rows"):
            service.search({**query, "k": np.array([k], np.int32)})
    padded = service.search({**query, "k": np.array([MAX_PADDED_K], np.int32)})
    assert padded["ids"].shape == (1, MAX_PADDED_K) and (padded["ids"][0, len(gallery_images):] == -1).all()


def test_search_without_query_or_k_says_what_to_send(local_embedder):
    service = GalleryService(local_embedder, local_embedder.spec, None)
    with pytest.raises(InputError, match="missing inputs: send 'k'.*and one of 'images'"):
        service.search({})
    with pytest.raises(InputError, match="missing input 'k'"):
        service.search({"embeddings": np.zeros((1, local_embedder.spec.embedding_dim), np.float32)})
    with pytest.raises(InputError, match="search batch of 0, expected 1..16"):
        service.search({"embeddings": np.zeros((0, local_embedder.spec.embedding_dim), np.float32),
                        "k": np.array([1], np.int32)})



def test_service_refuses_a_gallery_another_model_embedded(local_embedder, gallery_images, tmp_path):
    """search and gallery_add load the file themselves (a plain tritonserver has no CLI check before
    them): rows of another model of the same size once gave meaningless ranks."""
    from engine import SpecMismatchError
    from engine.search.file import model_fingerprint
    from serve.models import OVERRIDE

    theirs, ours = other_model(local_embedder.spec), model_fingerprint(local_embedder.spec)
    path = write_gallery(tmp_path / "g.npz", local_embedder, gallery_images, fingerprint=theirs)
    with pytest.raises(SpecMismatchError) as refused:
        GalleryService(local_embedder, local_embedder.spec, path, artifact="artefact A")
    assert theirs[:16] in str(refused.value) and ours[:16] in str(refused.value) and OVERRIDE in str(refused.value)
    service = GalleryService(local_embedder, local_embedder.spec, path, allow_other_model=True)
    assert len(service.gallery) == len(gallery_images)


def test_gallery_add_stamps_a_new_gallery_with_the_artefacts_model(local_embedder, gallery_images, tmp_path):
    from engine.search.file import model_fingerprint

    new = tmp_path / "new.npz"
    service = GalleryService(local_embedder, local_embedder.spec, new)
    service.add({"images": pixels(2, seed=1), "ids": np.array([5, 6], np.int64)})
    assert Gallery.load(new).model_fingerprint == model_fingerprint(local_embedder.spec)
    unknown = write_gallery(tmp_path / "old.npz", local_embedder, gallery_images)  # rows of an unknown model
    GalleryService(local_embedder, local_embedder.spec, unknown).add({"images": pixels(2, seed=1),
                                                                       "ids": np.array([5, 6], np.int64)})
    assert Gallery.load(unknown).model_fingerprint is None


def test_a_gallery_that_records_no_model_is_served_with_one_warning(local_embedder, gallery_images, tmp_path,
                                                                     caplog):
    import logging

    path = write_gallery(tmp_path / "g.npz", local_embedder, gallery_images)
    with caplog.at_level(logging.WARNING, logger="engine.gallery"):
        searcher = GalleryService(local_embedder, local_embedder.spec, path, warn=True)
        GalleryService(local_embedder, local_embedder.spec, path, warn=False).add(
            {"images": pixels(2, seed=1), "ids": np.array([5, 6], np.int64)})
        searcher.search({"images": pixels(1, seed=2), "k": np.array([1], np.int32)})  # reloads the file
    assert caplog.text.count("records no model fingerprint") == 1, caplog.text


def test_allow_other_model_travels_through_the_environment():
    from serve.triton_models import Settings

    assert Settings(allow_other_model=True).to_env()["JLML_ALLOW_OTHER_MODEL"] == "1"
    assert Settings.from_env(Settings(allow_other_model=True).to_env()).allow_other_model is True
    assert Settings.from_env(Settings().to_env()) == Settings()
    assert Settings.from_env({"JLML_ALLOW_OTHER_MODEL": "false"}).allow_other_model is False
    with pytest.raises(InputError, match="JLML_ALLOW_OTHER_MODEL='maybe', expected 1 or 0"):
        Settings.from_env({"JLML_ALLOW_OTHER_MODEL": "maybe"})


def test_onnx_runtime_spin_waiting_is_on_in_the_server_unless_turned_off():
    from serve.__main__ import build_parser
    from serve.server import ServerOptions
    from serve.triton_models import Settings

    assert Settings.from_env(Settings().to_env()).spin_wait is True and ServerOptions().ort_spin is True
    assert Settings.from_env(Settings(spin_wait=False).to_env()).spin_wait is False
    assert Settings.from_env({"JLML_ORT_SPIN": "0"}).spin_wait is False
    assert build_parser().parse_args(["art", "--no-ort-spin"]).ort_spin is False
    with pytest.raises(InputError, match="JLML_ORT_SPIN='fast', expected 1 or 0.*sleep"):
        Settings.from_env({"JLML_ORT_SPIN": "fast"})
