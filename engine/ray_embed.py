"""Embed a large folder on a Ray cluster: Ray Data ``map_batches`` over an actor pool, one Embedder each.

The image list is cut into fixed shards (``shard_size`` paths; the same cut on every run). Each shard
is one Ray Data row; an actor (``EmbedShard``) decodes its images, embeds them and writes
``shard-START-STOP.npz`` atomically (engine.atomic), so a shard file is whole or absent. Ray Data
restarts a dead actor and retries its task (its actor defaults: ``max_restarts=-1``,
``max_task_retries=-1``): a retried shard rewrites the same file name, so nothing is half-written or
counted twice (tests/engine/test_ray_embed.py kills a worker mid-shard). The driver then merges the
shards in path order, checking that every one is there exactly once (``embed_with_ray``), or leaves
them on disk for a sharded gallery's actors to read (``embed_to_files``, engine.sharded's add_files). Shards already written by an
interrupted run over the same images and artefact are kept (the run resumes); others are removed.

Multi-machine runs: ``address`` is the cluster (``"auto"`` on a node of it, or ``ray://HOST:10001``);
every node needs this package, the artefact folder and the images at the same paths, and the shard
folder on storage the driver can read (a shared file system). ``ray`` is imported here only, never by
``import engine``; install the extra ``ray``.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .atomic import read_json_object, write_text, write_with
from .errors import ArtifactError, BackendUnavailableError
from .spec import ModelSpec

MANIFEST, PATHS = "manifest.json", "paths.txt"
RAY_CLIENT_PORT = 10001  # of a ray://HOST address without a port
PROBE_TIMEOUT_S = 5.0  # a cluster address that does not answer a TCP connect in this long is unreachable


@dataclass(frozen=True)
class RayOptions:
    """``address`` None starts a local cluster (``local_cpus`` CPUs, default: all); the rest is per actor.
    ``start_timeout_s`` bounds the wait for the actors to start (a cluster whose resources are taken)."""

    address: str | None = None
    workers: int = 2
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 0.0
    backend: str = "auto"
    device: str = "auto"
    precision: str | None = None  # None: the best the artefact has for the device (Embedder)
    shard_size: int = 256
    local_cpus: int | None = None
    start_timeout_s: int = 600


def shard_ranges(count: int, shard_size: int) -> list[tuple[int, int]]:
    return [(start, min(start + shard_size, count)) for start in range(0, count, shard_size)]


def shard_path(folder: Path, start: int, stop: int) -> Path:
    return folder / f"shard-{start:010d}-{stop:010d}.npz"


class EmbedShard:
    """A Ray Data actor: opens one Embedder, then embeds and writes one shard per row it is given."""

    def __init__(self, artifact: str, shard_dir: str, backend: str, device: str, precision: str | None) -> None:
        from .embedder import Embedder

        self.embedder = Embedder(artifact, backend=backend, device=device, precision=precision)
        self.shard_dir = Path(shard_dir)
        # Read from the shard folder, not passed as an argument: a restarted actor needs its constructor
        # arguments again, and a large list would live in Ray's object store only as long as the job.
        self.paths = (self.shard_dir / PATHS).read_text().splitlines()

    def __call__(self, rows: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        for start, stop in zip(rows["start"].tolist(), rows["stop"].tolist(), strict=True):
            self.write_shard(start, stop)
        return rows

    def embed(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        """Embeddings of the readable images of paths[start:stop] and their global indices."""
        from .images import load_images

        spec = self.embedder.spec
        pixels, loaded = load_images(self.paths[start:stop], spec.height, spec.width, warn=False)
        return self.embedder(pixels), np.asarray(loaded, np.int64) + start

    def write_shard(self, start: int, stop: int) -> None:
        embeddings, kept = self.embed(start, stop)

        def save(tmp: Path) -> None:
            with open(tmp, "wb") as fh:
                np.savez(fh, start=start, stop=stop, kept=kept, embeddings=embeddings)
        write_with(shard_path(self.shard_dir, start, stop), save)


def _manifest(paths: Sequence[Path], artifact: Path, shard_size: int) -> dict[str, Any]:
    digest = hashlib.sha256("\n".join(os.fspath(p) for p in paths).encode()).hexdigest()
    return {"count": len(paths), "paths_sha256": digest, "shard_size": shard_size,
            "onnx_sha256": ModelSpec.load(artifact).onnx_sha256}


def prepare_shard_dir(folder: Path, manifest: dict[str, Any], paths: Sequence[Path]) -> None:
    """Keep ``folder``'s shards only if they were written for the same images and artefact; write the
    image list the actors read."""
    if folder.exists():
        try:
            same = read_json_object(folder / MANIFEST, "shard manifest", "") == manifest
        except ArtifactError:
            same = False
        if not same:
            shutil.rmtree(folder)
    folder.mkdir(parents=True, exist_ok=True)
    write_text(folder / PATHS, "".join(f"{os.fspath(Path(p).resolve())}\n" for p in paths))
    write_text(folder / MANIFEST, json.dumps(manifest, indent=1) + "\n")


def read_shards(folder: Path, ranges: Sequence[tuple[int, int]], *keys: str) -> list[dict[str, np.ndarray]]:
    """``kept`` and ``keys`` of every shard in path order (an .npz member is read only when asked for);
    ArtifactError for a missing or wrong shard, or when no image of the run could be read."""
    out = []
    for start, stop in ranges:
        path = shard_path(folder, start, stop)
        try:
            with np.load(path) as shard:
                if (int(shard["start"]), int(shard["stop"])) != (start, stop):
                    raise ArtifactError(f"shard {path} holds rows {int(shard['start'])}..{int(shard['stop'])}")
                out.append({key: shard[key] for key in ("kept", *keys)})
        except (OSError, ValueError, KeyError) as exc:
            raise ArtifactError(f"shard {path} is missing or unreadable ({exc}); run the embedding again, "
                                "finished shards are kept") from exc
    if not any(len(s["kept"]) for s in out):
        raise ArtifactError(f"none of the images in {folder}'s run could be read; check the folder")
    return out


def merge_shards(folder: Path, ranges: Sequence[tuple[int, int]]) -> tuple[np.ndarray, list[int]]:
    """Embeddings and kept indices of every shard in path order."""
    shards = read_shards(folder, ranges, "embeddings")
    return np.concatenate([s["embeddings"] for s in shards]), np.concatenate([s["kept"] for s in shards]).tolist()


def _ray() -> Any:
    try:
        import ray
        import ray.data  # noqa: F401 - Ray Data ships as the ray[data] extra
    except ImportError as exc:
        raise BackendUnavailableError(f"--ray needs ray[data] ({exc}); pip install 'jlml-engine[ray]'") from exc
    return ray


def _probe(address: str | None) -> None:
    """A TCP connect to a cluster address with a port (``ray://HOST[:PORT]``, ``HOST:PORT``), so an
    unreachable one fails in seconds with its name instead of Ray's retries and a ConnectionError."""
    if address in (None, "auto"):
        return
    rest = address.split("://", 1)[1] if "://" in address else address
    host, _, port = rest.rpartition(":") if ":" in rest else (rest, "", "")
    if not port and not address.startswith("ray://"):
        return
    try:
        socket.create_connection((host.strip("[]"), int(port or RAY_CLIENT_PORT)), timeout=PROBE_TIMEOUT_S).close()
    except (OSError, ValueError) as exc:
        raise BackendUnavailableError(f"cannot reach the Ray cluster at {address} ({exc}); check the address "
                                      "(ray://HEAD:10001 for a remote one) and that the cluster runs") from exc


def connect(ray: Any, opts: RayOptions) -> bool:
    """Join the Ray session open in this process, or start/connect one; True if this call started it.
    A missing or unreachable cluster is a BackendUnavailableError naming the address."""
    if ray.is_initialized():
        return False
    _probe(opts.address)
    try:
        ray.init(address=opts.address, num_cpus=opts.local_cpus if opts.address is None else None)
    except ConnectionError as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise BackendUnavailableError(
            f"no Ray cluster at --ray {opts.address} ({reason}); start one with `ray start --head`, pass its "
            "address (ray://HEAD:10001), or --ray without a value for a local one") from exc
    return True


def check_resources(ray: Any, opts: RayOptions) -> None:
    """Refuse, before anything is submitted, workers the cluster can never place (Ray would wait for
    them forever): one actor's CPUs/GPUs on its largest node, all actors' in its totals."""
    nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
    total = ray.cluster_resources()
    has = (f"the cluster has {total.get('CPU', 0):g} CPUs and {total.get('GPU', 0):g} GPUs over {len(nodes)} "
           f"node(s), at most {max((n.get('CPU', 0) for n in nodes), default=0):g} CPUs and "
           f"{max((n.get('GPU', 0) for n in nodes), default=0):g} GPUs on one")
    for name, flag, each in (("CPU", "--cpus-per-worker", opts.cpus_per_worker),
                             ("GPU", "--gpus-per-worker", opts.gpus_per_worker)):
        if each > max((n.get(name, 0) for n in nodes), default=0):
            raise BackendUnavailableError(f"{flag} {each:g} fits on no node: {has}; lower {flag}")
        if each * opts.workers > total.get(name, 0):
            raise BackendUnavailableError(f"--ray-workers {opts.workers} x {flag} {each:g} = "
                                          f"{each * opts.workers:g} {name}s: {has}; lower either")


def _run(ray: Any, todo: list[tuple[int, int]], worker: type, artifact: Path, folder: Path, opts: RayOptions) -> None:
    """Embed the ``todo`` shards on an actor pool; a pool that does not start in ``opts.start_timeout_s``
    (the cluster's resources are taken) is a BackendUnavailableError, not an endless wait."""
    context = ray.data.DataContext.get_current()
    previous, context.wait_for_min_actors_s = context.wait_for_min_actors_s, opts.start_timeout_s
    try:
        rows = ray.data.from_items([{"start": s, "stop": e} for s, e in todo], override_num_blocks=len(todo))
        rows.map_batches(
            worker, batch_size=1, compute=ray.data.ActorPoolStrategy(size=opts.workers),
            num_cpus=opts.cpus_per_worker, num_gpus=opts.gpus_per_worker,
            fn_constructor_kwargs=dict(artifact=str(artifact.resolve()), shard_dir=str(folder.resolve()),
                                       backend=opts.backend, device=opts.device, precision=opts.precision),
        ).materialize()
    except ray.exceptions.GetTimeoutError as exc:
        raise BackendUnavailableError(
            f"the cluster did not start {opts.workers} worker(s) of {opts.cpus_per_worker:g} CPUs and "
            f"{opts.gpus_per_worker:g} GPUs in {opts.start_timeout_s} s (free now: {ray.available_resources()}); "
            "wait for other jobs, lower --ray-workers or raise --ray-timeout; finished shards are kept") from exc
    finally:
        context.wait_for_min_actors_s = previous


def embed_with_ray(paths: Sequence[Path], artifact: str | os.PathLike[str], shard_dir: str | os.PathLike[str],
                   opts: RayOptions, *, worker: type = EmbedShard) -> tuple[np.ndarray, list[int]]:
    """Embed ``paths`` on Ray; returns (embeddings, kept indices) like engine.embed.embed_paths.

    Joins the Ray session already open in this process if there is one, else connects to
    ``opts.address`` (None: a local cluster, shut down again afterwards); the cluster's resources are
    checked before anything is submitted. ``worker`` is the actor class (a subclass of EmbedShard;
    tests inject faults through it).
    """
    embed_to_files(paths, artifact, shard_dir, opts, worker=worker)
    merged = merge_shards(Path(shard_dir), shard_ranges(len(paths), opts.shard_size))
    shutil.rmtree(shard_dir)
    return merged


def embed_to_files(paths: Sequence[Path], artifact: str | os.PathLike[str], shard_dir: str | os.PathLike[str],
                   opts: RayOptions, *, worker: type = EmbedShard) -> list[Path]:
    """``embed_with_ray`` without the merge: the shard files in path order, each an .npz of ``kept``
    (indices into ``paths``) and ``embeddings``, checked whole; the caller removes ``shard_dir``."""
    ray, folder, artifact = _ray(), Path(shard_dir), Path(artifact)
    ranges = shard_ranges(len(paths), opts.shard_size)
    started = connect(ray, opts)
    try:
        check_resources(ray, opts)
        prepare_shard_dir(folder, _manifest(paths, artifact, opts.shard_size), paths)
        todo = [r for r in ranges if not shard_path(folder, *r).is_file()]
        if todo:
            _run(ray, todo, worker, artifact, folder, opts)
    finally:
        if started:
            ray.shutdown()
    read_shards(folder, ranges)
    return [shard_path(folder, *r) for r in ranges]
