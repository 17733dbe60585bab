"""``python -m engine.embed FOLDER --artifact DIR --out gallery.npz``: a folder of crops -> a gallery file.

Every image under FOLDER (recursively, sorted) is decoded, resized and embedded, in-process through
an Embedder, against a running server (``--url``, see ``python -m serve``) or on a Ray cluster
(``--ray``; with ``--shards`` the shard actors read the workers' embeddings from files, so this
process never holds them). Person ids and cameras come from Market-1501-style names
(``0002_c1s1_000451_03.jpg``: id 2, camera 1) or from a CSV (``--labels``: columns path,id[,cam], paths relative to FOLDER), or are
the image's index (``--index-ids``). The gallery file also records each row's image (relative to
FOLDER), so ``python -m engine.query`` can show the images behind its results, and the fingerprint of
the artefact's model (``--artifact``), which ``engine.query`` and the server check; it is written
atomically. Every file not embedded is counted and named on stderr (other types, unreadable images,
Market's junk with ``--skip-junk``). Exit codes: 0 done, 2 bad input: labels (a negative id, a CSV row
given twice, a CSV that is not UTF-8), an unwritable ``--out`` and contradicting flags are found before
the first image is embedded.
"""
from __future__ import annotations

import argparse
import csv
import re
import shutil
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from . import cli
from .errors import DataError, InputError
from .images import IMAGE_SUFFIXES, load_images, named, scan_images
from .progress import progress as progress_bar
from .sharded.manifest import SUFFIX

# Market-1501-style names: PPPP_cC... (id, camera); the one copy, train.data.market reads it too.
MARKET_NAME = re.compile(r"^(-1|\d+)_c(\d+)", re.IGNORECASE)
UNKNOWN = -1
# Images decoded per step: bounds host memory on any folder size.
CHUNK = 256

EmbedFn = Callable[[np.ndarray], np.ndarray]


def market_label(path: Path) -> tuple[int, int] | None:
    """(id, camera) from a Market-style name (``0002_c1s1_...``: 2, 1), None for other names."""
    match = MARKET_NAME.match(path.name)
    return (int(match.group(1)), int(match.group(2))) if match else None


