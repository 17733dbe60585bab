"""Lay out one VIPeR split as a Market-1501 folder of symbolic links (no image is copied).

``python tools/viper_as_market.py OUT [--split 0] [--data-root DIR]``: train people go to
bounding_box_train (both cameras); test people's camera A to query, camera B to bounding_box_test;
cameras c1/c2. The split's people come from ``train.data.folders.split_people`` with the study's
seed, so ``python -m train --dataset market1501 --data-root OUT ...`` trains and scores the same
people as the VIPeR recipes' split (RESULTS.md; train/recipes.py's few_hundred_ids note).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from train.data.datasets import resolve_root
from train.data.folders import parse_folder, split_people
from train.data.single_shot import VIPER_NAME

VIPER_TRAIN = VIPER_TEST = 316


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path, help="folder to create the Market-1501 layout in")
    parser.add_argument("--split", type=int, default=0, help="the split's seed (as train.study's splits)")
    parser.add_argument("--data-root", help="the VIPeR folder, or one holding it (default: the shared data)")
    args = parser.parse_args(argv)
    files = parse_folder(resolve_root("viper", args.data_root), VIPER_NAME, "viper", "PPPPCCCC.png")
    people = sorted({int(m.group(1)) for _, m in files})
    train, test = split_people(people, VIPER_TRAIN, VIPER_TEST, args.split, "viper")
    for path, m in files:
        pid, cam = int(m.group(1)), int(m.group(2))
        folder = "bounding_box_train" if pid in train else ("query" if cam == 1 else "bounding_box_test")
        link = args.out / folder / f"{pid:04d}_c{cam}s1_000001_00.png"
        link.parent.mkdir(parents=True, exist_ok=True)
        if not link.exists():
            link.symlink_to(path.resolve())
    print(f"{args.out}: {len(train)} train people, {len(test)} test people (split {args.split})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
