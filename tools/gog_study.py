"""GOG + LOMO + XQDA over the 10 splits of VIPeR or PRID2011, descriptors computed once per image (issue 20).

``python tools/gog_study.py --dataset viper|prid2011 --cache FILE.npz [--data-root DIR]`` computes every
image's GOG blocks (``train.gog``, the served module) and LOMO once, keeps them in ``--cache`` (GOG takes
about 0.3 s an image on one loaded CPU core), and prints Rank-1 mean ± std and the per-split values of XQDA on:
LOMO alone, GOG alone (4 colour spaces) and GOG + LOMO (the ``gog_xqda`` matcher: each block centred on
the split's training mean and L2-normalised). Each split's people come from
``train.data.folders.split_people`` with the study's seeds and protocols (``train.data.single_shot``).
Record: results/levers_issue20/gog_*.txt.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from engine.metrics import evaluate
from train.data.datasets import resolve_root
from train.data.folders import split_people
from train.descriptor import descriptors, unit_rows
from train.gog import GOG, SPACES, GOGConfig
from train.lomo import LOMO, LOMOConfig
from train.xqda import fit_xqda

SETS = {"viper": (316, 316), "prid2011": (100, 100)}


def files_and_labels(name: str, root: Path) -> tuple[list[Path], np.ndarray, np.ndarray]:
    """Every image the protocol uses, with person ids and cameras (0 = A, 1 = B)."""
    if name == "viper":
        files = sorted(root.glob("*.png"))
        return files, np.array([int(f.name[:4]) for f in files]), np.array([int(f.name[4:8]) - 1 for f in files])
    a, b = sorted((root / "cam_a").glob("*.png")), sorted((root / "cam_b").glob("*.png"))
    files = [f for f in a if int(f.stem[-4:]) <= 200] + b  # camera-A-only people are not in the protocol
    return files, np.array([int(f.stem[-4:]) for f in files]), np.array([0] * (len(files) - len(b)) + [1] * len(b))


def compute(name: str, root: Path, cache: Path) -> dict[str, np.ndarray]:
    if cache.is_file():
        return dict(np.load(cache))
    files, pid, cam = files_and_labels(name, root)
    images = np.stack([np.asarray(Image.open(f).convert("RGB")) for f in files])
    h, w = images.shape[1:3]
    gog = GOG(GOGConfig(), h, w)
    blocks = np.split(descriptors(gog, images, progress=True, desc="GOG"), np.cumsum(gog.blocks)[:-1], axis=1)
    table = {"pid": pid, "cam": cam, "lomo": descriptors(LOMO(LOMOConfig(), h, w), images, desc="LOMO"),
             **dict(zip(SPACES, blocks, strict=True))}
    np.savez(cache, **table)
    return table


def rank1(name: str, table: dict[str, np.ndarray], blocks: list[str]) -> list[float]:
    pid, cam = table["pid"], table["cam"]
    shared = sorted(set(pid[cam == 0].tolist()) & set(pid[cam == 1].tolist()))
    if name == "prid2011":
        shared = [p for p in shared if p <= 200]
    out = []
    for seed in range(10):
        train, test = split_people(shared, *SETS[name], seed, name)
        tr, te = np.isin(pid, list(train)), np.isin(pid, list(test))
        q = te & (cam == 0)
        g = (te | ((pid > 200) if name == "prid2011" else False)) & (cam == 1) & ~tr
        if blocks == ["lomo"]:
            x = table["lomo"]
        else:
            x = np.concatenate([unit_rows(table[b] - table[b][tr].mean(0)) for b in blocks], axis=1)
        metric = fit_xqda(x[tr], pid[tr], cam[tr])
        zq, zg = unit_rows(metric.embed(x[q])), unit_rows(metric.embed(x[g]))
        m = evaluate(zq.astype(np.float32), pid[q], cam[q], zg.astype(np.float32), pid[g], cam[g],
                     protocol="single_shot")
        out.append(100 * m["rank1"])
    print(f"{name} {'+'.join(blocks)}: R1 {np.mean(out):.1f} ± {np.std(out, ddof=1):.1f}  "
          f"{np.round(out, 1).tolist()}", flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dataset", choices=sorted(SETS), required=True)
    parser.add_argument("--cache", type=Path, required=True, help="npz of the descriptors (made if absent)")
    parser.add_argument("--data-root", type=Path, default=None, help="folder holding the set (default: shared data)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    table = compute(args.dataset, resolve_root(args.dataset, args.data_root), args.cache)
    for blocks in (["lomo"], list(SPACES), [*SPACES, "lomo"]):
        rank1(args.dataset, table, blocks)


if __name__ == "__main__":
    main()