def _csv_rows(csv_path: Path) -> dict[str, tuple[int, dict[str, str]]]:
    """path -> (line number, row) of a labels CSV; DataError naming the file (and both lines of a
    path given twice) for an unreadable, non-UTF-8 or header-less file."""
    rows: dict[str, tuple[int, dict[str, str]]] = {}
    try:
        with open(csv_path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            for row in reader:
                line = reader.line_num
                if row["path"] in rows:
                    raise DataError(f"labels {csv_path} names {row['path']!r} twice (lines {rows[row['path']][0]} "
                                    f"and {line}); keep one row per image")
                rows[row["path"]] = (line, row)
    except UnicodeDecodeError as exc:
        raise DataError(f"labels {csv_path} is not UTF-8 text (byte {exc.object[exc.start]:#x} at offset "
                        f"{exc.start}); save it as UTF-8 CSV with a header path,id[,cam]") from exc
    except (OSError, KeyError, csv.Error) as exc:
        raise DataError(f"cannot read labels {csv_path} ({exc}); expected a CSV with a header "
                        "path,id[,cam]") from exc
    return rows


def read_labels_csv(csv_path: Path, folder: Path, paths: Sequence[Path]) -> tuple[np.ndarray, np.ndarray]:
    """ids and cams of ``paths`` from a CSV with columns path,id[,cam] (paths relative to ``folder``)."""
    rows = _csv_rows(csv_path)
    missing = [str(p.relative_to(folder)) for p in paths if str(p.relative_to(folder)) not in rows]
    if missing:
        raise DataError(f"{len(missing)} image(s) have no row in {csv_path}, e.g. {missing[0]}; add them "
                        "or remove the images")
    picked = [rows[str(p.relative_to(folder))] for p in paths]
    try:
        return (np.array([int(r["id"]) for _, r in picked], np.int64),
                np.array([int(r.get("cam") or UNKNOWN) for _, r in picked], np.int64))
    except (KeyError, ValueError, TypeError) as exc:
        raise DataError(f"labels {csv_path}: {exc}; id and cam must be integers") from exc


def labels(folder: Path, paths: Sequence[Path], *, csv_path: Path | None = None,
           index_ids: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """int64 ids and cameras of ``paths``: from the CSV, the index, or Market-style names."""
    if csv_path is not None:
        return read_labels_csv(csv_path, folder, paths)
    if index_ids:
        return np.arange(len(paths), dtype=np.int64), np.full(len(paths), UNKNOWN, np.int64)
    parsed = [market_label(p) for p in paths]
    bad = [p.name for p, label in zip(paths, parsed, strict=True) if label is None]
    if bad:
        raise InputError(f"{len(bad)} image name(s) are not Market-style (PPPP_cX..., e.g. 0002_c1s1_000451_03"
                         f".jpg), e.g. {bad[0]}; pass --labels CSV or --index-ids")
    table = np.array(parsed, np.int64).reshape(len(paths), 2)
    return table[:, 0].copy(), table[:, 1].copy()


def drop_junk(paths: list[Path], ids: np.ndarray, cams: np.ndarray, root: Path, *,
              skip_junk: bool) -> tuple[list[Path], np.ndarray, np.ndarray]:
    """``paths`` and their labels without Market's junk images (id -1) when ``skip_junk`` (counted and
    named on stderr); any other negative id, or junk without ``skip_junk``, is a DataError naming the
    files, found before anything is embedded (-1 is the padding id of search results)."""
    junk = ids == UNKNOWN
    if skip_junk and junk.any():
        report_skipped("junk image(s) with id -1 (--skip-junk)", [p for p, j in zip(paths, junk, strict=True) if j],
                       root)
        keep = ~junk
        paths, ids, cams = [p for p, k in zip(paths, keep, strict=True) if k], ids[keep], cams[keep]
    negative = [p.relative_to(root) for p, i in zip(paths, ids, strict=True) if i < 0]
    if negative:
        hint = ("pass --skip-junk to leave Market's junk images (id -1) out, as its evaluation does"
                if (ids == UNKNOWN).any() else "ids must be >= 0")
        raise DataError(f"{len(negative)} image(s) have a negative id (e.g. {int(ids[ids < 0][0])}): "
                        f"{named(negative)}; {hint} (-1 marks padding in search results)")
    if not paths:
        raise DataError(f"every image under {root} is junk (id -1); nothing is left to embed")
    return paths, ids, cams


def embed_paths(paths: Sequence[Path], embed: EmbedFn, image_shape: Sequence[int], *,
                progress: bool = True) -> tuple[np.ndarray, list[int]]:
    """Embeddings of the readable images among ``paths`` and their indices (unreadable ones are skipped;
    the caller names them, see ``report_skipped``), decoding CHUNK images at a time."""
    height, width = int(image_shape[0]), int(image_shape[1])
    parts, kept = [], []
    with progress_bar(total=len(paths), desc="embedding", unit="img", disable=not progress) as bar:
        for start in range(0, len(paths), CHUNK):
            pixels, loaded = load_images(paths[start:start + CHUNK], height, width, warn=False)
            if len(pixels):
                parts.append(embed(pixels))
            kept += [start + i for i in loaded]
            bar.update(min(CHUNK, len(paths) - start))
    if not parts:
        raise DataError(f"none of the {len(paths)} images could be read; check the folder")
    return np.concatenate(parts), kept


def report_skipped(what: str, skipped: Sequence[Path], root: Path) -> None:
    """One stderr line counting and naming (the first few of) ``skipped`` files, relative to ``root``."""
    if skipped:
        print(f"skipped {len(skipped)} {what}: {named([p.relative_to(root) for p in skipped])}", file=sys.stderr)


def save_gallery(out: Path, embeddings: np.ndarray, ids: np.ndarray, cams: np.ndarray, root: Path,
                 paths: Sequence[Path], fingerprint: str | None = None) -> None:
    """Write the gallery file: the rows, their images and the fingerprint of the model that embedded them."""
    from .search import Gallery

    gallery = Gallery(embeddings.shape[1])
    gallery.images_root, gallery.model_fingerprint = str(root.resolve()), fingerprint
    gallery.add(embeddings, ids, cams, paths=[str(p.relative_to(root)) for p in paths])
    gallery.save(out)


def save_sharded(out: Path, embeddings: np.ndarray, ids: np.ndarray, cams: np.ndarray, root: Path,
                 paths: Sequence[Path], shards: int, address: str | None, fingerprint: str | None = None) -> None:
    """A sharded gallery at ``out`` (a .json manifest): one add, each shard's actor writes its own file;
    the manifest records the model that embedded the rows (``fingerprint``), as save_gallery's file does."""
    with _new_sharded(out, embeddings.shape[1], shards, address, fingerprint, root) as gallery:
        gallery.add(embeddings, ids, cams, paths=[str(p.relative_to(root)) for p in paths])


@contextmanager
def _new_sharded(out: Path, dim: int, shards: int, address: str | None, fingerprint: str | None,
                 root: Path) -> Iterator[Any]:
    """A new ShardedGallery at ``out`` on the cluster ``address``, closed after the block."""
    from .sharded import ShardedGallery, ShardOptions

    gallery = ShardedGallery.create(out, dim, shards, model_fingerprint=fingerprint,
                                    options=ShardOptions(address=address, cpus=0, strategy="SPREAD"))
    try:
        gallery.images_root = str(root.resolve())
        yield gallery
    finally:
        gallery.close()


def embed_into_shards(args: argparse.Namespace, paths: list[Path], ids: np.ndarray, cams: np.ndarray,
                      fingerprint: str | None) -> tuple[int, list[int]]:
    """``--ray --shards``: the Ray workers write their embeddings to files beside ``--out`` and each shard
    actor reads its own rows from them (ShardedGallery.add_files), so this process never holds the
    embeddings. Returns the embedding size and the indices of the images embedded."""
    from .ray_embed import embed_to_files
    from .spec import ModelSpec

    files = embed_to_files(paths, args.artifact, _ray_dir(args), _ray_options(args))
    dim = ModelSpec.load(args.artifact).embedding_dim
    with _new_sharded(args.out, dim, args.shards, _cluster(args), fingerprint, args.folder) as gallery:
        kept = gallery.add_files(files, ids, cams, paths=[str(p.relative_to(args.folder)) for p in paths])
    shutil.rmtree(_ray_dir(args))
    return dim, kept.tolist()


def build_parser() -> argparse.ArgumentParser:
    p = cli.parser("python -m engine.embed", __doc__)
    p.add_argument("folder", type=Path, help="folder of person crops (searched recursively)")
    cli.add_artifact(p, required=False, help="artefact folder written by `python -m export.build_engine` "
                     "(needed unless --url)")
    p.add_argument("--out", type=Path, required=True, help="gallery file to write (.npz)")
    p.add_argument("--labels", type=Path, help="CSV with columns path,id[,cam] instead of Market-style names")
    p.add_argument("--index-ids", action="store_true", help="ids are the images' sorted order, cams unknown")
    p.add_argument("--skip-junk", action="store_true", help="leave out images with id -1 (Market-1501's junk, "
                   "which its evaluation ignores), counted and named; without it they are an error")
    p.add_argument("--url", help="embed on a running server instead: grpc://HOST:PORT or http://HOST:PORT")
    add_backend_device(p)
    p.add_argument("--ray", nargs="?", const="local", metavar="ADDRESS",
                   help="embed on a Ray cluster: 'auto' joins a running one, an address (ray://HOST:10001) a "
                   "remote one, no value starts a local one")
    p.add_argument("--ray-workers", type=cli.positive_int, default=2, help="Ray actors, one Embedder each")
    p.add_argument("--cpus-per-worker", type=cli.non_negative_float, default=1.0, help="CPUs each Ray actor reserves")
    p.add_argument("--gpus-per-worker", type=cli.non_negative_float, default=0.0, help="GPUs each Ray actor reserves")
    p.add_argument("--ray-timeout", type=cli.positive_int, default=600, metavar="S",
                   help="longest wait for the Ray actors to start (a cluster whose resources are taken)")
    p.add_argument("--shards", type=cli.positive_int, help="write a sharded gallery of this many shards "
                   "instead (engine.sharded): --out is its .json manifest, each shard's file is written by its "
                   "own Ray actor (on the --ray cluster, else a local one); with --ray the shard actors read the "
                   "workers' embeddings from files beside --out, none pass through this process")
    cli.add_no_progress(p)
    return p


def add_backend_device(p: argparse.ArgumentParser) -> None:
    """``--backend``, ``--device`` and ``--precision`` of the in-process Embedder (engine.embed and engine.query)."""
    p.add_argument("--backend", default="auto", help="in-process backend: auto, trt or ort")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    cli.add_precision(p)


def _cluster(args: argparse.Namespace) -> str | None:
    """The --ray cluster's address (None: a local one)."""
    return None if args.ray in (None, "local") else args.ray


def _ray_dir(args: argparse.Namespace) -> Path:
    """Where the Ray workers write their embedding files (beside --out: storage every node sees)."""
    return args.out.parent / f".{args.out.name}.shards"


def _ray_options(args: argparse.Namespace) -> Any:
    from .ray_embed import RayOptions

    return RayOptions(address=_cluster(args), workers=args.ray_workers, cpus_per_worker=args.cpus_per_worker,
                      gpus_per_worker=args.gpus_per_worker, backend=args.backend, device=args.device,
                      precision=args.precision, start_timeout_s=args.ray_timeout)


def _embed_all(args: argparse.Namespace, paths: list[Path]) -> tuple[np.ndarray, list[int]]:
    if args.ray is not None:
        from .ray_embed import embed_with_ray

        return embed_with_ray(paths, args.artifact, _ray_dir(args), _ray_options(args))
    return with_embed_fn(args, lambda embed, shape: embed_paths(paths, embed, shape, progress=not args.no_progress))


def artifact_fingerprint(artifact: Path | None) -> str | None:
    """The model fingerprint of the artefact folder ``artifact`` (None without one: through ``--url``
    the server's model is not known here)."""
    if artifact is None:
        return None
    from .search.file import model_fingerprint
    from .spec import ModelSpec

    return model_fingerprint(ModelSpec.load(artifact))


def with_embed_fn(args: argparse.Namespace, work: Callable[[EmbedFn, Sequence[int]], Any]) -> Any:
    """Run ``work(embed, image_shape)`` with a server client (``args.url``) or an in-process Embedder."""
    if args.url is not None:
        from .client import TritonClient

        with TritonClient(args.url) as client:
            return work(client.embed, client.image_shape)
    if args.artifact is None:
        raise InputError("pass --artifact DIR (an exported artefact folder) or --url of a running server")
    from .embedder import Embedder

    with Embedder(args.artifact, backend=args.backend, device=args.device, precision=args.precision) as embedder:
        return work(embedder, embedder.spec.image_shape)


RAY_ONLY = ("ray_workers", "cpus_per_worker", "gpus_per_worker", "ray_timeout")
SERVER_DECIDES = ("artifact", "backend", "device", "precision")  # what --url leaves to the server


def check_flags(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """InputError for flags that contradict each other or would be silently ignored."""
    def given(dests: Sequence[str]) -> list[str]:
        return ["--" + d.replace("_", "-") for d in dests if getattr(args, d) != p.get_default(d)]

    if args.labels is not None and args.index_ids:
        raise InputError("--labels and --index-ids both say where the ids come from; pass one")
    if args.skip_junk and args.index_ids:
        raise InputError("--skip-junk leaves out id -1 of Market names or --labels; --index-ids has none, drop it")
    if args.shards is not None and args.out.suffix != SUFFIX:
        raise InputError(f"--shards writes a sharded gallery's manifest: --out must end in .json, got {args.out}")
    if args.ray is not None and args.url is not None:
        raise InputError("--ray and --url both say where the images are embedded; pass one")
    if args.ray is not None and args.artifact is None:
        raise InputError("--ray needs --artifact (each worker opens its own Embedder)")
    if args.ray is None and given(RAY_ONLY):
        raise InputError(f"{', '.join(given(RAY_ONLY))} only apply with --ray; add --ray or drop them")
    if args.url is not None and given(SERVER_DECIDES):
        raise InputError(f"--url embeds with the server's model and engine, so {', '.join(given(SERVER_DECIDES))} "
                         "would be ignored; drop them (or drop --url to embed in-process)")


def _write(args: argparse.Namespace, paths: list[Path], ids: np.ndarray, cams: np.ndarray,
           fingerprint: str | None) -> tuple[int, list[int]]:
    """Embed ``paths`` and write --out (a file, or a sharded gallery); the size and the images embedded."""
    if args.shards is not None and args.ray is not None:
        return embed_into_shards(args, paths, ids, cams, fingerprint)
    embeddings, kept = _embed_all(args, paths)
    rows = (embeddings, ids[kept], cams[kept], args.folder, [paths[i] for i in kept])
    if args.shards is None:
        save_gallery(args.out, *rows, fingerprint)
    else:
        save_sharded(args.out, *rows, args.shards, _cluster(args), fingerprint)
    return embeddings.shape[1], kept


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)

    def body() -> None:
        check_flags(parser, args)
        paths, others = scan_images(args.folder)
        cli.check_out_file(args.out)
        report_skipped(f"file(s) that are not {'/'.join(IMAGE_SUFFIXES)} images", others, args.folder)
        ids, cams = labels(args.folder, paths, csv_path=args.labels, index_ids=args.index_ids)
        found = len(others) + len(paths)
        paths, ids, cams = drop_junk(paths, ids, cams, args.folder, skip_junk=args.skip_junk)
        dim, kept = _write(args, paths, ids, cams, artifact_fingerprint(args.artifact))
        unread = sorted(set(range(len(paths))) - set(kept))
        report_skipped(f"unreadable image(s) of {len(paths)}", [paths[i] for i in unread], args.folder)
        print(f"wrote {args.out} ({len(kept)} images, {len(np.unique(ids[kept]))} ids, "
              f"{dim}-D, with each row's image"
              + ("" if args.shards is None else f"; {args.shards} shards") + f"; skipped {found - len(kept)} files)")

    return cli.run_cli(body)


if __name__ == "__main__":
    sys.exit(main())
