"""ShardedGallery on a local Ray cluster (3 shards): one in-process Gallery's answers, files checked at load."""
from __future__ import annotations

import json
import shutil
import time

import numpy as np
import pytest

ray = pytest.importorskip("ray", reason="the sharded gallery tests need ray (pip install 'jlml-engine[ray]')")

from _sharded_data import DIM, OPTIONS, SHARDS, assert_same, in_process, local_ray, rows  # noqa: E402

from engine.errors import ArtifactError, InputError  # noqa: E402
from engine.gallery import Gallery  # noqa: E402
from engine.sharded import Manifest, ShardedGallery, merge_topk  # noqa: E402
from engine.sharded.gallery import actor_namespace  # noqa: E402

pytestmark = pytest.mark.slow
ray_cluster = pytest.fixture(scope="module")(local_ray)


def check_equal(sharded: ShardedGallery, gallery: Gallery, emb: np.ndarray, ids: np.ndarray,
                cams: np.ndarray) -> None:
    """Same ids and distances as the in-process gallery: plain, past the gallery's size (padding), and
    excluding same-id-same-camera rows."""
    queries = np.random.default_rng(5).standard_normal((30, DIM)).astype(np.float32)
    queries[0] = emb[0]  # the six-way tie at distance 0
    for k in (1, 10, len(gallery) + 5):
        assert_same(sharded.search(queries, k), gallery.search(queries, k))
    excl = {"query_ids": ids[:40], "query_cams": cams[:40]}
    assert_same(sharded.search(emb[:40], 10, **excl), gallery.search(emb[:40], 10, **excl))


@pytest.fixture(scope="module")
def saved(ray_cluster, tmp_path_factory):
    """A 3-shard gallery built by two adds, saved under its manifest."""
    folder = tmp_path_factory.mktemp("sharded")
    sharded = ShardedGallery.create(folder / "g.json", DIM, SHARDS, options=OPTIONS)
    first, second = rows(), rows(100, seed=1)
    sharded.add(*first)
    sharded.add(*second)
    return sharded, in_process(first, second), np.concatenate([first[0], second[0]]), folder / "g.json"


def test_sharded_search_equals_one_gallery_with_and_without_exclusion(saved):
    sharded, gallery, emb, _ = saved
    assert len(sharded) == len(gallery) == 500 and sharded.shards == SHARDS
    ids, cams = rows()[1:]
    check_equal(sharded, gallery, emb, ids, cams)


def test_every_row_lives_on_the_shard_of_its_id_and_files_match_the_manifest(saved):
    _, _, _, path = saved
    manifest = Manifest.read(path)
    assert manifest.version == 2 and manifest.rows == 500
    names = sorted(p.name for p in path.parent.glob("g.shard-*.npz"))
    assert names == sorted(s.file for s in manifest.shards)  # the first add's files are gone
    for index, entry in enumerate(manifest.shards):
        shard = Gallery.load(path.parent / entry.file)
        assert len(shard) == entry.rows > 0
        _, ids = shard.search(np.zeros((1, DIM), np.float32), entry.rows)
        assert set((ids[0] % SHARDS).tolist()) == {index}


def test_save_load_round_trip_answers_the_same(saved, tmp_path):
    sharded, gallery, emb, path = saved
    reloaded = ShardedGallery.load(path, options=OPTIONS)
    ids, cams = rows()[1:]
    check_equal(reloaded, gallery, emb, ids, cams)
    reloaded.close()
    sharded.save(tmp_path / "copy.json")  # elsewhere: new files and a new manifest
    copy = ShardedGallery.load(tmp_path / "copy.json", options=OPTIONS)
    assert Manifest.read(tmp_path / "copy.json").uuid != Manifest.read(path).uuid
    check_equal(copy, gallery, emb, ids, cams)
    copy.close()


