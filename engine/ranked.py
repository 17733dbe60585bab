"""One query's ranked list, how each row is judged, and its picture (torchreid's ``visrank`` layout).

A row is a true match when it has the query's id from another camera (Market-1501 rules: the same
id in the same camera is ``junk``, ignored by Rank-k and mAP), a miss otherwise; a query whose top k
holds no true match is flagged. Each query gets its own PNG: the query (file, id, camera), then its
top k with rank number, id, camera and distance, framed green (match), red (miss) or grey (junk or
unknown), with labels readable at the PNG's native size.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .embed import UNKNOWN
from .images import load_image

MATCH, MISS, NEUTRAL, QUERY = "#2ca02c", "#d62728", "#7f7f7f", "black"
COLOURS = {"yes": MATCH, "no": MISS, "junk": NEUTRAL, "-": NEUTRAL}
DISPLAY = (128, 64)  # height, width of each drawn crop (display only; the model's size is in spec.json)
CELL_INCHES, DPI, FONT = (1.5, 3.3), 100, 9  # a 150 x 330 px cell: 9 pt labels under a 128 x 64 crop
Images = tuple[Path, list[str]]  # the gallery's images root and each row's path under it ("" for none)


@dataclass
class Ranked:
    """One query's ranked list; ``rows`` index the gallery file (-1 when unknown or padding)."""

    path: Path
    label: tuple[int, int] | None
    distances: np.ndarray
    ids: np.ndarray
    rows: np.ndarray
    cams: np.ndarray

    def listed(self) -> int:
        """How many results are real (the rest is padding: k above the gallery)."""
        return int(np.sum(~((self.ids < 0) & ~np.isfinite(self.distances))))

    def verdict(self, n: int) -> str:
        """Result ``n``: "yes" (same id, another or unknown camera), "junk" (same id and camera),
        "no", or "-" when the query's id is unknown."""
        if self.label is None:
            return "-"
        if self.ids[n] != self.label[0]:
            return "no"
        same_cam = self.label[1] != UNKNOWN and self.cams[n] == self.label[1]
        return "junk" if same_cam else "yes"

    def missed(self) -> bool:
        """A labelled query with no true match in its top k."""
        return self.label is not None and "yes" not in (self.verdict(n) for n in range(self.listed()))


def png_paths(results: list[Ranked], out: Path) -> list[Path]:
    """Where each query's PNG goes: ``out`` itself for one query named *.png, else ``out/NNN_<query>.png``."""
    if len(results) == 1 and out.suffix.lower() == ".png":
        return [out]
    return [out / f"{n:03d}_{r.path.stem}.png" for n, r in enumerate(results, 1)]


def draw(r: Ranked, images: Images, out: Path, shape: tuple[int, int] = DISPLAY) -> Path:
    """Save ``r`` as one PNG: the query, then its top k, each framed by its verdict."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .atomic import write_with

    k = len(r.ids)
    fig, axes = plt.subplots(1, k + 1, figsize=(CELL_INCHES[0] * (k + 1), CELL_INCHES[1]), squeeze=False)
    known = f"\nid {r.label[0]} cam {_cam(r.label[1])}" if r.label else ""
    _cell(axes[0][0], load_image(r.path, *shape), f"query\n{_short(r.path.name)}{known}", QUERY)
    for n, ax in enumerate(axes[0][1:]):
        row = int(r.rows[n])
        if n >= r.listed() or row < 0 or not images[1][row]:  # padding, or a row added without its image
            ax.axis("off")
            continue
        title = f"#{n + 1} id {r.ids[n]} cam {_cam(r.cams[n])}\n{r.distances[n]:.3f}"
        _cell(ax, load_image(images[0] / images[1][row], *shape), title, COLOURS[r.verdict(n)])
    if r.missed():
        fig.suptitle(f"no true match in the top {k}", color=MISS, fontsize=FONT + 1)
    fig.tight_layout()
    write_with(out, lambda tmp: fig.savefig(tmp, format="png", dpi=DPI))
    plt.close(fig)
    return out


def _cam(cam: int) -> str:
    return "-" if cam == UNKNOWN else str(cam)


def _short(name: str, most: int = 18) -> str:
    return name if len(name) <= most else name[:most - 3] + "..."


def _cell(ax, pixels: np.ndarray, title: str, colour: str) -> None:
    ax.imshow(pixels)
    ax.set_title(title, fontsize=FONT, color=colour)
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_edgecolor(colour)
        spine.set_linewidth(3)
