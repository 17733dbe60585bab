"""search and gallery_add over a sharded gallery (a .json manifest, engine.sharded) without a server:
the service the Triton models wrap, on a local Ray cluster."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from _local_ray import start_local_ray
from _serving import gallery_labels, other_model, pixels

from engine import ArtifactError, InputError, SpecMismatchError
from engine.gallery import Gallery
from engine.search.file import model_fingerprint
from serve.models import GalleryService

ray = pytest.importorskip("ray", reason="the sharded gallery needs ray (pip install 'jlml-engine[ray]')")

from engine.sharded import Manifest, ShardedGallery, ShardOptions  # noqa: E402

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
OPTIONS = ShardOptions(cpus=0)  # two services of 3 shards each on a 2-CPU cluster


@pytest.fixture(scope="module")
def address():
    yield start_local_ray(2, ROOT)
    ray.shutdown()


def named_actors() -> set[str]:
    return {a["name"] for a in ray.util.list_named_actors(all_namespaces=True)}


def test_search_and_add_over_shards_answer_as_one_gallery(address, local_embedder, gallery_images, tmp_path):
    dim, (ids, cams) = local_embedder.spec.embedding_dim, gallery_labels(len(gallery_images))
    sharded = ShardedGallery.create(tmp_path / "g.json", dim, 3, options=OPTIONS)
    sharded.add(local_embedder(gallery_images), ids, cams)
    reference = Gallery(dim)
    reference.add(local_embedder(gallery_images), ids, cams)
    adder = GalleryService(local_embedder, local_embedder.spec, tmp_path / "g.json", ray=address, shard_options=OPTIONS)
    searcher = GalleryService(local_embedder, local_embedder.spec, tmp_path / "g.json", ray=address,
                              shard_options=OPTIONS)  # Triton runs search and gallery_add in two processes
    assert adder.gallery.pids() == searcher.gallery.pids() == sharded.pids()  # one set of actors, shared
    queries = pixels(5, seed=2)
    got = searcher.search({"images": queries, "k": np.array([7], np.int32)})
    want = reference.search(local_embedder(queries), 7)
    np.testing.assert_array_equal(got["ids"], want[1])
    np.testing.assert_array_equal(got["distances"], want[0])

    added = pixels(4, seed=3)
    answer = adder.add({"images": added, "ids": np.array([100, 101, 102, 103], np.int64)})
    assert answer["count"].tolist() == [len(gallery_images) + 4]
    reference.add(local_embedder(added), [100, 101, 102, 103])
    got = searcher.search({"images": added, "k": np.array([3], np.int32)})  # follows the manifest
    want = reference.search(local_embedder(added), 3)
    np.testing.assert_array_equal(got["ids"], want[1])
    assert got["ids"][:, 0].tolist() == [100, 101, 102, 103]
    adder.close()
    sharded.close()  # the searcher holds the actors still
    assert searcher.search({"images": added, "k": np.array([1], np.int32)})["ids"][:, 0].tolist() == [100, 101, 102, 103]
    searcher.close()


def test_a_failed_reload_is_tried_again_at_the_next_request(address, local_embedder, gallery_images, tmp_path,
                                                            monkeypatch):
    """An add in another process can remove a file while this one reloads: the next request tries again."""
    dim, (ids, cams) = local_embedder.spec.embedding_dim, gallery_labels(len(gallery_images))
    sharded = ShardedGallery.create(tmp_path / "g.json", dim, 3, options=OPTIONS)
    sharded.add(local_embedder(gallery_images), ids, cams)
    service = GalleryService(local_embedder, local_embedder.spec, tmp_path / "g.json", ray=address,
                             shard_options=OPTIONS)
    sharded.add(local_embedder(pixels(2, seed=4)), [200, 201])  # "another process" adds
    request = {"images": pixels(1, seed=4), "k": np.array([1], np.int32)}
    with monkeypatch.context() as patch:
        patch.setattr(ShardedGallery, "reload", lambda self: (_ for _ in ()).throw(ArtifactError("file gone")))
        with pytest.raises(ArtifactError, match="file gone"):
            service.search(request)
    assert service.search(request)["ids"].tolist() == [[200]]
    service.close()
    sharded.close()


def test_a_manifest_without_a_ray_address_is_refused(local_embedder, tmp_path):
    with pytest.raises(InputError, match="--ray ADDRESS"):
        GalleryService(local_embedder, local_embedder.spec, tmp_path / "g.json")


def test_the_ray_address_travels_from_the_command_to_the_models(monkeypatch):
    from serve import __main__ as command
    from serve.triton_models import Settings

    seen = {}
    monkeypatch.setattr(command, "serve", lambda artifact, gallery, opts: seen.update(opts=opts) or True)
    assert command.main(["art", "--gallery", "g.json", "--ray", "ray://head:10001"]) == 0
    assert seen["opts"].ray == "ray://head:10001"
    env = Settings(gallery="/g.json", ray="ray://head:10001").to_env()
    assert env["JLML_RAY"] == "ray://head:10001" and Settings.from_env(env).ray == "ray://head:10001"


def test_serving_a_manifest_without_ray_exits_2_before_starting(tmp_path, capsys, monkeypatch):
    from serve import __main__ as command

    monkeypatch.setattr(command, "serve", lambda *a: pytest.fail("the server was started"))
    assert command.main([str(tmp_path), "--gallery", str(tmp_path / "g.json")]) == 2
    assert "--ray ADDRESS" in capsys.readouterr().err


def test_a_sharded_gallery_of_another_model_is_refused_unless_allowed(address, local_embedder, gallery_images,
                                                                      tmp_path):
    """As for the one-file gallery: the manifest's model is checked before any shard actor starts."""
    theirs, ours = other_model(local_embedder.spec), model_fingerprint(local_embedder.spec)
    dim, (ids, cams) = local_embedder.spec.embedding_dim, gallery_labels(len(gallery_images))
    sharded = ShardedGallery.create(tmp_path / "g.json", dim, 3, options=OPTIONS, model_fingerprint=theirs)
    sharded.add(local_embedder(gallery_images), ids, cams)
    sharded.close()
    before = named_actors()
    with pytest.raises(SpecMismatchError) as refused:
        GalleryService(local_embedder, local_embedder.spec, tmp_path / "g.json", ray=address, shard_options=OPTIONS)
    assert theirs[:16] in str(refused.value) and ours[:16] in str(refused.value)
    assert "--allow-other-model" in str(refused.value)
    assert named_actors() <= before  # refused before starting any
    service = GalleryService(local_embedder, local_embedder.spec, tmp_path / "g.json", ray=address,
                             shard_options=OPTIONS, allow_other_model=True)
    assert len(service.gallery) == len(gallery_images)
    service.close()


def test_gallery_add_records_the_artefacts_model_in_a_new_sharded_gallery(address, local_embedder, tmp_path):
    ShardedGallery.create(tmp_path / "g.json", local_embedder.spec.embedding_dim, 3, options=OPTIONS).close()
    assert Manifest.read(tmp_path / "g.json").model_fingerprint is None
    service = GalleryService(local_embedder, local_embedder.spec, tmp_path / "g.json", ray=address,
                             shard_options=OPTIONS)
    service.add({"images": pixels(2, seed=1), "ids": np.array([5, 6], np.int64)})
    assert Manifest.read(tmp_path / "g.json").model_fingerprint == model_fingerprint(local_embedder.spec)
    service.close()