def test_a_missing_or_foreign_shard_file_is_a_clear_error_at_load(saved, tmp_path):
    _, _, _, path = saved
    manifest = Manifest.read(path)
    copy = tmp_path / "g.json"
    shutil.copy(path, copy)
    for entry in manifest.shards:
        shutil.copy(path.parent / entry.file, tmp_path / entry.file)
    (tmp_path / manifest.shards[1].file).unlink()
    with pytest.raises(ArtifactError, match=r"shard 1 of .*g\.json: file .* is missing"):
        ShardedGallery.load(copy, options=OPTIONS)
    shutil.copy(path.parent / manifest.shards[0].file, tmp_path / manifest.shards[1].file)  # another shard's
    with pytest.raises(ArtifactError, match="shard 1 of .* bytes|shard 1 of .* sha256"):
        ShardedGallery.load(copy, options=OPTIONS)
    shutil.copy(path.parent / manifest.shards[1].file, tmp_path / manifest.shards[1].file)
    body = json.loads(copy.read_text())
    body["dim"] = 32
    copy.write_text(json.dumps(body))
    with pytest.raises(ArtifactError, match=r"holds \(dim, storage, rows\) \(16, 'float32'"):
        ShardedGallery.load(copy, options=OPTIONS)


def test_inputs_are_refused_with_gallerys_messages(saved):
    sharded = saved[0]
    with pytest.raises(InputError, match="queries must have shape"):
        sharded.search(np.zeros((2, DIM + 1), np.float32), 3)
    with pytest.raises(InputError, match="k must be a positive int"):
        sharded.search(np.zeros((2, DIM), np.float32), 0)
    with pytest.raises(InputError, match="ids must be an integer array"):
        sharded.add(np.zeros((2, DIM), np.float32), np.array([1.5, 2.5]))
    assert len(sharded) == 500


def test_an_empty_sharded_gallery_pads_like_gallery(ray_cluster, tmp_path):
    sharded = ShardedGallery.create(tmp_path / "e.json", DIM, SHARDS, options=OPTIONS)
    assert_same(sharded.search(np.ones((2, DIM), np.float32), 3), Gallery(DIM).search(np.ones((2, DIM), np.float32), 3))
    sharded.close()


def test_merge_keeps_distance_then_id_order_and_padding_last():
    a = (np.array([[0.5, 1.0, np.inf]], np.float32), np.array([[9, 3, -1]]))
    b = (np.array([[0.5, 0.7, 1.0]], np.float32), np.array([[4, 8, 2]]))
    d, i = merge_topk([a, b], 5)
    assert i.tolist() == [[4, 9, 8, 2, 3]] and d.tolist() == [[0.5, 0.5, 0.699999988079071, 1.0, 1.0]]
    assert merge_topk([a, (np.full((1, 3), np.inf, np.float32), np.full((1, 3), -1))], 4)[1].tolist() == [[9, 3, -1, -1]]


def test_create_refuses_a_non_json_manifest_and_bad_shard_counts(tmp_path):
    with pytest.raises(InputError, match="manifest is a .json file"):
        ShardedGallery.create(tmp_path / "g.npz", DIM, 2)
    with pytest.raises(InputError, match="shards must be a positive int"):
        ShardedGallery.create(tmp_path / "g.json", DIM, 0)


def test_approximate_shards_answer_and_refuse_exclusion_with_gallerys_error(ray_cluster, tmp_path):
    """method="ivf" on every shard: each row finds itself; exclusion is refused by the shard, as Gallery does."""
    emb, ids, cams = rows(600, seed=7)
    sharded = ShardedGallery.create(tmp_path / "ivf.json", DIM, SHARDS, method="ivf", options=OPTIONS)
    sharded.add(emb[6:], ids[6:], cams[6:])
    assert Manifest.read(tmp_path / "ivf.json").method == "ivf"
    distances, found = sharded.search(emb[6:56], 5)
    np.testing.assert_array_equal(found[:, 0], ids[6:56])
    assert np.all(distances[:, 0] < 1e-4)
    with pytest.raises(InputError, match="cannot skip same-id-same-camera rows"):
        sharded.search(emb[6:10], 5, query_ids=ids[6:10], query_cams=cams[6:10])
    sharded.close()


