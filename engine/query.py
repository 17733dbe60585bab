"""``python -m engine.query IMAGES --gallery gallery.npz --artifact DIR -k 10 [--png ranked.png]``.

Embeds each query image (files or folders), searches the gallery and prints its ranked list: rank,
id, camera, squared-L2 distance, whether the id matches the query's (when the query has a
Market-style name) and the gallery image (recorded in the gallery file by ``python -m engine.embed``;
"-" for rows added as pixels, e.g. through the server). ``--png`` draws it as a picture like torchreid's visualize_ranked_results: the query, then the
top k with their distances, framed green for a match and red for a miss. With ``--url`` the server
embeds and searches its own resident gallery; ``--gallery`` (the file the server was started with)
is then only needed to name and draw the rows.
Exit codes: 0 done, 2 bad input.
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import dataclass
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
from .images import IMAGE_SUFFIXES, load_image, load_images

MATCH, MISS, NEUTRAL = "#2ca02c", "#d62728", "#7f7f7f"
Images = tuple[Path, list[str]]  # the gallery's images root and each row's path under it ("" for none)
DISPLAY = (128, 64)  # height, width of each drawn crop (display only; the model's size is in spec.json)


@dataclass
class Ranked:
    """One query's ranked list; ``rows`` index the gallery file (-1 when unknown or padding)."""

    path: Path
    label: tuple[int, int] | None
    distances: np.ndarray
    ids: np.ndarray
    rows: np.ndarray
    cams: np.ndarray


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
    from .gallery import Gallery

    def work(embed: EmbedFn, shape: Sequence[int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        queries = embed(pixels(shape))
        return (queries, *Gallery.from_file_arrays(*stored).search(queries, args.k))
    return with_embed_fn(args, work)


def rank(args: argparse.Namespace) -> tuple[list[Ranked], Images | None]:
    """Each query's ranked list, and the gallery's row images (None without --gallery or images)."""
    paths = query_paths(args.images)
    stored = None
    if args.gallery is not None:
        from .gallery import read_gallery_file

        stored = read_gallery_file(args.gallery)
    queries, distances, ids = _search(args, paths, stored)
    rows, cams = np.full(ids.shape, -1, np.int64), np.full(ids.shape, UNKNOWN, np.int64)
    if stored is not None:
        arrays = stored[1]
        rows = np.stack([resolve_rows(q, d, i, arrays["embeddings"], arrays["ids"])
                         for q, d, i in zip(queries, distances, ids, strict=True)])
        cams = np.where(rows >= 0, arrays["cams"][np.maximum(rows, 0)], UNKNOWN)
    ranked = [Ranked(p, market_label(p), distances[n], ids[n], rows[n], cams[n]) for n, p in enumerate(paths)]
    return ranked, gallery_images(stored)


def gallery_images(stored: tuple[dict[str, Any], dict[str, np.ndarray]] | None) -> Images | None:
    """(root, row paths) a gallery file records ("" for a row without an image), None when it has none."""
    if stored is None or "paths" not in stored[1]:
        return None
    header, arrays = stored
    return Path(header.get("images_root") or "."), arrays["paths"].tolist()


def print_ranked(results: list[Ranked], images: Images | None) -> None:
    for r in results:
        known = f" (id {r.label[0]}, cam {r.label[1]})" if r.label else ""
        print(f"query {r.path}{known}")
        print("  rank        id  cam     distance  match  image")
        for n, (dist, pid, row, cam) in enumerate(zip(r.distances, r.ids, r.rows, r.cams, strict=True), 1):
            if pid < 0 and not np.isfinite(dist):
                break
            match = "-" if r.label is None else ("yes" if pid == r.label[0] else "no")
            cam = "-" if cam == UNKNOWN else str(cam)
            name = (images[1][row] or "-") if images is not None and row >= 0 else "-"
            print(f"  {n:4d}  {pid:8d}  {cam:>3}  {dist:11.6f}  {match:>5}  {name}")


def draw_ranked(results: list[Ranked], images: Images, out: Path,
                shape: tuple[int, int] = DISPLAY) -> Path:
    """Save one row per query: the query, then its top k framed green (same id) or red; like torchreid."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .atomic import write_with

    k = max(len(r.ids) for r in results)
    fig, axes = plt.subplots(len(results), k + 1, figsize=(1.1 * (k + 1), 2.4 * len(results)), squeeze=False)
    for ax_row, r in zip(axes, results, strict=True):
        _cell(ax_row[0], load_image(r.path, *shape), "query" + (f"\nid {r.label[0]}" if r.label else ""), "black")
        for ax, dist, pid, row in zip(ax_row[1:], r.distances, r.ids, r.rows, strict=False):
            if row < 0 or not images[1][row]:  # padding, or a row added without its image
                ax.axis("off")
                continue
            colour = NEUTRAL if r.label is None else (MATCH if pid == r.label[0] else MISS)
            _cell(ax, load_image(images[0] / images[1][row], *shape), f"id {pid}\n{dist:.3f}", colour)
    fig.tight_layout()
    write_with(out, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    plt.close(fig)
    return out


def _cell(ax, pixels: np.ndarray, title: str, colour: str) -> None:
    ax.imshow(pixels)
    ax.set_title(title, fontsize=7, color=colour)
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_edgecolor(colour)
        spine.set_linewidth(3)


def build_parser() -> argparse.ArgumentParser:
    p = cli.parser("python -m engine.query", __doc__)
    p.add_argument("images", type=Path, nargs="+", help="query image files or folders")
    p.add_argument("--gallery", type=Path, help="gallery file from `python -m engine.embed`")
    cli.add_artifact(p, required=False, help="artefact folder written by `python -m export.build_engine` "
                     "(needed unless --url)")
    p.add_argument("-k", type=cli.positive_int, default=10, help="results per query")
    p.add_argument("--png", type=Path, help="also draw the ranked lists into this PNG")
    p.add_argument("--url", help="search on a running server: grpc://HOST:PORT or http://HOST:PORT")
    add_backend_device(p)
    cli.add_no_progress(p)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def body() -> None:
        results, images = rank(args)
        print_ranked(results, images)
        if args.png is not None:
            if images is None:
                raise InputError("--png needs --gallery with each row's image, as `python -m engine.embed` "
                                 f"writes it; got {args.gallery or 'no --gallery'}")
            draw_ranked(results, images, args.png)
            print(f"wrote {args.png}")

    return cli.run_cli(body)


if __name__ == "__main__":
    sys.exit(main())
