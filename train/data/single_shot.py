"""VIPeR and PRID2011 with their usual single-shot protocols and seeded random id splits.

VIPeR: 632 people, one image in camera A and one in camera B; 316 train / 316 test people, query =
camera A images of the test people, gallery = their camera B images.

PRID2011: the people seen by both cameras are those numbered 1..200 (``num_shared``) in both folders;
higher numbers are different people in each camera. The shared people are split 100 train / 100 test; query = camera A images
of the test people, gallery = camera B images of the test people plus every camera-B-only person (649
images for the full set). Training uses both cameras of the train people. Camera-A-only people are
left out by default (``cam_a_only_train=True`` adds them as extra train ids): each would be a class
with a single image from a single camera, which teaches nothing about the camera change the test
measures and is not part of the published protocol, so figures stay comparable without it.
Single-camera people keep their file numbers as labels; those are above ``num_shared``, so they
never equal a query label.
"""
from __future__ import annotations

import re
from pathlib import Path

from .folders import Record, load_records, parse_folder, split_people
from .reidset import ReidSet

VIPER_NAME = re.compile(r"^(\d{4})(000[12])\.png$", re.IGNORECASE)
PRID_NAME = re.compile(r"^person_(\d{4})\.png$", re.IGNORECASE)


def load_viper(root: Path, *, height: int, width: int, split_seed: int = 0, num_train: int = 316,
               num_test: int = 316, progress: bool | None = None) -> ReidSet:
    """Load VIPeR from ``root`` (files ``PPPPCCCC.png``, camera 0001 = A, 0002 = B)."""
    files = parse_folder(root, VIPER_NAME, "viper", "files named PPPPCCCC.png, e.g. 00010001.png")
    records = [Record(path, int(m.group(1)), int(m.group(2)) - 1) for path, m in files]
    cams_of: dict[int, set[int]] = {}
    for r in records:
        cams_of.setdefault(r.pid, set()).add(r.cam)
    both = [pid for pid, cams in cams_of.items() if cams == {0, 1}]
    train, test = split_people(both, num_train, num_test, split_seed, "viper")
    parts = {
        "train": [r for r in records if r.pid in train],
        "query": [r for r in records if r.pid in test and r.cam == 0],
        "gallery": [r for r in records if r.pid in test and r.cam == 1],
    }
    return load_records("viper", "single_shot", parts, height, width, progress)


def load_prid2011(root: Path, *, height: int, width: int, split_seed: int = 0, num_train: int = 100,
                  num_test: int = 100, num_shared: int = 200, cam_a_only_train: bool = False,
                  progress: bool | None = None) -> ReidSet:
    """Load PRID2011 single-shot from ``root`` (``cam_a/person_NNNN.png``, ``cam_b/person_NNNN.png``)."""
    expected = "files named person_NNNN.png, e.g. person_0001.png"
    cam_a = {int(m.group(1)): p for p, m in parse_folder(root / "cam_a", PRID_NAME, "prid2011", expected)}
    cam_b = {int(m.group(1)): p for p, m in parse_folder(root / "cam_b", PRID_NAME, "prid2011", expected)}
    shared = [pid for pid in sorted(cam_a) if pid <= num_shared and pid in cam_b]
    train, test = split_people(shared, num_train, num_test, split_seed, "prid2011")
    train_records = [Record(cam_a[pid], pid, 0) for pid in sorted(train)]
    train_records += [Record(cam_b[pid], pid, 1) for pid in sorted(train)]
    if cam_a_only_train:
        train_records += [Record(p, pid, 0) for pid, p in sorted(cam_a.items()) if pid > num_shared]
    b_only = [pid for pid in sorted(cam_b) if pid > num_shared]
    parts = {
        "train": train_records,
        "query": [Record(cam_a[pid], pid, 0) for pid in sorted(test)],
        "gallery": [Record(cam_b[pid], pid, 1) for pid in sorted(test) + b_only],
    }
    return load_records("prid2011", "single_shot", parts, height, width, progress)