def test_two_handles_on_one_manifest_share_the_actors_and_the_last_close_ends_them(ray_cluster, tmp_path):
    """As the server's search and gallery_add processes: one set of actors, an add seen with no reload."""
    first, second = rows(), rows(60, seed=2)
    adder = ShardedGallery.create(tmp_path / "g.json", DIM, SHARDS, options=OPTIONS)
    adder.add(*first)
    searcher = ShardedGallery.load(tmp_path / "g.json", options=OPTIONS)
    assert searcher.pids() == adder.pids()
    assert [a._actor_id for a in searcher._actors] == [a._actor_id for a in adder._actors]
    adder.add(*second)
    queries = second[0][:20]
    assert len(searcher) == 460  # the manifest followed by a stat, no actor reloaded
    assert_same(searcher.search(queries, 10), in_process(first, second).search(queries, 10))
    pids = adder.pids()
    adder.close()  # the searcher still holds them: they stay
    assert searcher.pids() == pids
    assert_same(searcher.search(queries, 10), in_process(first, second).search(queries, 10))
    namespace = actor_namespace(tmp_path / "g.json")
    name = f"shard-000-{Manifest.read(tmp_path / 'g.json').uuid}"
    ray.get_actor(name, namespace=namespace)
    searcher.close()  # the last one
    deadline = time.monotonic() + 30
    while name in [a["name"] for a in ray.util.list_named_actors(all_namespaces=True)]:
        assert time.monotonic() < deadline, "the last close left the actors running"
        time.sleep(0.2)


def test_a_handle_whose_actors_another_ended_starts_them_again(ray_cluster, tmp_path):
    emb, ids, cams = rows()
    one = ShardedGallery.create(tmp_path / "g.json", DIM, SHARDS, options=OPTIONS)
    one.add(emb, ids, cams)
    other, before = ShardedGallery.load(tmp_path / "g.json", options=OPTIONS), one.pids()
    other.shutdown()  # e.g. an operator ending a crashed server's actors
    assert_same(one.search(emb[:10], 5), in_process((emb, ids, cams)).search(emb[:10], 5))
    assert not set(one.pids()) & set(before)  # new actors, loaded from the manifest's files
    one.close()


def test_the_manifest_records_the_model_through_adds_and_saves(ray_cluster, tmp_path):
    fingerprint = "ab" * 32
    sharded = ShardedGallery.create(tmp_path / "g.json", DIM, SHARDS, options=OPTIONS, model_fingerprint=fingerprint)
    assert Manifest.read(tmp_path / "g.json").model_fingerprint == fingerprint == sharded.model_fingerprint
    sharded.add(*rows(30))
    sharded.save(tmp_path / "copy.json")
    assert Manifest.read(tmp_path / "g.json").model_fingerprint == fingerprint
    assert Manifest.read(tmp_path / "copy.json").model_fingerprint == fingerprint
    sharded.close()
    with pytest.raises(InputError, match="model_fingerprint must be 64 hex digits"):
        ShardedGallery.create(tmp_path / "h.json", DIM, SHARDS, model_fingerprint="abc")


def test_a_manifest_with_a_malformed_model_fingerprint_is_refused(tmp_path):
    Manifest.new(DIM, "auto", "float32", 2).write(tmp_path / "g.json")
    assert Manifest.read(tmp_path / "g.json").model_fingerprint is None  # as manifests written before it
    body = json.loads((tmp_path / "g.json").read_text())
    body["model_fingerprint"] = "not-a-fingerprint"
    (tmp_path / "g.json").write_text(json.dumps(body))
    with pytest.raises(ArtifactError, match="records model_fingerprint 'not-a-fingerprint', expected 64 hex"):
        Manifest.read(tmp_path / "g.json")


def test_add_files_has_the_shards_read_the_rows_and_answers_as_add(ray_cluster, tmp_path):
    """The shards read embedding files (engine.ray_embed's chunks) themselves; rows 7 and 250 were unreadable."""
    emb, ids, cams = rows()
    kept = np.setdiff1d(np.arange(len(ids)), [7, 250])
    files = []
    for n, part in enumerate(np.array_split(kept, 3)):
        np.savez(tmp_path / f"chunk-{n}.npz", kept=part, embeddings=emb[part])
        files.append(tmp_path / f"chunk-{n}.npz")
    paths = [f"img{i}.png" for i in range(len(ids))]
    sharded = ShardedGallery.create(tmp_path / "g.json", DIM, SHARDS, options=OPTIONS)
    np.testing.assert_array_equal(sharded.add_files(files, ids, cams, paths=paths), kept)
    assert len(sharded) == len(kept)
    check_equal(sharded, in_process((emb[kept], ids[kept], cams[kept])), emb, ids, cams)
    shard = Gallery.load(tmp_path / Manifest.read(tmp_path / "g.json").shards[0].file)
    assert set(shard.paths) <= {paths[i] for i in kept} and len(shard.paths) == len(shard)
    with pytest.raises(InputError, match="add_files got 400 ids, 399 cams"):
        sharded.add_files(files, ids, cams[:-1])
    sharded.close()
