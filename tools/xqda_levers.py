"""Levers on LOMO + XQDA over VIPeR's 10 splits, descriptors computed once per image (issue 20).

``python tools/xqda_levers.py [--data-root DIR]`` prints Rank-1 mean ± std and the per-split values of:
the served unit vectors (the base), XQDA's raw distance, centred + L2-normalised features, XQDA trained
on mirror images too, lambda 1e-2 and 1e-4, and square-rooted histograms. The split's people come from
``train.data.folders.split_people`` with the study's seeds, so the base row equals
``python -m train.study --recipe viper_lomo_xqda --splits 10``. Record: results/levers_issue20/.
"""
from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from engine.metrics import evaluate
from train.data.datasets import resolve_root
from train.data.folders import split_people
from train.descriptor import unit_rows
from train.fusion import lomo_descriptors
from train.lomo import LOMO, LOMOConfig
from train.xqda import fit_xqda

Prep = Callable[[np.ndarray, np.ndarray], np.ndarray]


def centre_l2(x: np.ndarray, train: np.ndarray) -> np.ndarray:
    return unit_rows(x - x[train].mean(0))


def run(tag: str, table: dict, prep: Prep = lambda x, _: x, mirror: bool = False, lam: float = 1e-3,
        unit: bool = True) -> list[float]:
    pid, cam, plain, flipped = table["pid"], table["cam"], table["plain"], table["flipped"]
    rank1 = []
    for seed in range(10):
        train, test = split_people(sorted(set(pid.tolist())), 316, 316, seed, "viper")
        tr = np.isin(pid, list(train))
        q, g = np.isin(pid, list(test)) & (cam == 0), np.isin(pid, list(test)) & (cam == 1)
        x, xf = prep(plain, tr), prep(flipped, tr)
        fit_x, fit_p, fit_c = x[tr], pid[tr], cam[tr]
        if mirror:
            fit_x, fit_p, fit_c = np.concatenate([fit_x, xf[tr]]), np.tile(fit_p, 2), np.tile(fit_c, 2)
        metric = fit_xqda(fit_x, fit_p, fit_c, lam=lam)
        zq, zg = metric.embed(x[q]), metric.embed(x[g])
        if unit:
            zq, zg = unit_rows(zq), unit_rows(zg)
        m = evaluate(zq.astype(np.float32), pid[q], cam[q], zg.astype(np.float32), pid[g], cam[g],
                     protocol="single_shot")
        rank1.append(100 * m["rank1"])
    print(f"{tag}: R1 {np.mean(rank1):.1f} ± {np.std(rank1, ddof=1):.1f}  {np.round(rank1, 1).tolist()}", flush=True)
    return rank1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data-root", type=Path, default=None, help="folder holding viper/ (default: shared data)")
    root = resolve_root("viper", parser.parse_args().data_root)
    torch.set_num_threads(1)
    files = sorted(root.glob("*.png"))
    images = np.stack([np.asarray(Image.open(f).convert("RGB")) for f in files])
    lomo = LOMO(LOMOConfig(), 128, 48)
    table = {"pid": np.array([int(f.name[:4]) for f in files]), "cam": np.array([int(f.name[4:8]) - 1 for f in files]),
             "plain": lomo_descriptors(lomo, images),
             "flipped": lomo_descriptors(lomo, np.ascontiguousarray(images[:, :, ::-1]))}
    run("base (unit)", table)
    run("raw distance", table, unit=False)
    run("centre + L2", table, centre_l2)
    run("flip-augmented XQDA training", table, mirror=True)
    run("lambda 1e-2", table, lam=1e-2)
    run("lambda 1e-4", table, lam=1e-4)
    run("sqrt (power) + centre + L2", table, lambda x, tr: centre_l2(np.sqrt(x), tr))


if __name__ == "__main__":
    main()
