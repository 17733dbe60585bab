"""Lay out one VIPeR split as a Market-1501 folder of symbolic links (no image is copied).

python results/levers_issue11/viper_as_market.py OUT [--split 0] [--data-root ../shared/data]
Train people -> bounding_box_train (both cameras), test people: camera A -> query, camera B ->
bounding_box_test; cameras c1/c2. Then: python -m train --dataset market1501 --data-root OUT ...
"""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the checkout
from train.data.datasets import resolve_root  # noqa: E402
from train.data.folders import parse_folder, split_people  # noqa: E402
from train.data.single_shot import VIPER_NAME  # noqa: E402

p = argparse.ArgumentParser()
p.add_argument("out", type=Path)
p.add_argument("--split", type=int, default=0)
p.add_argument("--data-root")
a = p.parse_args()
files = parse_folder(resolve_root("viper", a.data_root), VIPER_NAME, "viper", "PPPPCCCC.png")
people = sorted({int(m.group(1)) for _, m in files})
train, test = split_people(people, 316, 316, a.split, "viper")
for path, m in files:
    pid, cam = int(m.group(1)), int(m.group(2))
    folder = "bounding_box_train" if pid in train else ("query" if cam == 1 else "bounding_box_test")
    link = a.out / folder / f"{pid:04d}_c{cam}s1_000001_00.png"
    link.parent.mkdir(parents=True, exist_ok=True)
    if not link.exists():
        link.symlink_to(path.resolve())
print(f"{a.out}: {len(train)} train people, {len(test)} test people (split {a.split})")
