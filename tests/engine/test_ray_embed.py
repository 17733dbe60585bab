"""Gallery embedding on a local Ray cluster (2 CPUs): the in-process result exactly, even when a worker dies."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ray = pytest.importorskip("ray", reason="the Ray embedding tests need ray[data] (pip install 'jlml-engine[ray]')")
pytest.importorskip("ray.data")

from _local_ray import start_local_ray  # noqa: E402
from _ray_faults import KilledOnce  # noqa: E402

from engine import Embedder  # noqa: E402
from engine.embed import embed_paths  # noqa: E402
from engine.embed import main as embed_main  # noqa: E402
from engine.gallery import read_gallery_file  # noqa: E402
from engine.images import list_images  # noqa: E402
from engine.ray_embed import RayOptions, embed_with_ray  # noqa: E402

pytestmark = pytest.mark.slow
IMAGES = 300
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def ray_cluster():
    """A local 2-CPU cluster whose workers import this checkout and this folder's fault module."""
    start_local_ray(2, ROOT, Path(__file__).parent)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def folder(tmp_path_factory, make_images):
    root = tmp_path_factory.mktemp("ray-crops")
    for n, pixels in enumerate(make_images(IMAGES, seed=9)):
        Image.fromarray(pixels).save(root / f"{n // 4:04d}_c{n % 3 + 1}s1_{n:06d}_00.png")
    return root


@pytest.fixture(scope="module")
def in_process(folder, artifact_dir):
    with Embedder(artifact_dir, backend="ort", device="cpu") as embedder:
        return embed_paths(list_images(folder), embedder, embedder.spec.image_shape, progress=False)


OPTIONS = RayOptions(workers=2, backend="ort", device="cpu", shard_size=50)  # 6 shards


def test_ray_gives_the_in_process_embeddings_and_the_cli_the_same_gallery(ray_cluster, folder, artifact_dir,
                                                                           in_process, tmp_path):
    embeddings, kept = embed_with_ray(list_images(folder), artifact_dir, tmp_path / "shards", OPTIONS)
    assert kept == in_process[1] == list(range(IMAGES))
    np.testing.assert_array_equal(embeddings, in_process[0])
    assert not (tmp_path / "shards").exists()

    local, remote = tmp_path / "local.npz", tmp_path / "ray.npz"
    assert embed_main([str(folder), "--artifact", str(artifact_dir), "--out", str(local), "--no-progress"]) == 0
    assert embed_main([str(folder), "--artifact", str(artifact_dir), "--out", str(remote), "--ray",
                       "--ray-workers", "2", "--backend", "ort", "--device", "cpu"]) == 0
    (_, want), (_, got) = read_gallery_file(local), read_gallery_file(remote)
    for key in ("embeddings", "ids", "cams"):
        np.testing.assert_array_equal(got[key], want[key])


def test_a_worker_killed_mid_shard_still_gives_the_full_gallery(ray_cluster, folder, artifact_dir, in_process,
                                                                 tmp_path):
    embeddings, kept = embed_with_ray(list_images(folder), artifact_dir, tmp_path / "shards", OPTIONS,
                                      worker=KilledOnce)
    assert (tmp_path / "killed-once").exists(), "no worker was killed: the test proved nothing"
    assert kept == list(range(IMAGES)) and len(set(kept)) == IMAGES
    np.testing.assert_array_equal(embeddings, in_process[0])


def test_ray_benchmark_reports_equal_results_per_mode(ray_cluster, artifact_dir, tmp_path):
    """benchmarks.ray_embed on this module's cluster (a second cluster would double the start-up)."""
    import json

    from benchmarks.ray_embed import main as bench_main

    assert bench_main(["--artifact", str(artifact_dir), "--out", str(tmp_path), "--images", "40", "--workers", "1", "2",
                       "--rounds", "1", "--shard-size", "16"]) == 0
    rows = json.loads((tmp_path / "ray_embed.json").read_text())["results"]
    assert [r["mode"] for r in rows] == ["in-process", "ray-1", "ray-2"] and all(r["equal"] for r in rows)
    assert rows[0]["vs_in_process"] == 1.0 and rows[1]["scaling_vs_1_worker"] == 1.0


def test_shards_of_the_same_run_are_kept_and_others_removed(tmp_path, artifact_dir):
    from engine.ray_embed import _manifest, prepare_shard_dir, shard_path

    paths = [tmp_path / f"{n}.png" for n in range(5)]
    folder = tmp_path / "shards"
    prepare_shard_dir(folder, _manifest(paths, artifact_dir, 2), paths)
    shard_path(folder, 0, 2).write_bytes(b"done")
    prepare_shard_dir(folder, _manifest(paths, artifact_dir, 2), paths)
    assert shard_path(folder, 0, 2).exists()  # same images, artefact and cut: the run resumes
    prepare_shard_dir(folder, _manifest(paths[:4], artifact_dir, 2), paths[:4])
    assert not shard_path(folder, 0, 2).exists()  # other images: stale shards go
    assert (folder / "paths.txt").read_text().splitlines() == [str(p.resolve()) for p in paths[:4]]


@pytest.mark.parametrize("options,reason", [
    (RayOptions(workers=1, gpus_per_worker=1), "--gpus-per-worker 1 fits on no node: the cluster has 2 CPUs and 0 GPUs"),
    (RayOptions(workers=1, cpus_per_worker=64), "--cpus-per-worker 64 fits on no node: the cluster has 2 CPUs"),
    (RayOptions(workers=3, cpus_per_worker=1), "--ray-workers 3 x --cpus-per-worker 1 = 3 CPUs: the cluster has 2"),
])
def test_workers_the_cluster_cannot_place_are_refused_before_submitting(ray_cluster, folder, artifact_dir, tmp_path,
                                                                        options, reason):
    """Ray would wait for them forever."""
    from engine.errors import BackendUnavailableError

    with pytest.raises(BackendUnavailableError, match=reason.replace("+", r"\+")):
        embed_with_ray(list_images(folder)[:4], artifact_dir, tmp_path / "shards", options)
    assert not (tmp_path / "shards").exists()


def test_a_pool_that_cannot_start_is_a_bounded_wait(ray_cluster, folder, artifact_dir, tmp_path):
    """The cluster's CPUs are held by another job: the actors wait start_timeout_s, then a clear error."""
    from engine.errors import BackendUnavailableError

    @ray.remote(num_cpus=2)
    class Hog:
        def ready(self) -> bool:
            return True

    hog = Hog.remote()
    ray.get(hog.ready.remote())
    try:
        with pytest.raises(BackendUnavailableError, match=r"did not start 1 worker\(s\) of 1 CPUs and 0 GPUs in 3 s"):
            embed_with_ray(list_images(folder)[:4], artifact_dir, tmp_path / "shards",
                           RayOptions(workers=1, backend="ort", device="cpu", start_timeout_s=3))
    finally:
        ray.kill(hog)
