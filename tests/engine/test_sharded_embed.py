"""``python -m engine.embed ... --ray --shards N`` writes a sharded gallery whose answers are the one-file gallery's."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

ray = pytest.importorskip("ray", reason="the sharded gallery needs ray[data] (pip install 'jlml-engine[ray]')")
pytest.importorskip("ray.data")

from _sharded_data import local_ray  # noqa: E402

from engine import ray_embed  # noqa: E402
from engine.embed import artifact_fingerprint  # noqa: E402
from engine.embed import main as embed_main  # noqa: E402
from engine.gallery import Gallery  # noqa: E402
from engine.sharded import Manifest, ShardedGallery, ShardOptions  # noqa: E402

pytestmark = pytest.mark.slow
ray_cluster = pytest.fixture(scope="module")(local_ray)


def test_embed_writes_a_sharded_gallery_that_answers_as_the_one_file(ray_cluster, artifact_dir, make_images,
                                                                      tmp_path, monkeypatch):
    folder = tmp_path / "crops"
    folder.mkdir()
    for n, pixels in enumerate(make_images(60, seed=4)):
        Image.fromarray(pixels).save(folder / f"{n // 3:04d}_c{n % 3 + 1}s1_{n:06d}_00.png")
    common = [str(folder), "--artifact", str(artifact_dir), "--backend", "ort", "--device", "cpu", "--no-progress"]
    assert embed_main([*common, "--out", str(tmp_path / "one.npz")]) == 0
    monkeypatch.setattr(ray_embed, "merge_shards", lambda *a: pytest.fail("the driver gathered the embeddings"))
    assert embed_main([*common, "--out", str(tmp_path / "g.json"), "--ray", "--ray-workers", "2",
                       "--shards", "3"]) == 0  # the shard actors read the workers' files themselves
    assert not (tmp_path / ".g.json.shards").exists()  # the workers' files are removed after the add
    manifest = Manifest.read(tmp_path / "g.json")
    assert len(manifest.shards) == 3 and manifest.rows == 60 and manifest.images_root == str(folder.resolve())
    assert manifest.model_fingerprint == artifact_fingerprint(artifact_dir) is not None  # the model is recorded
    assert sorted(p.name for p in tmp_path.glob("g.shard-*.npz")) == sorted(s.file for s in manifest.shards)
    one, sharded = Gallery.load(tmp_path / "one.npz"), ShardedGallery.load(tmp_path / "g.json",
                                                                            options=ShardOptions(cpus=0))
    queries = np.random.default_rng(1).standard_normal((8, one.dim)).astype(np.float32)
    for got, want in zip(sharded.search(queries, 70), one.search(queries, 70), strict=True):
        np.testing.assert_array_equal(got, want)
    shard = Gallery.load(tmp_path / manifest.shards[1].file)  # each row keeps its image
    assert shard.images_root == str(folder.resolve()) and all(p.endswith(".png") for p in shard.paths)
    sharded.close()


def test_shards_need_a_json_manifest(artifact_dir, tmp_path, capsys):
    assert embed_main([str(tmp_path), "--artifact", str(artifact_dir), "--out", str(tmp_path / "g.npz"),
                       "--shards", "2"]) == 2
    assert "--out must end in .json" in capsys.readouterr().err
