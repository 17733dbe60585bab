"""Fit a ``train.hybrid.HybridMatcher`` on a training split, choosing the fusion weight on held-out people.

For ``fused``: a third of the training people (seeded) are held out; JLML trains on the rest (through
the ``train_jlml`` callable the caller gives: the study's or ``train.run``'s own training), XQDA is fitted
on the same people, and the share ``t`` of the metric part (``train.hybrid``) that ranks the held-out
people best (Rank-1, then mAP) is kept. XQDA is then refitted on every training person: it is closed
form and seconds, while JLML is trained once, on two thirds of the people (a second training on all of
them would double the cost of a run; the JLML part of a fused model is therefore weaker than a JLML
model of its own, which ``fused`` is compared against in RESULTS.md). ``lomo_xqda`` trains nothing.
The test split is never seen before the final model is built.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from engine.errors import InputError
from engine.metrics import evaluate
from engine.spec import ModelSpec

from .data.reidset import ReidSet, make_reid_set
from .descriptor import HandCrafted, descriptors, unit_rows
from .gog import GOGConfig
from .hybrid import DESCRIPTOR_OF, FUSED, MATCHERS, HybridMatcher
from .lomo import LOMO, LOMOConfig
from .model import JLML
from .xqda import XQDAMap, fit_xqda

# The metric part's share t (its RMS norm against JLML's norm of 1); 0 is JLML alone, inf the metric alone.
SHARES = (0.0, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0, 16.0, 24.0, 32.0, math.inf)
HOLDOUT = 1.0 / 3.0


@dataclass
class FusionReport:
    """How the matcher was fitted: the held-out people and, per share, their Rank-1 and mAP."""

    kind: str
    share: float = math.inf
    held_out_ids: int = 0
    scores: dict[str, dict[str, float]] = field(default_factory=dict)
    xqda_dims: int = 0
    network: JLML | None = None  # the JLML the run trained (served or not), for its own metrics

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "share": None if math.isinf(self.share) else self.share,
                "held_out_ids": self.held_out_ids, "xqda_dims": self.xqda_dims, "scores": self.scores}


def lomo_descriptors(lomo: LOMO, images: np.ndarray, batch_size: int = 64, progress: bool = False) -> np.ndarray:
    """(N, D) float64 LOMO descriptors of uint8 (N, H, W, 3) images."""
    return descriptors(lomo, images, batch_size, progress, desc="LOMO")


def holdout_rows(data: ReidSet, fraction: float = HOLDOUT, seed: int = 0) -> dict[str, np.ndarray]:
    """Masks over ``data``'s training images: "train" keeps 1 - fraction of the people; the others' images
    are "query" (each one's images from its first camera) and "gallery" (its images from the others).
    People seen by one camera only stay in "train": they cannot be searched across cameras."""
    pids, cams = data.train_pids, data.train_cams
    crossing = [p for p in np.unique(pids) if len(np.unique(cams[pids == p])) > 1]
    held = int(round(fraction * len(crossing)))
    if held < 2 or len(np.unique(pids)) - held < 2:
        raise InputError(f"choosing the fusion weight needs >= 2 held-out people seen by two cameras and >= 2 "
                         f"left to train on; {data.name} has {len(crossing)} such of {len(np.unique(pids))}")
    chosen = np.random.default_rng(seed).choice(crossing, size=held, replace=False)
    out = np.isin(pids, chosen)
    first_cam = np.full(len(pids), -1)
    for person in chosen:
        first_cam[pids == person] = cams[pids == person].min()
    return {"train": ~out, "query": out & (cams == first_cam), "gallery": out & (cams != first_cam)}


def holdout_split(data: ReidSet, fraction: float = HOLDOUT, seed: int = 0) -> ReidSet:
    """``data``'s training people split by ``holdout_rows``: a set that trains on the kept people and is
    evaluated on the held-out ones."""
    return _fold(data, holdout_rows(data, fraction, seed))


def _fold(data: ReidSet, rows: dict[str, np.ndarray]) -> ReidSet:
    part = {k: (data.train_images[m], data.train_pids[m], data.train_cams[m]) for k, m in rows.items()}
    held = len(np.unique(data.train_pids[~rows["train"]]))
    return make_reid_set(f"{data.name}(held-out {held})", "single_shot", part)


def weights_for(share: float, scale: float) -> tuple[float, float]:
    """(a, b) of ``train.hybrid`` for the metric part's ``share`` (inf: the metric alone)."""
    return (0.0, 1.0 / scale) if math.isinf(share) else (1.0, share / scale)


def rms_norm(metric: XQDAMap, descriptors: np.ndarray) -> float:
    return float(np.sqrt((metric.embed(descriptors) ** 2).sum(1).mean()))


def choose_share(jlml: tuple[np.ndarray, np.ndarray], metric: tuple[np.ndarray, np.ndarray], scale: float,
                 fold: ReidSet) -> tuple[float, dict[str, dict[str, float]]]:
    """The share of ``SHARES`` whose fused embedding ranks ``fold``'s query against its gallery best; share
    0 (JLML alone) is scored for the record but not chosen: a fused model keeps its metric part."""
    scores = {}
    for share in SHARES:
        a, b = weights_for(share, scale)
        q, g = (unit_rows(np.concatenate([a * u, b * z], axis=1)) for u, z in zip(jlml, metric, strict=True))
        m = evaluate(q.astype(np.float32), fold.query_pids, fold.query_cams, g.astype(np.float32),
                     fold.gallery_pids, fold.gallery_cams, protocol="single_shot")
        scores[str(share)] = {"rank1": m["rank1"], "mAP": m["mAP"]}
    best = max(SHARES[1:], key=lambda s: (scores[str(s)]["rank1"], scores[str(s)]["mAP"], -s))
    return best, scores


def fit_and_save(kind: str, data: ReidSet, cfg: Any, lomo_cfg: LOMOConfig,
                 train_jlml: Callable[[ReidSet], JLML] | None, folder: Path, *, seed: int = 0,
                 extra: dict[str, Any] | None = None, progress: bool = False, mirror: bool = False,
                 ) -> tuple[HybridMatcher, FusionReport]:
    """``fit_matcher`` for a run in ``folder``, the matcher and its fusion report recorded in its checkpoint."""
    from .checkpoint import CHECKPOINT_FILE, save_matcher
    from .model import config_spec

    matcher, report = fit_matcher(kind, data, config_spec(cfg), lomo_cfg, train_jlml, seed=seed, progress=progress,
                                  mirror=mirror)
    folder.mkdir(parents=True, exist_ok=True)
    save_matcher(folder / CHECKPOINT_FILE, matcher, cfg, extra={**(extra or {}), "fusion": report.to_dict()})
    return matcher, report


def fit_matcher(kind: str, data: ReidSet, spec: ModelSpec, lomo_cfg: LOMOConfig,
                train_jlml: Callable[[ReidSet], JLML] | None = None, *, seed: int = 0,
                progress: bool = False, mirror: bool = False, gog_cfg: GOGConfig | None = None,
                ) -> tuple[HybridMatcher, FusionReport]:
    """Fit the ``kind`` matcher (``train.hybrid.MATCHERS`` but "jlml") on ``data``'s training part (module
    docstring).

    ``mirror``: XQDA also learns from every training image's mirror image (same person, same camera),
    twice the pairs for the same people."""
    if kind not in MATCHERS[1:]:
        raise InputError(f"matcher {kind!r} is not fitted here; expected one of {MATCHERS[1:]}")
    hand = HandCrafted(DESCRIPTOR_OF[kind], lomo_cfg, gog_cfg, spec.height, spec.width)
    raw = descriptors(hand.raw, data.train_images, progress=progress, desc=hand.kind)
    hand.fit_means(raw)  # the training images' block means ("gog+lomo"); held-out people are training people
    descriptors_ = hand.normalise_np(raw)
    mirrored = hand.normalise_np(descriptors(hand.raw, np.ascontiguousarray(data.train_images[:, :, ::-1]),
                                             desc=hand.kind)) if mirror else None

    def metric_on(rows: np.ndarray) -> XQDAMap:
        x, pids, cams = descriptors_[rows], data.train_pids[rows], data.train_cams[rows]
        if mirrored is not None:
            x, pids, cams = np.concatenate([x, mirrored[rows]]), np.tile(pids, 2), np.tile(cams, 2)
        return fit_xqda(x, pids, cams)

    report, jlml, share = FusionReport(kind), None, math.inf
    if kind in FUSED:
        if train_jlml is None:
            raise InputError("a fused matcher needs train_jlml, the JLML training of the run")
        rows = holdout_rows(data, seed=seed)
        fold = _fold(data, rows)
        kept = rows["train"]
        jlml = report.network = train_jlml(fold).eval()
        metric = metric_on(kept)
        # the held-out images are training images: their descriptors are computed already
        fold_metric = (metric.embed(descriptors_[rows["query"]]), metric.embed(descriptors_[rows["gallery"]]))
        from .loop import embed_split

        share, report.scores = choose_share(embed_split(jlml, fold), fold_metric,  # type: ignore[arg-type]
                                            rms_norm(metric, descriptors_[kept]), fold)
        report.held_out_ids = len(np.unique(fold.query_pids))
    metric = metric_on(np.ones(len(descriptors_), dtype=bool))
    report.share, report.xqda_dims = share, metric.dims
    matcher = HybridMatcher(None if math.isinf(share) else jlml, lomo_cfg, spec, metric,
                            weights_for(share, rms_norm(metric, descriptors_)), **hand.matcher_args())
    return matcher.eval(), report
