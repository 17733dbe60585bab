"""A sharded gallery behind a real server: Triton's search and gallery_add processes share one set of
shard actors, and the actors end when the server stops (the last model to close them)."""
from __future__ import annotations

import signal
import time

import pytest
from _local_ray import start_local_ray
from _serving import gallery_labels, pixels

from engine.client import TritonClient
from engine.search.file import model_fingerprint
from serve.process import ServerProcess

ray = pytest.importorskip("ray", reason="the sharded gallery needs ray (pip install 'jlml-engine[ray]')")

from engine.sharded import ShardedGallery, ShardOptions  # noqa: E402
from engine.sharded.gallery import actor_namespace  # noqa: E402

pytestmark = [pytest.mark.serve, pytest.mark.slow]


def shard_actors(namespace: str) -> list[str]:
    return [a["name"] for a in ray.util.list_named_actors(all_namespaces=True) if a["namespace"] == namespace]


def test_search_and_gallery_add_share_the_shard_actors_which_end_with_the_server(
        serve_artifact, local_embedder, gallery_images, tmp_path):
    start_local_ray(4)
    try:
        path, spec = tmp_path / "g.json", local_embedder.spec
        built = ShardedGallery.create(path, spec.embedding_dim, 3, options=ShardOptions(cpus=0),
                                      model_fingerprint=model_fingerprint(spec))
        built.add(local_embedder(gallery_images), *gallery_labels(len(gallery_images)))
        built.close()
        namespace = actor_namespace(path)
        server = ServerProcess.start(serve_artifact, tmp_path / "server.log", gallery=path,
                                     extra=("--backend", "ort", "--device", "cpu", "--ray",
                                            ray.get_runtime_context().gcs_address))
        try:
            assert len(shard_actors(namespace)) == 3, shard_actors(namespace)  # not one set per model
            added = pixels(2, seed=31)
            with TritonClient(server.grpc) as c:
                assert c.add(added, ids=[900, 901]) == len(gallery_images) + 2
                _, ids = c.search(1, images=added)
            assert ids[:, 0].tolist() == [900, 901]
        finally:
            assert server.stop(signal.SIGINT) == 0, server.log_tail()
        deadline = time.monotonic() + 30
        while shard_actors(namespace):
            assert time.monotonic() < deadline, f"the server stopped, its shard actors did not: {shard_actors(namespace)}"
            time.sleep(0.5)
    finally:
        ray.shutdown()
