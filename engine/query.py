"""``python -m engine.query IMAGES --gallery gallery.npz --artifact DIR -k 10 [--png OUT]``.

Embeds each query image (files or folders), searches the gallery and prints its ranked list: rank,
id, camera, squared-L2 distance, whether the row is a true match of the query's id (when the query
has a Market-style name: "yes" from another camera, "junk" from the same one, as Market-1501 scores
them) and the gallery image (recorded in the gallery file by ``python -m engine.embed``; "-" for rows
added as pixels, e.g. through the server). A query with no true match in its top k is flagged, and
when every query is labelled a Rank-1/mAP line over them follows (the whole gallery ranked, Market
rules). ``--png`` draws each query like torchreid's visrank: one PNG per query in the folder OUT
(``OUT/001_<query>.png``...), or the file OUT for a single query named *.png. With ``--url`` the
server embeds and searches its own resident gallery; ``--gallery`` (the file the server was started
with) is then only needed to name, draw and score the rows.
The gallery file records the model that embedded it; a query with another artefact's model is
refused (exit 2, both fingerprints named) unless ``--allow-other-model``.
Exit codes: 0 done, 2 bad input.
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from . import cli
from .embed import (
    UNKNOWN,
    EmbedFn,
    add_backend_device,
    market_label,
    with_embed_fn,
)
from .errors import InputError
from .images import IMAGE_SUFFIXES, load_images
from .ranked import Images, Ranked, draw, png_paths
from .sharded.manifest import SUFFIX


def query_paths(items: list[Path]) -> list[Path]:
    paths: list[Path] = []
    for item in items:
        if item.is_dir():
            paths += sorted(p for p in item.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        elif item.is_file():
            paths.append(item)
        else:
            raise InputError(f"query {item} is neither an image file nor a folder")
    if not paths:
        raise InputError(f"no query images in {[str(i) for i in items]}")
    return paths


def resolve_rows(query: np.ndarray, distances: np.ndarray, ids: np.ndarray, gallery: np.ndarray,
                 gallery_ids: np.ndarray) -> np.ndarray:
    """The gallery row behind each result: among rows with the result's id (ids repeat), the unused one
    whose squared distance to ``query`` is nearest the returned distance."""
    rows = np.full(len(ids), -1, np.int64)
    used: set[int] = set()
    for j, (dist, pid) in enumerate(zip(distances, ids, strict=True)):
        candidates = [int(r) for r in np.flatnonzero(gallery_ids == pid) if int(r) not in used]
        if (pid < 0 and not np.isfinite(dist)) or not candidates:
            continue
        sq = ((gallery[candidates].astype(np.float64) - query) ** 2).sum(axis=1)
        rows[j] = candidates[int(np.argmin(np.abs(sq - dist)))]
        used.add(int(rows[j]))
    return rows


def _search(args: argparse.Namespace, paths: list[Path], stored: tuple[dict[str, Any], dict[str, np.ndarray]] | None,
            ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(query embeddings, distances, ids) through the server (``--url``: one connection embeds and
    searches) or in-process, on the gallery file ``stored`` (header, arrays) as already read."""
    def pixels(shape: Sequence[int]) -> np.ndarray:
        return load_images(paths, int(shape[0]), int(shape[1]), on_error="raise",
                           progress=False if args.no_progress else None)[0]

    if args.url is not None:
        from .client import TritonClient

        with TritonClient(args.url) as client:
            queries = client.embed(pixels(client.image_shape))
            return (queries, *client.search(args.k, embeddings=queries))
    if stored is None:
        raise InputError("pass --gallery gallery.npz (from `python -m engine.embed`), or --url of a server")
    from .search import Gallery

    k = min(args.k, stored[0]["count"])  # a list longer than the gallery would only hold padding

    def work(embed: EmbedFn, shape: Sequence[int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        queries = embed(pixels(shape))
        return (queries, *Gallery.from_file_arrays(*stored).search(queries, k))
    return with_embed_fn(args, work)


def rank(args: argparse.Namespace) -> tuple[list[Ranked], Images | None, str | None]:
    """Each query's ranked list, the gallery's row images (None without --gallery or images), and
    the Rank-1/mAP line when the queries are labelled."""
    paths = query_paths(args.images)
    stored = None
    if args.gallery is not None:
        from .search import read_gallery_file

        if args.gallery.suffix == SUFFIX:  # engine.sharded's manifest: the shards live on a Ray cluster
            raise InputError(f"{args.gallery} is a sharded gallery's manifest; query the server that serves it "
                             "(--url, without --gallery), or pass a one-file gallery (.npz)")
        stored = read_gallery_file(args.gallery)
        if args.url is None and args.artifact is not None and not args.allow_other_model:
            check_model(stored[0], args.gallery, args.artifact)
    queries, distances, ids = _search(args, paths, stored)
    rows, cams = np.full(ids.shape, -1, np.int64), np.full(ids.shape, UNKNOWN, np.int64)
    if stored is not None:
        arrays = stored[1]
        rows = np.stack([resolve_rows(q, d, i, arrays["embeddings"], arrays["ids"])
                         for q, d, i in zip(queries, distances, ids, strict=True)])
        cams = np.where(rows >= 0, arrays["cams"][np.maximum(rows, 0)], UNKNOWN)
    ranked = [Ranked(p, market_label(p), distances[n], ids[n], rows[n], cams[n]) for n, p in enumerate(paths)]
    return ranked, gallery_images(stored), scores(ranked, queries, stored)


def check_model(header: dict[str, Any], gallery: Path, artifact: Path) -> None:
    """SpecMismatchError unless the gallery file records the model of ``artifact`` (or none at all)."""
    from .search.file import check_fingerprint
    from .spec import ModelSpec

    check_fingerprint(header.get("model_fingerprint"), ModelSpec.load(artifact), source=f"gallery {gallery}",
                      artifact=f"artefact {artifact}")


def gallery_images(stored: tuple[dict[str, Any], dict[str, np.ndarray]] | None) -> Images | None:
    """(root, row paths) a gallery file records ("" for a row without an image), None when it has none."""
    if stored is None or "paths" not in stored[1]:
        return None
    header, arrays = stored
    return Path(header.get("images_root") or "."), arrays["paths"].tolist()


def print_ranked(results: list[Ranked], images: Images | None) -> None:
    for r in results:
        known = f" (id {r.label[0]}, cam {r.label[1]})" if r.label else ""
        flag = f"  [no true match in the top {len(r.ids)}]" if r.missed() else ""
        print(f"query {r.path}{known}{flag}")
        print("  rank        id  cam     distance  match  image")
        for n in range(r.listed()):
            row, cam = r.rows[n], "-" if r.cams[n] == UNKNOWN else str(r.cams[n])
            name = (images[1][row] or "-") if images is not None and row >= 0 else "-"
            print(f"  {n + 1:4d}  {r.ids[n]:8d}  {cam:>3}  {r.distances[n]:11.6f}  {r.verdict(n):>5}  {name}")


def scores(results: list[Ranked], queries: np.ndarray,
           stored: tuple[dict[str, Any], dict[str, np.ndarray]] | None) -> str | None:
    """Rank-1/5/10 and mAP over the queries, the whole gallery ranked under Market-1501 rules; None
    unless every query is labelled and the gallery file is at hand."""
    if stored is None or not results or any(r.label is None for r in results):
        return None
    from .metrics import evaluate

    arrays = stored[1]
    labels = np.array([r.label for r in results], np.int64)
    try:
        m = evaluate(queries, labels[:, 0], labels[:, 1], arrays["embeddings"].astype(np.float32),
                     arrays["ids"], arrays["cams"], ranks=(1, 5, 10))
    except InputError as exc:  # no query has a true match anywhere in the gallery
        return f"no Rank-1/mAP: {exc}"
    return (f"Rank-1 {100 * m['rank1']:.2f}  Rank-5 {100 * m['rank5']:.2f}  Rank-10 {100 * m['rank10']:.2f}  "
            f"mAP {100 * m['mAP']:.2f}  over {m['num_query']} of {len(results)} queries (Market-1501 rules: "
            "same id and camera ignored; queries without a true match in the gallery left out)")


def build_parser() -> argparse.ArgumentParser:
    p = cli.parser("python -m engine.query", __doc__)
    p.add_argument("images", type=Path, nargs="+", help="query image files or folders")
    p.add_argument("--gallery", type=Path, help="gallery file from `python -m engine.embed`")
    cli.add_artifact(p, required=False, help="artefact folder written by `python -m export.build_engine` "
                     "(needed unless --url)")
    p.add_argument("-k", type=cli.positive_int, default=10, help="results per query (at most the gallery's "
                   "rows: a longer list would only be padding)")
    p.add_argument("--png", type=Path, metavar="OUT", help="also draw each query's ranked list: one PNG per "
                   "query in the folder OUT, or the file OUT for a single query named *.png")
    p.add_argument("--url", help="search on a running server: grpc://HOST:PORT or http://HOST:PORT")
    p.add_argument("--allow-other-model", action="store_true", help="search a gallery embedded by another "
                   "model than --artifact's (refused by default: the two models' distances are meaningless "
                   "unless they share one embedding space)")
    add_backend_device(p)
    cli.add_no_progress(p)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def body() -> None:
        results, images, line = rank(args)
        print_ranked(results, images)
        if line is not None:
            print(line)
        if args.png is not None:
            if images is None:
                raise InputError("--png needs --gallery with each row's image, as `python -m engine.embed` "
                                 f"writes it; got {args.gallery or 'no --gallery'}")
            if len(results) > 1 and args.png.suffix.lower() == ".png":
                raise InputError(f"--png {args.png} names one file, got {len(results)} queries; pass a folder "
                                 f"(e.g. --png {args.png.with_suffix('')}), one PNG per query goes there")
            drawn = [draw(r, images, out) for r, out in zip(results, png_paths(results, args.png), strict=True)]
            print(f"wrote {drawn[0]}" if len(drawn) == 1 else f"wrote {len(drawn)} PNGs into {args.png}")

    return cli.run_cli(body)


if __name__ == "__main__":
    sys.exit(main())
