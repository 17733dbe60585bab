"""Market-1501 folder layout (also used by DukeMTMC-reID) and its "market" protocol.

Layout: ``bounding_box_train/``, ``bounding_box_test/`` (the gallery) and ``query/``, files named
``PPPP_cX...jpg`` (Market ``0002_c1s1_000451_03.jpg``, Duke ``0005_c2_f0046985.jpg``). The split is
fixed by the folders, so ``split_seed`` plays no part. Gallery pid -1 (junk) and 0 (distractor) are kept
with their raw values for the evaluator: junk is ignored, same pid + same camera is ignored,
distractors are ordinary negatives. Training skips both, as they are not identities.
"""
from __future__ import annotations

from pathlib import Path

from engine.embed import MARKET_NAME  # the one Market-style name pattern (engine.embed reads it too)

from .folders import Record, load_records, parse_folder
from .reidset import ReidSet

MARKET_FOLDERS = {"train": "bounding_box_train", "query": "query", "gallery": "bounding_box_test"}
EXPECTED = "files named PPPP_cX..., e.g. 0002_c1s1_000451_03.jpg"


def load_market(root: Path, *, name: str, height: int, width: int, progress: bool | None = None) -> ReidSet:
    """Load a Market-1501-layout data set from ``root`` (cameras become 0-based: c1 -> 0)."""
    parts: dict[str, list[Record]] = {}
    for part, folder in MARKET_FOLDERS.items():
        files = parse_folder(root / folder, MARKET_NAME, name, f"{EXPECTED} (folders "
                             f"{', '.join(MARKET_FOLDERS.values())})")
        records = [Record(path, int(m.group(1)), int(m.group(2)) - 1) for path, m in files]
        parts[part] = [r for r in records if r.pid > 0] if part == "train" else records
    return load_records(name, "market", parts, height, width, progress)
